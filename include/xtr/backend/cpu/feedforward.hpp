#pragma once
// Feed-forward elementwise stages on the CPU, each fused into one pass per row (the row stays in cache):
//   forward, plain:  a = z + b₁ (kept);  g = act(a)
//   forward, gated:  a = z + b₁ (kept), [u | v] = a;  g = u ⊙ act(v)
//   backward, plain: da = dg ⊙ act'(a)                          and db₁ += Σ_rows da, same pass
//   backward, gated: du = dg ⊙ act(v), dv = dg ⊙ u ⊙ act'(v)   and db₁ += Σ_rows [du | dv], same pass
// z = h W₁ᵀ comes from the GEMM. Activations are Eigen array expressions (vectorised erf, exp, logistic).
#include <unsupported/Eigen/SpecialFunctions>

#include <cmath>

#include "xtr/backend/cpu/parallel.hpp"
#include "xtr/core/arena.hpp"
#include "xtr/policies/feedforward.hpp"

namespace xtr::cpu {

/// act(a) and act'(a) as Eigen array expressions.
template <Activation A>
struct ActivationMath;

template <>
struct ActivationMath<Activation::gelu> {
  // gelu(a) = a Φ(a) = a/2 · (1 + erf(a/√2));  gelu'(a) = Φ(a) + a φ(a)
  template <class X>
  static auto value(const X& a) {
    using S = typename X::Scalar;
    return S(0.5) * a * (S(1) + (a * S(M_SQRT1_2)).erf());
  }
  template <class X>
  static auto derivative(const X& a) {
    using S = typename X::Scalar;
    return S(0.5) * (S(1) + (a * S(M_SQRT1_2)).erf()) + a * (S(-0.5) * a.square()).exp() * S(0.3989422804014327);
  }
};

template <>
struct ActivationMath<Activation::silu> {
  // silu(a) = a σ(a);  silu'(a) = σ(a) (1 + a (1 − σ(a)))
  template <class X>
  static auto value(const X& a) {
    return a * a.logistic();
  }
  template <class X>
  static auto derivative(const X& a) {
    using S = typename X::Scalar;
    return a.logistic() * (S(1) + a * (S(1) - a.logistic()));
  }
};

/// z (N, W) → a = z + b in place; g (N, F) = act(a) (plain, W = F) or a[:, :F] ⊙ act(a[:, F:]) (gated, W = 2F).
template <class FF, class T>
void feedforward_activation_forward(MatrixView<T> a, const T* bias, MatrixView<T> g) {
  using Math = ActivationMath<FF::activation>;
  using Row = Eigen::Map<Eigen::Array<T, 1, Eigen::Dynamic>>;
  using ConstRow = Eigen::Map<const Eigen::Array<T, 1, Eigen::Dynamic>>;
  const Index W = a.cols(), F = g.cols();
  parallel_rows(a.rows(), 20 * W, [&](Index begin, Index end) {
    const ConstRow b(bias, W);
    for (Index n = begin; n < end; ++n) {
      Row ar(a.data() + n * W, W), gr(g.data() + n * F, F);
      ar += b;
      if constexpr (FF::gated) {
        gr = ar.head(F) * Math::value(ar.tail(F));
      } else {
        gr = Math::value(ar);
      }
    }
  });
}

/// dg (N, F) → da (N, W) (may alias dg when plain); db += Σ_rows da. Per-thread partial sums live in `arena`.
template <class FF, class T>
void feedforward_activation_backward(MatrixView<T> a, const T* dg, T* da, T* dbias, Arena& arena) {
  using Math = ActivationMath<FF::activation>;
  using Row = Eigen::Map<Eigen::Array<T, 1, Eigen::Dynamic>>;
  using ConstRow = Eigen::Map<const Eigen::Array<T, 1, Eigen::Dynamic>>;
  const Index N = a.rows(), W = a.cols(), F = FF::gated ? W / 2 : W;
  const int threads = max_threads();
  T* partial = arena.allocate<T>(Index(threads) * W);
  std::fill_n(partial, Index(threads) * W, T(0));
  parallel_rows(N, 30 * W, [&](Index begin, Index end) {
    Row db(partial + Index(omp_get_thread_num()) * W, W);
    for (Index n = begin; n < end; ++n) {
      const ConstRow ar(a.data() + n * W, W);
      const ConstRow gr(dg + n * F, F);
      Row dr(da + n * W, W);
      if constexpr (FF::gated) {
        const auto u = ar.head(F);
        const auto v = ar.tail(F);
        dr.tail(F) = gr * u * Math::derivative(v);  // written first: when plain, da may alias dg; here it may not
        dr.head(F) = gr * Math::value(v);
      } else {
        dr = gr * Math::derivative(ar);
      }
      db += dr;
    }
  });
  for (int t = 0; t < threads; ++t)
    for (Index w = 0; w < W; ++w) dbias[w] += partial[Index(t) * W + w];
}

}  // namespace xtr::cpu
