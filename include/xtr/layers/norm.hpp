#pragma once
// A norm sublayer: h (+)= norm(x [+ residual]) ⊙ (c + γ) [+ β] with its parameters under x-transformers' names
// (`<name>.gamma` / `<name>.g`, `<name>.beta`) and what its backward needs (x̂, r). The formula is the policy's
// (policies/layer_norm.hpp, rms_norm.hpp, scale_norm.hpp, simple_rms_norm.hpp); the kernel is the backend's
// (ops::Normalize<Norm>). A pre-norm, a sandwich's second norm, a post-norm and the final norm are all this type; with
// an AnyNorm slot the policy is chosen when it is declared and each call dispatches to its kernel.
#include <string>

#include "xtr/backend/ops.hpp"
#include "xtr/layers/pass.hpp"
#include "xtr/policies/any.hpp"
#include "xtr/policies/concepts.hpp"

namespace xtr {

/// How a norm's parameters are stored: the gain as gain − 1 (unit offset, init 0) or as the gain (init 1); a bias;
/// for an AnyNorm slot, which norm.
struct NormStorage {
  bool unit_offset = true;
  bool bias = false;
  std::string_view policy = {};
};

template <class Norm, class Backend>
class NormLayer {
 public:
  using T = typename Backend::scalar;

  /// What the backward reads: x̂ (N, D) and r (N).
  struct Saved {
    T* xhat = nullptr;
    T* rstd = nullptr;
  };

  /// Registers `<name>.<gain_name>` (and `<name>.beta`) for width `dim`.
  void declare(ParameterStore<T>& store, const std::string& name, Index dim, NormStorage storage) {
    storage_ = storage;
    kind_ = resolve_policy<Norm>(storage.policy, "layers.policies.norm");
    storage_.policy = {};  // resolved: kind_ holds the choice
    visit_policy<Norm>(kind_, [&]<class P>() {
      const Index gain_size = P::gain == NormGain::channel ? dim : 1;
      if constexpr (P::gain != NormGain::none)
        gain_ = store.add(name + "." + std::string(P::gain_name), {gain_size}, Init::fill(storage.unit_offset ? 0 : 1));
    });
    if (storage.bias) bias_ = store.add(name + ".beta", {dim}, Init::fill(0));
  }

  /// h (+)= norm(x [+ residual]); with `save`, keeps x̂ and r in the pass's arena.
  Saved forward(Pass<Backend>& pass, ConstView<T> x, const T* residual, View<T> h, bool accumulate, bool save) const {
    Saved s;
    if (save) {
      s.xhat = pass.arena.template allocate<T>(x.rows * x.cols);
      s.rstd = pass.arena.template allocate<T>(x.rows);
    }
    visit_policy<Norm>(kind_, [&]<class P>() {
      kernel<Backend, ops::Normalize<P>>::forward(x, residual, weights(pass), h, accumulate, s.xhat, s.rstd);
    });
    return s;
  }
  /// dx += ∂h/∂xᵀ dh; the parameters' gradients add up.
  void backward(Pass<Backend>& pass, const Saved& s, ConstView<T> dh, View<T> dx) const {
    visit_policy<Norm>(kind_, [&]<class P>() {
      kernel<Backend, ops::Normalize<P>>::backward(dh, s.xhat, s.rstd, weights(pass), dx,
                                                   {pass.grad(gain_), pass.grad(bias_)}, pass.arena);
    });
  }

 private:
  ops::NormWeights<T> weights(const Pass<Backend>& pass) const {
    return {pass.value(gain_), T(storage_.unit_offset ? 1 : 0), pass.value(bias_)};
  }

  NormStorage storage_;
  int kind_ = 0;  // the policy of an AnyNorm slot
  ParameterId gain_, bias_;
};

}  // namespace xtr
