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
#include "xtr/backend/cpu/quantized.hpp"
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

/// Rows of x up to which a GEMM runs as the blocked kernel of backend/cpu/quantized.hpp — the matrix read once,
/// dequantised or widened in registers, 8 rows of x per pass over a cached block of it — rather than a packed GEMM
/// (Eigen packs the whole matrix on every call, which costs as much as the arithmetic at these sizes). Measured on
/// the enwik8 shapes (bench/RESULTS.md): the blocked kernel is ahead up to 32 rows, Eigen from 64.
inline constexpr Index kFewRows = 32;

/// y (+)= x Wᵀ as the blocked kernel of backend/cpu/quantized.hpp when it applies (decoding and short prompts;
/// bfloat16 and float weights on AVX-512, and on AVX2 from two rows of x; prompts of any length where the integer
/// kernel takes them, integer_kernel_takes_any_rows, and bfloat16 ones where the panel kernel takes them,
/// panel_kernel_takes; elsewhere gemm_forward's other paths), each
/// thread calling tail(c0, c1) on the columns [c0, c1) of y it wrote after each
/// block: true. False, with nothing done, otherwise.
template <class T, class Tail = quantized::NoTail>
bool few_rows_product(View<const T> x, const ops::Weights<T>& w, View<T> y, bool accumulate, Arena& arena,
                      const Tail& tail = {}) {
  if constexpr (std::is_same_v<T, float>) {
    // quantised matrices: up to kFewRows rows, or any number where the integer kernel takes them; plain (bf16,
    // float) ones: the AVX-512 kernel for every few-row product, the AVX2 one from two rows (one row streams the
    // matrix faster through Eigen's GEMV or linear_forward_bf16 there: bench/RESULTS.md); bf16 ones of any number
    // of rows where the panel kernel takes them and x's panels stay in the cache (float ones beyond kFewRows stay
    // with Eigen's GEMM: training's)
    const auto isa = quantized::best_isa();
    const bool few = x.rows <= kFewRows;
    const bool takes =
        w.quantized()
            ? few || (w.int8_activations && quantized::integer_kernel_takes_any_rows(isa, w.group))
            : ((few && (quantized::is_avx512(isa) || (isa == quantized::Isa::avx2 && x.rows >= 2))) ||
               (w.bf16 && quantized::panel_kernel_takes(isa, x.rows) &&
                (few || quantized::panels_stay_cached(x.rows, x.cols)))) &&
                  (w.bf16 || w.w.contiguous());
    if (takes) {
      quantized::QuantizedMatrix m{w.q8, w.q4, w.scales, w.w.rows, w.w.cols, w.group};
      if (w.bf16 && !w.quantized()) m.bf16 = w.bf16;
      if (!w.bf16 && !w.quantized()) m.f32 = w.w.data;
      const float* rows = x.data;
      if (!x.contiguous()) {
        float* packed = arena.allocate<float>(x.rows * x.cols);
        for (Index r = 0; r < x.rows; ++r) std::copy_n(x.row(r), x.cols, packed + r * x.cols);
        rows = packed;
      }
      quantized::gemv(m, rows, x.rows, y.data, y.ld, accumulate, quantized::best_isa(), w.int8_activations, tail);
      return true;
    }
  }
  return false;
}

/// y (+)= x Wᵀ from the float weights, their bfloat16 copy or their quantised copy.
template <class T>
void gemm_forward(View<const T> x, const ops::Weights<T>& w, View<T> y, bool accumulate, Arena& arena) {
  const Index out = w.w.rows, in = w.w.cols;
  if (few_rows_product<T>(x, w, y, accumulate, arena)) return;
  if (w.quantized()) {  // a long prefill (or double): widen the matrix once into the arena, then one GEMM
    const quantized::QuantizedMatrix m{w.q8, w.q4, w.scales, out, in, w.group};
    if (w.int8_activations) {  // the values int8 activations stand for, as the integer kernel multiplies them
      T* rounded = arena.allocate<T>(x.rows * x.cols);
      for (Index r = 0; r < x.rows; ++r) std::copy_n(x.row(r), x.cols, rounded + r * x.cols);
      if constexpr (std::is_same_v<T, float>) {
        quantized::detail::round_activation_rows(rounded, x.rows, x.cols);
      } else {
        std::vector<float> row(std::size_t(x.cols));
        for (Index r = 0; r < x.rows; ++r) {
          std::copy_n(rounded + r * x.cols, x.cols, row.data());
          round_activations(row.data(), 1, x.cols);
          std::copy_n(row.data(), x.cols, rounded + r * x.cols);
        }
      }
      x = View<const T>(rounded, x.rows, x.cols);
    }
    T* wide = arena.allocate<T>(out * in);
    if constexpr (std::is_same_v<T, float>) {
      quantized::widen_rows(m, 0, out, wide);
    } else {
      float* row = arena.allocate<float>(in);
      for (Index j = 0; j < out; ++j) {
        quantized::widen_rows(m, j, j + 1, row);
        std::copy(row, row + in, wide + j * in);
      }
    }
    linear_forward<T>(map(x), map(View<const T>(wide, out, in)), map(y), accumulate);
    return;
  }
  if (!w.bf16) {
    with_maps([&](auto xm, auto wm, auto ym) { linear_forward<T>(xm, wm, ym, accumulate); }, x, w.w, y);
  } else if (x.rows <= 8) {
    T* rows = const_cast<T*>(x.data);
    if (!x.contiguous()) {  // the bf16 kernel reads contiguous rows
      rows = arena.allocate<T>(x.rows * x.cols);
      for (Index r = 0; r < x.rows; ++r) std::copy_n(x.row(r), x.cols, rows + r * x.cols);
    }
    linear_forward_bf16<T>(MatrixView<T>(rows, x.rows, x.cols), w.bf16, out, in, map(y), accumulate);
  } else {  // a prefill: widen the matrix once (the threads a share of its rows each), then one GEMM
    T* wide = arena.allocate<T>(out * in);
    parallel_rows(out, 2 * in, [&](Index begin, Index end) {
      for (Index i = begin * in; i < end * in; ++i) wide[i] = T(bf16_to_float(w.bf16[i]));
    });
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

  static void add_bias(View<T> out, const T* b) {
    cpu::parallel_rows(out.rows, out.cols, [&](Index begin, Index end) {
      for (Index n = begin; n < end; ++n)
        for (Index c = 0; c < out.cols; ++c) out(n, c) += b[c];
    });
  }

  /// x (N, in), w (out, in), out (N, output_cols<E>(out)); o.saved (N, out) receives the pre-activation.
  static void forward(View<const T> x, const ops::Weights<T>& w, View<T> out, const epilogue::Operands<T>& o,
                      Arena& arena) {
    const Index W = w.w.rows;
    if constexpr (direct) {
      const bool scaled = S::scaled && o.scale != T(1);
      if (S::add_to && scaled) {  // out += s · z (+ b): the product goes through scratch
        View<T> z(arena.allocate<T>(x.rows * W), x.rows, W);
        cpu::gemm_forward<T>(x, w, z, false, arena);
        kernel<Cpu<T>, ops::Axpby>::run(z, out, o.scale, T(1));
        if (S::bias && o.bias) add_bias(out, o.bias);
        return;
      }
      const T scale = scaled ? o.scale : T(1);
      const T* b = S::bias ? o.bias : nullptr;
      const auto finish = [&](Index n0, Index n1, Index c0, Index c1) {  // out ← s · out + b over a block
        for (Index n = n0; n < n1; ++n) {
          T* r = out.row(n);
          if (scale != T(1))
            for (Index c = c0; c < c1; ++c) r[c] *= scale;
          if (b)
            for (Index c = c0; c < c1; ++c) r[c] += b[c];
        }
      };
      if (!scaled && !b) return cpu::gemm_forward<T>(x, w, out, S::add_to, arena);
      if (cpu::few_rows_product<T>(x, w, out, S::add_to, arena,
                                   [&](Index c0, Index c1) { finish(0, out.rows, c0, c1); }))
        return;
      cpu::gemm_forward<T>(x, w, out, S::add_to, arena);
      cpu::parallel_rows(out.rows, 2 * W, [&](Index begin, Index end) { finish(begin, end, 0, W); });
    } else {
      View<T> a(o.saved ? o.saved : arena.allocate<T>(x.rows * W), x.rows, W);
      if constexpr (!S::gated) {  // column c of the output reads column c of a alone: each thread finishes its own
        if (cpu::few_rows_product<T>(x, w, a, false, arena, [&](Index c0, Index c1) {
              for (Index n = 0; n < x.rows; ++n) cpu::epilogue_segment<E, T>(a, o, out, n, c0, c1);
            }))
          return;
      }
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
    const T gemm_alpha = S::scaled ? alpha * o.scale : alpha;  // z' = s · z: the GEMMs see s · dz
    if (dw)
      cpu::with_maps([&](auto dzm, auto xm, auto dwm) { cpu::linear_backward_weight<T>(dzm, xm, dwm, gemm_alpha); },
                     dz, x, View<T>(dw, w.rows, w.cols));
    if (dx.data)
      cpu::with_maps(
          [&](auto dzm, auto wm, auto dxm) { cpu::linear_backward_input<T>(dzm, wm, dxm, gemm_alpha, accumulate_dx); },
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
  /// dx += ∂h/∂xᵀ dh; parameter gradients add up (each when non-null).
  static void backward(View<const T> dh, const T* xhat, const T* rstd, const ops::NormWeights<T>& w, View<T> dx,
                       const ops::NormGradients<T>& grads, Arena& arena) {
    cpu::norm_backward_rows<Norm, T>(dh.data, dh.ld, xhat, rstd, w, dx.data, dx.ld, dh.rows, dh.cols, grads, arena);
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
struct kernel<Cpu<T>, ops::ScaleHeads> {
  /// y_h = x_h · s_h (y may be x).
  static void forward(View<const T> x, const T* s, Index heads, View<T> y) {
    const Index dh = x.cols / heads;
    cpu::parallel_rows(x.rows, x.cols, [&](Index begin, Index end) {
      for (Index n = begin; n < end; ++n)
        for (Index h = 0; h < heads; ++h)
          for (Index d = 0; d < dh; ++d) y(n, h * dh + d) = x(n, h * dh + d) * s[h];
    });
  }
  /// dx = dy_h · s_h (dx may be dy), ds_h += Σ dy_h ⊙ x_h.
  static void backward(View<const T> dy, View<const T> x, const T* s, Index heads, View<T> dx, T* ds) {
    const Index dh = x.cols / heads;
    if (ds)
      for (Index n = 0; n < x.rows; ++n)
        for (Index h = 0; h < heads; ++h) {
          T sum = 0;
          for (Index d = 0; d < dh; ++d) sum += dy(n, h * dh + d) * x(n, h * dh + d);
          ds[h] += sum;
        }
    forward(dy, s, heads, dx);
  }
};

template <class T>
struct kernel<Cpu<T>, ops::Multiply> {
  static void forward(View<const T> a, View<const T> b, View<T> y) {
    cpu::parallel_rows(a.rows, a.cols, [&](Index begin, Index end) {
      for (Index n = begin; n < end; ++n)
        for (Index c = 0; c < a.cols; ++c) y(n, c) = a(n, c) * b(n, c);
    });
  }
  /// da = dy ⊙ b, db = dy ⊙ a (either may be empty; neither may alias dy, a or b).
  static void backward(View<const T> dy, View<const T> a, View<const T> b, View<T> da, View<T> db) {
    cpu::parallel_rows(dy.rows, 2 * dy.cols, [&](Index begin, Index end) {
      for (Index n = begin; n < end; ++n)
        for (Index c = 0; c < dy.cols; ++c) {
          const T g = dy(n, c), av = a(n, c), bv = b(n, c);
          if (db.data) db(n, c) = g * av;
          if (da.data) da(n, c) = g * bv;
        }
    });
  }
};

template <class T>
struct kernel<Cpu<T>, ops::MixHeads> {
  static T lerp(T a, T b, T m) { return m < T(0.5) ? a + m * (b - a) : b - (T(1) - m) * (b - a); }
  /// y = a + μ (b − a) per head (μ (N, heads), row stride mu_ld); y may be b.
  static void forward(View<const T> a, View<const T> b, const T* mu, Index mu_ld, Index heads, View<T> y) {
    const Index dh = a.cols / heads;
    cpu::parallel_rows(a.rows, 2 * a.cols, [&](Index begin, Index end) {
      for (Index n = begin; n < end; ++n)
        for (Index c = 0; c < a.cols; ++c) y(n, c) = lerp(a(n, c), b(n, c), mu[n * mu_ld + c / dh]);
    });
  }
  /// da += (1 − μ) dy, db = μ dy (db may be dy), dμ (N, heads) = Σ_channels dy ⊙ (b − a).
  static void backward(View<const T> dy, View<const T> a, View<const T> b, const T* mu, Index mu_ld, Index heads,
                       View<T> da, View<T> db, T* dmu) {
    const Index dh = a.cols / heads;
    cpu::parallel_rows(dy.rows, 4 * dy.cols, [&](Index begin, Index end) {
      for (Index n = begin; n < end; ++n) {
        if (dmu)
          for (Index h = 0; h < heads; ++h) dmu[n * heads + h] = T(0);
        for (Index c = 0; c < dy.cols; ++c) {
          const T m = mu[n * mu_ld + c / dh], g = dy(n, c);
          if (dmu) dmu[n * heads + c / dh] += g * (b(n, c) - a(n, c));
          if (da.data) da(n, c) += (T(1) - m) * g;
          if (db.data) db(n, c) = m * g;
        }
      }
    });
  }
};

template <class T, class A>
struct kernel<Cpu<T>, ops::Activation<A>> {
  static void forward(View<const T> x, View<T> y) {
    for (Index n = 0; n < x.rows; ++n) {
      Eigen::Map<const Eigen::Array<T, 1, Eigen::Dynamic>> xr(x.row(n), x.cols);
      Eigen::Map<Eigen::Array<T, 1, Eigen::Dynamic>>(y.row(n), x.cols) = cpu::ActivationMath<A>::value(xr);
    }
  }
  static void backward(View<const T> dy, View<const T> x, View<T> dx, bool accumulate) {
    for (Index n = 0; n < x.rows; ++n) {
      Eigen::Map<const Eigen::Array<T, 1, Eigen::Dynamic>> xr(x.row(n), x.cols), gr(dy.row(n), x.cols);
      Eigen::Map<Eigen::Array<T, 1, Eigen::Dynamic>> out(dx.row(n), x.cols);
      if (accumulate) {
        out += gr * cpu::ActivationMath<A>::derivative(xr);
      } else {
        out = gr * cpu::ActivationMath<A>::derivative(xr);
      }
    }
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
  /// Keys and values from an f16 KV cache (ops::HalfKeyValues).
  static void forward(const ops::AttentionProblem<T>& p, ops::HeadsView<const T> q, ops::HeadsView<const Half> k,
                      ops::HeadsView<const Half> v, ops::HeadsView<T> o, T* lse, Arena& arena) {
    cpu::attention_forward<T, Half>(p, q, k, v, o, lse, arena);
  }
  static Index to_halves(const T* x, Index n, Half* out) { return cpu::simd::to_halves(x, n, out); }
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
    require(x.contiguous() && table.contiguous(), "internal: the CPU embedding kernel takes contiguous rows");
    cpu::embedding_forward<T>(ids, N, T_len, offset, cpu::contiguous(View<T>(const_cast<T*>(table.data), table.rows,
                                                                              table.cols)),
                              positions, position_scale, cpu::contiguous(x));
  }
  static void backward(const std::int32_t* ids, Index N, Index T_len, View<const T> dx, T* dtable, T* dpositions,
                       T position_scale) {
    require(dx.contiguous(), "internal: the CPU embedding kernel takes contiguous rows");
    cpu::embedding_backward<T>(ids, N, T_len, cpu::contiguous(View<T>(const_cast<T*>(dx.data), dx.rows, dx.cols)),
                               dtable, dpositions, position_scale);
  }
};

template <class T>
struct kernel<Cpu<T>, ops::SoftmaxCrossEntropy> {
  /// The mean loss over non-ignored targets; dlogits (may be null) = α d loss / d logits.
  static double run(View<const T> logits, const std::int32_t* targets, std::int32_t ignore_index, T* dlogits,
                    T alpha = T(1)) {
    require(logits.contiguous(), "internal: the CPU cross-entropy kernel takes contiguous rows");
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
