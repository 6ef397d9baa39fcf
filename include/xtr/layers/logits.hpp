#pragma once
// The output projection of a TransformerWrapper (x-transformers' to_logits):
//   logits = h W_logitsᵀ (+ b)             (N, logits_dim)     Linear<Bias<Scale<Acc>>>
//   tie_embedding: logits = dim^-½ · h Eᵀ  (E the token embedding; no to_logits)
// Parameters: `to_logits.weight` (logits_dim, D), U(±1/sqrt(D)); `to_logits.bias` with logits_bias (releases before
// 1.27.0). The backward takes d loss / d logits in its own buffer (never the logits') and scales by α.
#include <cmath>
#include <optional>
#include <string>

#include "xtr/backend/epilogue.hpp"
#include "xtr/backend/ops.hpp"
#include "xtr/layers/pass.hpp"

namespace xtr {

template <class Backend>
class Logits {
 public:
  using T = typename Backend::scalar;
  using K = kernel<Backend, ops::Linear<epilogue::Bias<epilogue::Scale<epilogue::Acc>>>>;

  /// With `tied` (tie_embedding), that (logits_dim, dim) parameter is the weight, scaled by dim^-½.
  void declare(ParameterStore<T>& store, const std::string& prefix, Index logits_dim, Index dim, bool bias,
               std::optional<ParameterId> tied = std::nullopt) {
    const auto bound = Init::uniform_bound(1.0 / std::sqrt(double(dim)));
    if (tied) {
      weight_ = *tied;
      scale_ = T(1.0 / std::sqrt(double(dim)));
    } else {
      weight_ = store.add(prefix + "to_logits.weight", {logits_dim, dim}, bound);
    }
    if (bias) bias_ = store.add(prefix + "to_logits.bias", {logits_dim}, bound);
  }

  void forward(Pass<Backend>& pass, ConstView<T> h, View<T> logits) const { K::forward(h, pass.weights(weight_), logits, operands(pass), pass.arena); }
  /// dh = α dlogits W; dW += α dlogitsᵀ h; db += α Σ dlogits.
  void backward(Pass<Backend>& pass, ConstView<T> h, ConstView<T> dlogits, View<T> dh, T alpha) const {
    K::backward(dlogits, h, pass.weights(weight_).w, operands(pass), dh, false, pass.grad(weight_), pass.grad(bias_),
                alpha, pass.arena);
  }

 private:
  epilogue::Operands<T> operands(const Pass<Backend>& pass) const {
    epilogue::Operands<T> o;
    o.bias = pass.value(bias_);
    o.scale = scale_;
    return o;
  }

  ParameterId weight_, bias_;
  T scale_ = T(1);
};

}  // namespace xtr
