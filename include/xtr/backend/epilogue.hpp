#pragma once
// Epilogue expressions: the elementwise chain after a GEMM, as a type. z = x Wᵀ is the accumulator `Acc`; nodes wrap
// it, innermost first:
//
//   Scale<E>      s · E            s: a run-time scalar (tied embeddings' dim^-½)
//   Bias<E>       E + b            b: (width of E), a run-time operand (absent: no bias; ff_no_bias)
//   Act<A, E>     A(E)             A an activation tag (policies/activations.hpp)
//   Glu<A, E>     u ⊙ A(v)         [u | v] = E: the width halves (GEGLU, SwiGLU)
//   Dropout<E>    E · keep / (1 − p), keep(n, c) = uniform(n · cols + c) ≥ p from a counter-based stream
//   AddTo<E>      out += E         the residual stream (outermost only)
//
// e.g. the feed-forward's first GEMM is Linear<Dropout<Glu<act::Silu, Bias<Acc>>>>, its second
// Linear<AddTo<Bias<Acc>>>. A backend evaluates the whole chain in one pass over the GEMM's output rows (the CPU) or
// lowers it to a cuBLASLt epilogue or one generated kernel (a GPU). The backward is derived from the same type by
// `Shape` below: dropout's mask, then A' at the saved pre-activation a = z + b, then db += Σ_rows dz; the GEMM
// backward takes dz. (CUTLASS's epilogue visitor trees are the model; this grammar is the part transformers use.)
//
//   Epilogue := AddTo<Inner> | Inner;  Inner := Dropout<Core> | Core;  Core := Act<A, Lin> | Glu<A, Lin> | Lin;
//   Lin := Bias<Acc> | Acc | Scale<Acc> | Bias<Scale<Acc>>
#include <type_traits>

#include "xtr/core/rng.hpp"
#include "xtr/core/view.hpp"
#include "xtr/policies/activations.hpp"

namespace xtr::epilogue {

struct Acc {};
template <class E>
struct Scale {};
template <class E>
struct Bias {};
template <class A, class E>
struct Act {};
template <class A, class E>
struct Glu {};
template <class E>
struct Dropout {};
template <class E>
struct AddTo {};

/// Run-time operands of an epilogue.
template <class T>
struct Operands {
  const T* bias = nullptr;  // Bias: b, or null for none
  T scale = T(1);           // Scale: s
  double dropout = 0;       // Dropout: the rate p (0: off)
  RandomStream stream{};    // Dropout: the keep-mask stream
  T* saved = nullptr;       // Act / Glu: (N, width of z) pre-activation a = z + b, written by the forward for the
                            // backward; null in a forward that keeps nothing (decoding: the kernel uses scratch)
};

/// What the expression type `E` is, read off its nesting: the backward and every backend's lowering follow from it.
template <class E>
struct Shape;

template <>
struct Shape<Acc> {
  static constexpr bool valid = true, scaled = false, bias = false, gated = false, dropout = false, add_to = false;
  using activation = void;
};
template <>
struct Shape<Scale<Acc>> : Shape<Acc> {
  static constexpr bool scaled = true;
};
template <class S>
  requires(std::is_same_v<S, Acc> || std::is_same_v<S, Scale<Acc>>)
struct Shape<Bias<S>> : Shape<S> {
  static constexpr bool bias = true;
};
template <class L>
inline constexpr bool is_linear = std::is_same_v<L, Acc> || std::is_same_v<L, Bias<Acc>> ||
                                  std::is_same_v<L, Scale<Acc>> || std::is_same_v<L, Bias<Scale<Acc>>>;
template <class A, class L>
  requires(is_linear<L>)
struct Shape<Act<A, L>> : Shape<L> {
  using activation = A;
};
template <class A, class L>
  requires(is_linear<L>)
struct Shape<Glu<A, L>> : Shape<L> {
  using activation = A;
  static constexpr bool gated = true;
};
template <class C>
  requires(Shape<C>::valid && !Shape<C>::dropout && !Shape<C>::add_to)
struct Shape<Dropout<C>> : Shape<C> {
  static constexpr bool dropout = true;
};
template <class I>
  requires(Shape<I>::valid && !Shape<I>::add_to)
struct Shape<AddTo<I>> : Shape<I> {
  static constexpr bool add_to = true;
};

template <class E>
concept Expression = requires { requires Shape<E>::valid; };

/// Width of the epilogue's output for a GEMM output of width `z_cols`.
template <class E>
constexpr Index output_cols(Index z_cols) {
  return Shape<E>::gated ? z_cols / 2 : z_cols;
}
/// Whether the forward keeps a pre-activation for the backward.
template <class E>
inline constexpr bool saves_preactivation = !std::is_void_v<typename Shape<E>::activation>;

}  // namespace xtr::epilogue
