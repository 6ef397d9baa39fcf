#pragma once
// The CPU backend (Eigen + OpenMP), in float (training) or double (gradient checks): kernel<Cpu<T>, Op> for every op
// of backend/ops.hpp. Fused where a pass over memory can be saved (the epilogue chain in one pass, norms reading each
// row once, blocked attention with online softmax); see docs/design.md.
#include <Eigen/Core>

#include <cstdint>
#include <cstring>
#include <string_view>
#include <type_traits>

#include "xtr/backend/cpu/activations.hpp"
#include "xtr/backend/cpu/attention.hpp"
#include "xtr/backend/cpu/cross_entropy.hpp"
#include "xtr/backend/cpu/embedding.hpp"
#include "xtr/backend/cpu/epilogue.hpp"
#include "xtr/backend/cpu/feedforward.hpp"
#include "xtr/backend/cpu/linear.hpp"
#include "xtr/backend/cpu/norm.hpp"
#include "xtr/backend/cpu/parallel.hpp"
#include "xtr/backend/cpu/rotary.hpp"
#include "xtr/backend/epilogue.hpp"
#include "xtr/backend/ops.hpp"
#include "xtr/core/arena.hpp"

namespace xtr {

/// The CPU backend, in float (training) or double (gradient checks, golden parity at tight tolerances).
template <class T>
struct Cpu {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "xtr: Cpu<T> takes float or double");
  using scalar = T;
  static constexpr std::string_view name = std::is_same_v<T, float> ? "Cpu<float>" : "Cpu<double>";
};

namespace cpu {
template <class T>
using Strided = Eigen::Map<RowMatrix<std::remove_const_t<T>>, Eigen::Unaligned, Eigen::OuterStride<>>;
template <class T>
using ConstStrided = Eigen::Map<const RowMatrix<std::remove_const_t<T>>, Eigen::Unaligned, Eigen::OuterStride<>>;

/// A view as an Eigen map (rows ld apart).
template <class T>
auto map(View<T> v) {
  if constexpr (std::is_const_v<T>) {
    return ConstStrided<T>(v.data, v.rows, v.cols, Eigen::OuterStride<>(v.ld));
  } else {
    return Strided<T>(v.data, v.rows, v.cols, Eigen::OuterStride<>(v.ld));
  }
}
template <class T>
auto contiguous(View<T> v) {
  if constexpr (std::is_const_v<T>) {
    return ConstMatrixView<std::remove_const_t<T>>(v.data, v.rows, v.cols);
  } else {
    return MatrixView<T>(v.data, v.rows, v.cols);
  }
}
/// f(maps of the views): contiguous maps when every view is contiguous (Eigen's fastest product paths), strided
/// maps otherwise.
template <class F, class... Views>
void with_maps(F&& f, Views... views) {
  if ((views.contiguous() && ...)) {
    f(contiguous(views)...);
  } else {
    f(map(views)...);
  }
}

/// y (+)= x Wᵀ from the float weights or their bfloat16 copy.
template <class T>
void gemm_forward(View<const T> x, const ops::Weights<T>& w, View<T> y, bool accumulate, Arena& arena) {
  const Index out = w.w.rows, in = w.w.cols;
  if (!w.bf16) {
    with_maps([&](auto xm, auto wm, auto ym) { linear_forward<T>(xm, wm, ym, accumulate); }, x, w.w, y);
  } else if (x.rows <= 8) {
    linear_forward_bf16<T>(MatrixView<T>(const_cast<T*>(x.data), x.rows, x.cols), w.bf16, out, in, map(y), accumulate);
  } else {  // a prefill: widen the block once, then one GEMM
    T* wide = arena.allocate<T>(out * in);
    for (Index i = 0; i < out * in; ++i) wide[i] = T(bf16_to_float(w.bf16[i]));
    linear_forward<T>(map(x), map(View<const T>(wide, out, in)), map(y), accumulate);
  }
}

}  // namespace cpu

/// out ← E(x Wᵀ): the GEMM, then the epilogue in one pass (with no activation and no dropout the GEMM writes or
/// accumulates straight into out and only the bias pass remains).
template <class T, class E>
struct kernel<Cpu<T>, ops::Linear<E>> {
  using S = epilogue::Shape<E>;
  static_assert(epilogue::Expression<E>, "xtr: not an epilogue expression of backend/epilogue.hpp's grammar");
  static constexpr bool direct = std::is_void_v<typename S::activation> && !S::dropout;

  /// x (N, in), w (out, in), out (N, output_cols<E>(out)); o.saved (N, out) receives the pre-activation.
  static void forward(View<const T> x, const ops::Weights<T>& w, View<T> out, const epilogue::Operands<T>& o,
                      Arena& arena) {
    if constexpr (direct) {
      cpu::gemm_forward<T>(x, w, out, S::add_to, arena);
      if (S::bias && o.bias) {
        const Index W = out.cols;
        cpu::parallel_rows(out.rows, 2 * W, [&](Index begin, Index end) {
          for (Index n = begin; n < end; ++n) {
            T* r = out.row(n);
            for (Index c = 0; c < W; ++c) r[c] += o.bias[c];
          }
        });
      }
    } else {
      const Index W = w.w.rows;
      View<T> a(o.saved ? o.saved : arena.allocate<T>(x.rows * W), x.rows, W);
      cpu::gemm_forward<T>(x, w, a, false, arena);
      cpu::epilogue_rows<E, T>(a, o, out);
    }
  }

  /// dout (N, output cols): d loss / d out. dW += α dzᵀ x, db += α Σ dz, dx (+)= α dz W (each when non-null).
  /// `dz_buffer` (N, out): where dz goes, which may be dout's own memory when the widths match (a plain activation:
  /// in place); empty: arena scratch.
  static void backward(View<const T> dout, View<const T> x, View<const T> w, const epilogue::Operands<T>& o,
                       View<T> dx, bool accumulate_dx, T* dw, T* dbias, T alpha, Arena& arena,
                       View<T> dz_buffer = {}) {
    View<const T> dz = dout;
    if constexpr (direct) {
      if (S::bias && dbias) cpu::bias_backward<T>(cpu::map(dout), cpu::map(View<T>(dbias, 1, dout.cols)), alpha);
    } else {
      View<T> buffer = dz_buffer.data ? dz_buffer : View<T>(arena.allocate<T>(x.rows * w.rows), x.rows, w.rows);
      cpu::epilogue_rows_backward<E, T>(dout, View<const T>(o.saved, x.rows, w.rows), o, buffer,
                                        S::bias ? dbias : nullptr, alpha, arena);
      dz = buffer;
    }
    if (dw)
      cpu::with_maps([&](auto dzm, auto xm, auto dwm) { cpu::linear_backward_weight<T>(dzm, xm, dwm, alpha); }, dz, x,
                     View<T>(dw, w.rows, w.cols));
    if (dx.data)
      cpu::with_maps([&](auto dzm, auto wm, auto dxm) { cpu::linear_backward_input<T>(dzm, wm, dxm, alpha, accumulate_dx); },
                     dz, w, dx);
  }
};

template <class T, class Norm>
struct kernel<Cpu<T>, ops::Normalize<Norm>> {
  /// h (+)= norm(x [+ residual]) (N, D; x, residual and h share the row stride); keeps x̂ (N, D) and r (N) when
  /// non-null. h may be x.
  static void forward(View<const T> x, const T* residual, const ops::NormWeights<T>& w, View<T> h, bool accumulate,
                      T* xhat, T* rstd) {
    cpu::norm_rows<Norm, T>(x.data, residual, x.rows, x.cols, x.ld, w, h.data, accumulate, xhat, rstd);
  }
  /// dx += ∂h/∂xᵀ dh; parameter gradients add up.
  static void backward(View<const T> dh, const T* xhat, const T* rstd, const ops::NormWeights<T>& w, View<T> dx,
                       const ops::NormGradients<T>& grads, Arena& arena) {
    cpu::norm_backward<Norm, T>(cpu::contiguous(View<T>(const_cast<T*>(dh.data), dh.rows, dh.cols)), xhat, rstd, w,
                                cpu::contiguous(dx), grads, arena);
  }
};

template <class T>
struct kernel<Cpu<T>, ops::Fill> {
  static void run(View<T> x, T value) {
    cpu::parallel_rows(x.rows, x.cols, [&](Index begin, Index end) {
      for (Index n = begin; n < end; ++n) std::fill_n(x.row(n), x.cols, value);
    });
  }
};

template <class T>
struct kernel<Cpu<T>, ops::Dropout> {
  static void run(View<T> x, double p, const RandomStream& stream) {
    if (p <= 0) return;
    const T keep_scale = T(1.0 / (1.0 - p));
    const float threshold = float(p);
    const Index cols = x.cols;
    cpu::parallel_rows(x.rows, 20 * cols, [&](Index begin, Index end) {
      for (Index n = begin; n < end; ++n)
        for (Index c = 0; c < cols; ++c)
          x(n, c) *= stream.uniform(std::uint64_t(n * cols + c)) >= threshold ? keep_scale : T(0);
    });
  }
};

template <class T>
struct kernel<Cpu<T>, ops::Axpby> {
  /// y ← β y + α x.
  static void run(View<const T> x, View<T> y, T alpha, T beta) {
    cpu::parallel_rows(y.rows, 2 * y.cols, [&](Index begin, Index end) {
      for (Index n = begin; n < end; ++n) {
        const T* xr = x.row(n);
        T* yr = y.row(n);
        if (beta == T(0)) {
          for (Index c = 0; c < y.cols; ++c) yr[c] = alpha * xr[c];
        } else {
          for (Index c = 0; c < y.cols; ++c) yr[c] = beta * yr[c] + alpha * xr[c];
        }
      }
    });
  }
};

template <class T>
struct kernel<Cpu<T>, ops::Rotate> {
  using Table = cpu::RotaryTable<T>;
  static Table make_table(const ops::RotarySpec& spec, Index positions) { return Table(spec, positions); }
  static void ensure(Table& table, Index positions) { table.ensure(positions); }
  /// Rotates `heads` heads of `rows` rows (row_stride apart) at positions n mod T_len + offset, in place.
  static void apply(const Table& table, T* x, Index rows, Index row_stride, Index heads, Index dim_head, Index T_len,
                    Index offset, bool inverse, bool key) {
    table.apply(x, rows, row_stride, heads, dim_head, T_len, offset, inverse, key);
  }
};

template <class T, class ScoreBias>
struct kernel<Cpu<T>, ops::Attention<ScoreBias>> {
  static void forward(const ops::AttentionProblem<T>& p, ops::HeadsView<const T> q, ops::HeadsView<const T> k,
                      ops::HeadsView<const T> v, ops::HeadsView<T> o, T* lse, Arena& arena) {
    cpu::attention_forward<T>(p, q, k, v, o, lse, arena);
  }
  static void backward(const ops::AttentionProblem<T>& p, ops::HeadsView<const T> q, ops::HeadsView<const T> k,
                       ops::HeadsView<const T> v, ops::HeadsView<const T> o, const T* lse,
                       ops::HeadsView<const T> dout, ops::HeadsView<T> dq, ops::HeadsView<T> dk, ops::HeadsView<T> dv,
                       const ops::AttentionExtraGradients<T>& extra, Arena& arena) {
    cpu::attention_backward<T>(p, q, k, v, o, lse, dout, dq, dk, dv, arena, extra);
  }
};

template <class T>
struct kernel<Cpu<T>, ops::Embedding> {
  /// x[n] = E[ids[n]] (+ scale · P[n mod T_len + offset]).
  static void forward(const std::int32_t* ids, Index N, Index T_len, Index offset, View<const T> table,
                      const T* positions, T position_scale, View<T> x) {
    cpu::embedding_forward<T>(ids, N, T_len, offset, cpu::contiguous(View<T>(const_cast<T*>(table.data), table.rows,
                                                                              table.cols)),
                              positions, position_scale, cpu::contiguous(x));
  }
  static void backward(const std::int32_t* ids, Index N, Index T_len, View<const T> dx, T* dtable, T* dpositions,
                       T position_scale) {
    cpu::embedding_backward<T>(ids, N, T_len, cpu::contiguous(View<T>(const_cast<T*>(dx.data), dx.rows, dx.cols)),
                               dtable, dpositions, position_scale);
  }
};

template <class T>
struct kernel<Cpu<T>, ops::SoftmaxCrossEntropy> {
  /// The mean loss over non-ignored targets; dlogits (may be null) = α d loss / d logits.
  static double run(View<const T> logits, const std::int32_t* targets, std::int32_t ignore_index, T* dlogits,
                    T alpha = T(1)) {
    return cpu::cross_entropy<T>(logits.data, logits.rows, logits.cols, targets, ignore_index, dlogits, alpha);
  }
};

template <class T>
struct kernel<Cpu<T>, ops::AdamWUpdate> {
  struct Coefficients {
    T step_size, decay, eps, beta1, beta2, one_minus_beta1, one_minus_beta2, bias2_sqrt;
  };
  /// m ← β₁ m + (1 − β₁) g;  v ← β₂ v + (1 − β₂) g²;  w ← w · decay − step_size · m / (sqrt(v) / bias2_sqrt + ε)
  static void step(T* w, const T* g, T* m, T* v, Index n, const Coefficients& c) {
    cpu::parallel_rows(n, 8, [&](Index begin, Index end) {
      for (Index i = begin; i < end; ++i) {
        m[i] = c.beta1 * m[i] + c.one_minus_beta1 * g[i];
        v[i] = c.beta2 * v[i] + c.one_minus_beta2 * g[i] * g[i];
        w[i] = w[i] * c.decay - c.step_size * m[i] / (std::sqrt(v[i]) / c.bias2_sqrt + c.eps);
      }
    });
  }
};

}  // namespace xtr
