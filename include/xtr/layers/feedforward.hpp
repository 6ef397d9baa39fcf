#pragma once
// Feed-forward sublayer (x-transformers' FeedForward), two GEMMs with epilogue expressions (backend/epilogue.hpp):
//   g   = dropout(act(h W₁ᵀ + b₁))        or  dropout(u ⊙ act(v)), [u | v] = h W₁ᵀ + b₁   (gated)
//         Linear<Dropout<Act<A, Bias<Acc>>>> / Linear<Dropout<Glu<A, Bias<Acc>>>>
//   out (+)= g W₂ᵀ + b₂                       Linear<AddTo<Bias<Acc>>> (pre-norm) / Linear<Bias<Acc>>
// Parameters (block prefix `attn_layers.layers.<i>.1.`): `ff.0.0.weight|bias` (plain) or `ff.0.proj.weight|bias`
// (gated, W₁ is 2F × D), `ff.2.weight|bias`, U(±1/sqrt(fan_in)); F = ff_mult · dim. ff_no_bias drops b₂ and a plain
// b₁ (a gated projection keeps its bias, as x-transformers). Saved for the backward: the input h, the pre-activation
// a = h W₁ᵀ + b₁ and g. An AnyFeedForward slot picks the policy when declared; each call dispatches to its kernels.
#include <cmath>
#include <string>

#include "xtr/backend/epilogue.hpp"
#include "xtr/backend/ops.hpp"
#include "xtr/layers/attention_layers.hpp"
#include "xtr/layers/layer_inputs.hpp"
#include "xtr/layers/pass.hpp"
#include "xtr/policies/any.hpp"

namespace xtr {

template <class Layers, class Backend>
class FeedForward {
 public:
  using T = typename Backend::scalar;
  using Inputs = LayerInputs<Backend>;
  using Slot = typename Layers::feedforward;
  using Lin = epilogue::Bias<epilogue::Acc>;
  /// The first GEMM's epilogue of policy P.
  template <class P>
  using In = epilogue::Dropout<
      std::conditional_t<P::gated, epilogue::Glu<typename P::activation, Lin>, epilogue::Act<typename P::activation, Lin>>>;
  using OutAdd = epilogue::AddTo<Lin>;
  using OutSet = Lin;

  struct Saved {
    const T* input = nullptr;  // h (N, D)
    T* a = nullptr;            // (N, W₁) pre-activation
    T* g = nullptr;            // (N, F) after the activation and dropout
  };

  void declare(ParameterStore<T>& store, const std::string& prefix, const LayersConfig& L) {
    kind_ = resolve_policy<Slot>(L.policies.feedforward, "layers.policies.feedforward");
    gated_ = visit_policy<Slot>(kind_, []<class P>() { return P::gated; });
    dim_ = L.dim;
    inner_ = L.ff_mult * L.dim;
    dropout_ = L.ff_dropout;
    const Index D = dim_, F = inner_, W1 = gated_ ? 2 * F : F;
    const auto bound = [](Index fan_in) { return Init::uniform_bound(1.0 / std::sqrt(double(fan_in))); };
    const std::string in = gated_ ? "ff.0.proj." : "ff.0.0.";
    w1_ = store.add(prefix + in + "weight", {W1, D}, bound(D));
    if (gated_ || !L.ff_no_bias) b1_ = store.add(prefix + in + "bias", {W1}, bound(D));
    w2_ = store.add(prefix + "ff.2.weight", {D, F}, bound(F));
    if (!L.ff_no_bias) b2_ = store.add(prefix + "ff.2.bias", {D}, bound(F));
  }

  Saved forward(Pass<Backend>& pass, const Inputs& in, ConstView<T> h, View<T> out, bool accumulate) const {
    const Index N = h.rows;
    Saved s;
    s.input = h.data;
    s.a = pass.arena.template allocate<T>(N * w1_rows());
    View<T> g = pass.allocate(N, inner_);
    s.g = g.data;
    run(pass, in, h, out, accumulate, s.a, g);
    return s;
  }

  void backward(Pass<Backend>& pass, const Inputs& in, const Saved& s, ConstView<T> dout, View<T> dh,
                bool accumulate_dh) const {
    const Index N = dout.rows;
    View<T> dg = pass.allocate(N, inner_);
    epilogue::Operands<T> second;
    second.bias = pass.value(b2_);
    kernel<Backend, ops::Linear<OutAdd>>::backward(dout, ConstView<T>(s.g, N, inner_), pass.weights(w2_).w, second, dg,
                                                   false, pass.grad(w2_), pass.grad(b2_), T(1), pass.arena);
    visit_policy<Slot>(kind_, [&]<class P>() {
      kernel<Backend, ops::Linear<In<P>>>::backward(dg, ConstView<T>(s.input, N, dim_), pass.weights(w1_).w,
                                                    first_operands(pass, in, s.a), dh, accumulate_dh, pass.grad(w1_),
                                                    pass.grad(b1_), T(1), pass.arena, P::gated ? View<T>{} : dg);
    });
  }

  /// The forward without saving (decoding).
  void decode(Pass<Backend>& pass, const Inputs& in, ConstView<T> h, View<T> out, bool accumulate) const {
    run(pass, in, h, out, accumulate, nullptr, pass.allocate(h.rows, inner_));
  }

 private:
  [[nodiscard]] Index w1_rows() const { return gated_ ? 2 * inner_ : inner_; }
  epilogue::Operands<T> first_operands(const Pass<Backend>& pass, const Inputs& in, T* saved) const {
    epilogue::Operands<T> o;
    o.bias = pass.value(b1_);
    o.dropout = pass.rate(dropout_);
    if (o.dropout > 0) o.stream = pass.dropout_stream(std::uint64_t(3 * in.layer + 2), pass.length * inner_);
    o.saved = saved;
    return o;
  }
  void run(Pass<Backend>& pass, const Inputs& in, ConstView<T> h, View<T> out, bool accumulate, T* saved,
           View<T> g) const {
    visit_policy<Slot>(kind_, [&]<class P>() {
      kernel<Backend, ops::Linear<In<P>>>::forward(h, pass.weights(w1_), g, first_operands(pass, in, saved), pass.arena);
    });
    epilogue::Operands<T> second;
    second.bias = pass.value(b2_);
    if (accumulate) {
      kernel<Backend, ops::Linear<OutAdd>>::forward(g, pass.weights(w2_), out, second, pass.arena);
    } else {
      kernel<Backend, ops::Linear<OutSet>>::forward(g, pass.weights(w2_), out, second, pass.arena);
    }
  }

  int kind_ = 0;
  bool gated_ = false;
  Index dim_ = 0, inner_ = 0;
  double dropout_ = 0;
  ParameterId w1_, b1_, w2_, b2_;
};

}  // namespace xtr
