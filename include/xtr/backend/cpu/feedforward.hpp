#pragma once
// Feed-forward elementwise stages on the CPU, each fused into one pass per row (the row stays in cache):
//   forward, plain:  a = z + b₁ (kept);  g = act(a)
//   forward, gated:  a = z + b₁ (kept), [u | v] = a;  g = u ⊙ act(v)
//   backward, plain: da = dg ⊙ act'(a)                          and db₁ += Σ_rows da, same pass
//   backward, gated: du = dg ⊙ act(v), dv = dg ⊙ u ⊙ act'(v)   and db₁ += Σ_rows [du | dv], same pass
// z = h W₁ᵀ comes from the GEMM. These are the feed-forward's first epilogue (backend/cpu/epilogue.hpp), the form the
// kernel tests call.
#include <cmath>

#include "xtr/backend/cpu/epilogue.hpp"
#include "xtr/backend/cpu/parallel.hpp"
#include "xtr/backend/epilogue.hpp"
#include "xtr/core/arena.hpp"
#include "xtr/policies/feedforward.hpp"

namespace xtr::cpu {

/// The first GEMM's epilogue of a feed-forward policy: Dropout<Act<A, Bias<Acc>>> or Dropout<Glu<A, Bias<Acc>>>.
template <class FF>
using FeedForwardEpilogue = epilogue::Dropout<std::conditional_t<
    FF::gated, epilogue::Glu<typename FF::activation, epilogue::Bias<epilogue::Acc>>,
    epilogue::Act<typename FF::activation, epilogue::Bias<epilogue::Acc>>>>;

/// z (N, W) → a = z + b in place; g (N, F) = act(a) (plain, W = F) or a[:, :F] ⊙ act(a[:, F:]) (gated, W = 2F).
template <class FF, class T>
void feedforward_activation_forward(MatrixView<T> a, const T* bias, MatrixView<T> g) {
  using E = FeedForwardEpilogue<FF>;
  epilogue_rows<E, T>(View<T>(a.data(), a.rows(), a.cols()), {.bias = bias}, View<T>(g.data(), g.rows(), g.cols()));
}

/// dg (N, F) → da (N, W) (may alias dg when plain); db += Σ_rows da. Per-thread partial sums live in `arena`.
template <class FF, class T>
void feedforward_activation_backward(MatrixView<T> a, const T* dg, T* da, T* dbias, Arena& arena) {
  using E = FeedForwardEpilogue<FF>;
  const Index N = a.rows(), W = a.cols(), F = FF::gated ? W / 2 : W;
  epilogue_rows_backward<E, T>(View<const T>(dg, N, F), View<const T>(a.data(), N, W), {}, View<T>(da, N, W), dbias,
                               T(1), arena);
}

}  // namespace xtr::cpu
