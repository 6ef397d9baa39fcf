#pragma once
// Epilogue expressions (backend/epilogue.hpp) on the CPU: the whole chain after a GEMM in one pass over its output
// rows, forward and backward, each row kept in cache. Activations are Eigen array expressions.
#include <Eigen/Core>

#include <cstdint>
#include <type_traits>

#include "xtr/backend/cpu/activations.hpp"
#include "xtr/backend/cpu/parallel.hpp"
#include "xtr/backend/epilogue.hpp"
#include "xtr/core/arena.hpp"
#include "xtr/core/view.hpp"

namespace xtr::cpu {

/// Row n of an epilogue with an activation and/or dropout over the output columns [c0, c1): a = z (+ b) in place in
/// `a` (N, W); y = act(a) or u ⊙ act(v), times the dropout keep scale; out = y or out += y. A gated epilogue pairs
/// column c with F + c and takes whole rows (c0 = 0, c1 = F).
template <class E, class T>
void epilogue_segment(View<T> a, const epilogue::Operands<T>& o, View<T> out, Index n, Index c0, Index c1) {
  using S = epilogue::Shape<E>;
  using A = typename S::activation;
  using Row = Eigen::Map<Eigen::Array<T, 1, Eigen::Dynamic>>;
  using ConstRow = Eigen::Map<const Eigen::Array<T, 1, Eigen::Dynamic>>;
  const Index F = c1 - c0, W = S::gated ? a.cols : F;
  const bool drop = S::dropout && o.dropout > 0;
  const T keep_scale = drop ? T(1.0 / (1.0 - o.dropout)) : T(1);
  const float threshold = float(o.dropout);
  Row ar(a.row(n) + c0, W), yr(out.row(n) + c0, F);
  if (S::scaled && o.scale != T(1)) ar *= o.scale;
  if (S::bias && o.bias) ar += ConstRow(o.bias + c0, W);
  auto store = [&](const auto& y) {
    if constexpr (S::add_to) {
      yr += y;
    } else {
      yr = y;
    }
  };
  if (!drop) {
    if constexpr (S::gated) store(ar.head(F) * ActivationMath<A>::value(ar.tail(F)));
    else if constexpr (std::is_void_v<A>) store(ar);
    else store(ActivationMath<A>::value(ar));
  } else {  // the keep mask of row n, elementwise
    for (Index c = 0; c < F; ++c) {
      T y;
      if constexpr (S::gated) y = ar[c] * ActivationMath<A>::value(ar.segment(F + c, 1))[0];
      else if constexpr (std::is_void_v<A>) y = ar[c];
      else y = ActivationMath<A>::value(ar.segment(c, 1))[0];
      y *= o.stream.uniform(std::uint64_t(n * out.cols + c0 + c)) >= threshold ? keep_scale : T(0);
      if constexpr (S::add_to) yr[c] += y;
      else yr[c] = y;
    }
  }
}

/// The epilogue over every row, in one pass (rows split between threads).
template <class E, class T>
void epilogue_rows(View<T> a, const epilogue::Operands<T>& o, View<T> out) {
  parallel_rows(a.rows, 20 * a.cols, [&](Index begin, Index end) {
    for (Index n = begin; n < end; ++n) epilogue_segment<E, T>(a, o, out, n, 0, out.cols);
  });
}

/// The epilogue's backward in one pass: dy = dout (· keep), dz = dy ⊙ act'(a) (gated: [dy ⊙ act(v) | dy ⊙ u ⊙ act'(v)]),
/// db += α Σ_rows dz (per-thread partial sums in `arena`).
template <class E, class T>
void epilogue_rows_backward(View<const T> dout, View<const T> a, const epilogue::Operands<T>& o, View<T> dz, T* dbias,
                            T alpha, Arena& arena) {
  using S = epilogue::Shape<E>;
  using A = typename S::activation;
  using Row = Eigen::Map<Eigen::Array<T, 1, Eigen::Dynamic>>;
  using ConstRow = Eigen::Map<const Eigen::Array<T, 1, Eigen::Dynamic>>;
  const Index N = dz.rows, W = dz.cols, F = dout.cols;
  const bool drop = S::dropout && o.dropout > 0;
  const T keep_scale = drop ? T(1.0 / (1.0 - o.dropout)) : T(1);
  const float threshold = float(o.dropout);
  const int threads = max_threads();
  T* partial = dbias ? arena.allocate<T>(Index(threads) * W) : nullptr;
  if (partial) std::fill_n(partial, Index(threads) * W, T(0));
  parallel_rows(N, 30 * W, [&](Index begin, Index end) {
    for (Index n = begin; n < end; ++n) {
      Row dr(dz.row(n), W);
      // dy: written into dz's first F entries (dz's own row: the input is read once)
      Row dy(dz.row(n) + (S::gated ? F : 0), F);  // gated: the v half, overwritten last
      const ConstRow g(dout.row(n), F);
      if (drop) {
        for (Index c = 0; c < F; ++c)
          dy[c] = g[c] * (o.stream.uniform(std::uint64_t(n * F + c)) >= threshold ? keep_scale : T(0));
      } else {
        dy = g;
      }
      if constexpr (S::gated) {
        const ConstRow ar(a.row(n), W);
        const auto u = ar.head(F);
        const auto v = ar.tail(F);
        dr.head(F) = dy * ActivationMath<A>::value(v);
        dr.tail(F) = dy * u * ActivationMath<A>::derivative(v);  // dy lives in the tail: read before written
      } else if constexpr (!std::is_void_v<A>) {
        const ConstRow ar(a.row(n), W);
        dr = dy * ActivationMath<A>::derivative(ar);
      }
      if (partial) Row(partial + Index(omp_get_thread_num()) * W, W) += dr;
    }
  });
  if (partial)
    for (int t = 0; t < threads; ++t)
      for (Index w = 0; w < W; ++w) dbias[w] += alpha * partial[Index(t) * W + w];
}
}  // namespace xtr::cpu
