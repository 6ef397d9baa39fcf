#pragma once
// The output projection of an attention sublayer (x-transformers' `to_out`): out (+)= o W_oᵀ, (D, H·dh), bias-less,
// U(±1/sqrt(H·dh)); with one head there is none and the head's output is added as it is (x-transformers'
// nn.Identity). Shared by self- and cross-attention.
#include <cmath>
#include <string>

#include "xtr/backend/epilogue.hpp"
#include "xtr/backend/ops.hpp"
#include "xtr/layers/pass.hpp"

namespace xtr {

template <class Backend>
class AttentionOutput {
 public:
  using T = typename Backend::scalar;

  /// Registers `<prefix>to_out.weight` when heads > 1.
  void declare(ParameterStore<T>& store, const std::string& prefix, Index dim, Index heads, Index dim_head) {
    if (heads > 1)
      weight_ = store.add(prefix + "to_out.weight", {dim, heads * dim_head},
                          Init::uniform_bound(1.0 / std::sqrt(double(heads * dim_head))));
  }
  /// out (+)= o W_oᵀ, or out (+)= o.
  void forward(Pass<Backend>& pass, ConstView<T> o, View<T> out, bool accumulate) const {
    if (weight_.index < 0) {
      kernel<Backend, ops::Axpby>::run(o, out, T(1), accumulate ? T(1) : T(0));
    } else if (accumulate) {
      kernel<Backend, ops::Linear<epilogue::AddTo<epilogue::Acc>>>::forward(o, pass.weights(weight_), out, {}, pass.arena);
    } else {
      kernel<Backend, ops::Linear<epilogue::Acc>>::forward(o, pass.weights(weight_), out, {}, pass.arena);
    }
  }
  /// d o from d out; dW_o += d outᵀ o.
  void backward(Pass<Backend>& pass, ConstView<T> o, ConstView<T> dout, View<T> dO) const {
    if (weight_.index < 0) {
      kernel<Backend, ops::Axpby>::run(dout, dO, T(1), T(0));
    } else {
      kernel<Backend, ops::Linear<epilogue::Acc>>::backward(dout, o, pass.weights(weight_).w, {}, dO, false,
                                                            pass.grad(weight_), nullptr, T(1), pass.arena);
    }
  }

 private:
  ParameterId weight_;
};

}  // namespace xtr
