#pragma once
// The CUDA backend: kernel<Cuda<float>, Op> for every op of backend/ops.hpp, so that
//
//   TransformerWrapper<Decoder<Rotary, RMSNorm, SwiGLU>, Cuda<float>>
//
// is the only change a user makes (link xtr::cuda_kernels; the model, the layers and the wrappers are the same code).
// Each op calls a launcher of backend/cuda/launch.hpp (kernels/*.cu): GEMMs through cuBLASLt with the bias in its
// epilogue and one generated kernel for the rest of the epilogue expression, fused norms, rotary, embedding,
// cross-entropy with its gradient in one pass, AdamW in one launch, flash attention's forward (kernels/attention_tiles.cu)
// and a first attention backward. The policies stay compile-time types here; the launchers take them as the run-time
// values of one kernel per op (an activation kind, a norm formula), resolved once per call.
//
// Memory: the model's parameters, gradients, activation arena, KV caches and optimizer moments come from
// Cuda<float>::memory(), managed memory, so the host-side work of the layers and the wrappers (masks, tables, cache
// bookkeeping, checkpoints) reads and writes it as before.
// Bring-up mode: every op waits for its kernels before it returns (cuda::finish), so the host never reads memory a
// kernel is still writing. Asynchronous execution on a stream per model is the next step, once a device has run this.
//
// STATUS: compiled everywhere nvcc is; NEVER RUN ON A DEVICE (no GPU has been lent to this work yet). Not yet written:
// Cuda<bf16> (mixed precision), quantized or bf16 decoding weights, memory keys in the attention forward.
#include <algorithm>
#include <cstdint>
#include <string_view>
#include <type_traits>

#include "xtr/backend/cpu/rotary.hpp"
#include "xtr/backend/cuda/launch.hpp"
#include "xtr/backend/epilogue.hpp"
#include "xtr/backend/ops.hpp"
#include "xtr/core/arena.hpp"
#include "xtr/core/error.hpp"
#include "xtr/core/tensor.hpp"
#include "xtr/policies/activations.hpp"
#include "xtr/policies/concepts.hpp"

namespace xtr {

/// The CUDA backend, in float (compared with Cpu<float> at float tolerance).
template <class T>
struct Cuda {
  static_assert(std::is_same_v<T, float>, "xtr: Cuda<T> takes float (Cuda<bf16>, mixed precision, is not written yet)");
  using scalar = T;
  static constexpr std::string_view name = "Cuda<float>";
  /// Managed memory; throws "no CUDA device at run time" on a machine without a GPU.
  static const Memory& memory() { return cuda::managed_memory(); }
};

namespace cuda {

/// The launchers' activation kind of an activation tag (void: none).
template <class A>
inline constexpr Activation activation_of = Activation::identity;
template <>
inline constexpr Activation activation_of<act::Gelu> = Activation::gelu;
template <>
inline constexpr Activation activation_of<act::Silu> = Activation::silu;
template <>
inline constexpr Activation activation_of<act::ReluSquared> = Activation::relu_squared;
template <>
inline constexpr Activation activation_of<act::Sigmoid> = Activation::sigmoid;

/// A norm policy's formula as the launchers' run-time description.
template <class Norm>
constexpr NormFormula formula_of() {
  NormFormula f;
  f.subtracts_mean = Norm::subtracts_mean;
  f.root_dim = Norm::root_dim;
  f.gain = Norm::gain == NormGain::channel  ? NormFormula::Gain::channel
           : Norm::gain == NormGain::scalar ? NormFormula::Gain::scalar
                                            : NormFormula::Gain::none;
  f.eps = Norm::eps;
  return f;
}

/// An epilogue expression's shape as the launchers' run-time description.
template <class E>
constexpr EpilogueSpec epilogue_of() {
  using S = epilogue::Shape<E>;
  EpilogueSpec e;
  e.activation = activation_of<typename S::activation>;
  e.gated = S::gated;
  e.dropout = S::dropout;
  e.add_to = S::add_to;
  return e;
}

inline Rows rows_of(View<const float> v) { return {v.data, v.ld}; }
inline MutableRows rows_of(View<float> v) { return {v.data, v.ld}; }

}  // namespace cuda

template <>
struct kernel<Cuda<float>, ops::Fill> {
  static void run(View<float> x, float value) {
    cuda::fill(x.data, x.rows, x.cols, x.ld, value);
    cuda::finish("Fill");
  }
};

template <>
struct kernel<Cuda<float>, ops::Dropout> {
  static void run(View<float> x, double p, const RandomStream& stream) {
    cuda::dropout(x.data, x.rows, x.cols, x.ld, p, stream);
    cuda::finish("Dropout");
  }
};

template <>
struct kernel<Cuda<float>, ops::Axpby> {
  static void run(View<const float> x, View<float> y, float alpha, float beta) {
    cuda::axpby(x.data, x.ld, y.data, y.ld, y.rows, y.cols, alpha, beta);
    cuda::finish("Axpby");
  }
};

template <>
struct kernel<Cuda<float>, ops::ScaleHeads> {
  static void forward(View<const float> x, const float* s, Index heads, View<float> y) {
    cuda::scale_heads_forward(x.data, x.ld, s, heads, y.data, y.ld, x.rows, x.cols);
    cuda::finish("ScaleHeads forward");
  }
  static void backward(View<const float> dy, View<const float> x, const float* s, Index heads, View<float> dx,
                       float* ds) {
    cuda::scale_heads_backward(dy.data, dy.ld, x.data, x.ld, s, heads, dx.data, dx.ld, ds, x.rows, x.cols);
    cuda::finish("ScaleHeads backward");
  }
};

template <>
struct kernel<Cuda<float>, ops::Multiply> {
  static void forward(View<const float> a, View<const float> b, View<float> y) {
    cuda::multiply_forward(a.data, b.data, y.data, a.rows, a.cols, a.ld, b.ld, y.ld);
    cuda::finish("Multiply forward");
  }
  static void backward(View<const float> dy, View<const float> a, View<const float> b, View<float> da,
                       View<float> db) {
    cuda::multiply_backward(dy.data, a.data, b.data, da.data, db.data, dy.rows, dy.cols, dy.ld, a.ld, b.ld, da.ld,
                            db.ld);
    cuda::finish("Multiply backward");
  }
};

template <>
struct kernel<Cuda<float>, ops::MixHeads> {
  static void forward(View<const float> a, View<const float> b, const float* mu, Index mu_ld, Index heads,
                      View<float> y) {
    cuda::mix_heads_forward(cuda::rows_of(a), cuda::rows_of(b), mu, mu_ld, heads, cuda::rows_of(y), a.rows, a.cols);
    cuda::finish("MixHeads forward");
  }
  static void backward(View<const float> dy, View<const float> a, View<const float> b, const float* mu, Index mu_ld,
                       Index heads, View<float> da, View<float> db, float* dmu) {
    cuda::mix_heads_backward(cuda::rows_of(dy), cuda::rows_of(a), cuda::rows_of(b), mu, mu_ld, heads,
                             cuda::rows_of(da), cuda::rows_of(db), dmu, dy.rows, dy.cols);
    cuda::finish("MixHeads backward");
  }
};

template <class A>
struct kernel<Cuda<float>, ops::Activation<A>> {
  static void forward(View<const float> x, View<float> y) {
    cuda::activation_forward(cuda::activation_of<A>, cuda::rows_of(x), cuda::rows_of(y), x.rows, x.cols);
    cuda::finish("Activation forward");
  }
  static void backward(View<const float> dy, View<const float> x, View<float> dx, bool accumulate) {
    cuda::activation_backward(cuda::activation_of<A>, cuda::rows_of(dy), cuda::rows_of(x), cuda::rows_of(dx), x.rows,
                              x.cols, accumulate);
    cuda::finish("Activation backward");
  }
};

template <>
struct kernel<Cuda<float>, ops::AdamWUpdate> {
  using Coefficients = cuda::AdamWCoefficients;
  static void step(float* w, const float* g, float* m, float* v, Index n, const Coefficients& c) {
    cuda::adamw_step(w, g, m, v, n, c);
    cuda::finish("AdamWUpdate");
  }
};

template <>
struct kernel<Cuda<float>, ops::Embedding> {
  static void forward(const std::int32_t* ids, Index N, Index T_len, Index offset, View<const float> table,
                      const float* positions, float position_scale, View<float> x) {
    require(x.contiguous() && table.contiguous(), "internal: the CUDA embedding kernel takes contiguous rows");
    cuda::embedding_forward(ids, N, x.cols, T_len, offset, table.data, positions, position_scale, x.data);
    cuda::finish("Embedding forward");
  }
  static void backward(const std::int32_t* ids, Index N, Index T_len, View<const float> dx, float* dtable,
                       float* dpositions, float position_scale) {
    require(dx.contiguous(), "internal: the CUDA embedding kernel takes contiguous rows");
    cuda::embedding_backward(ids, N, dx.cols, T_len, dx.data, dtable, dpositions, position_scale);
    cuda::finish("Embedding backward");
  }
};

template <>
struct kernel<Cuda<float>, ops::SoftmaxCrossEntropy> {
  static double run(View<const float> logits, const std::int32_t* targets, std::int32_t ignore_index, float* dlogits,
                    float alpha = 1.0f) {
    require(logits.contiguous(), "internal: the CUDA cross-entropy kernel takes contiguous rows");
    return cuda::cross_entropy(logits.data, logits.rows, logits.cols, targets, ignore_index, dlogits, alpha);
  }
};

template <class Norm>
struct kernel<Cuda<float>, ops::Normalize<Norm>> {
  static void forward(View<const float> x, const float* residual, const ops::NormWeights<float>& w, View<float> h,
                      bool accumulate, float* xhat, float* rstd) {
    cuda::norm_forward(cuda::formula_of<Norm>(), x.data, residual, x.rows, x.cols, x.ld, w.gain, w.gain_offset, w.bias,
                       h.data, accumulate, xhat, rstd);
    cuda::finish("Normalize forward");
  }
  static void backward(View<const float> dh, const float* xhat, const float* rstd, const ops::NormWeights<float>& w,
                       View<float> dx, const ops::NormGradients<float>& grads, Arena& arena) {
    float* scratch = arena.allocate<float>(cuda::norm_backward_scratch(dh.rows, dh.cols));
    cuda::norm_backward(cuda::formula_of<Norm>(), dh.data, dh.ld, xhat, rstd, w.gain, w.gain_offset, dx.data, dx.ld,
                        dh.rows, dh.cols, Norm::gain == NormGain::none ? nullptr : grads.gain, grads.bias, scratch);
    cuda::finish("Normalize backward");
  }
};

template <>
struct kernel<Cuda<float>, ops::Rotate> {
  /// The CPU's table (built on the host in double from the float angles, as x-transformers' buffers) and its copy in
  /// the backend's memory: cos and sin for q, then for k (equal without xpos), (positions, pairs) each.
  struct Table {
    cpu::RotaryTable<float> host;
    Tensor<float> q_cos, q_sin, k_cos, k_sin;
  };
  static void copy(Table& t) {
    const Index n = t.host.positions() * t.host.pairs();
    const Memory& memory = Cuda<float>::memory();
    const float* sources[4] = {t.host.cos_data(false), t.host.sin_data(false), t.host.cos_data(true),
                               t.host.sin_data(true)};
    Tensor<float>* targets[4] = {&t.q_cos, &t.q_sin, &t.k_cos, &t.k_sin};
    for (int i = 0; i < 4; ++i) {
      *targets[i] = Tensor<float>(Shape{std::max<Index>(n, 1)}, Uninitialized{}, memory);
      if (n > 0) std::copy_n(sources[i], n, targets[i]->data());
    }
  }
  static Table make_table(const ops::RotarySpec& spec, Index positions) {
    Table t{cpu::RotaryTable<float>(spec, positions), {}, {}, {}, {}};
    copy(t);
    return t;
  }
  static void ensure(Table& t, Index positions) {
    if (positions <= t.host.positions()) return;
    t.host.ensure(positions);
    copy(t);
  }
  static void apply(const Table& t, float* x, Index rows, Index row_stride, Index heads, Index dim_head, Index T_len,
                    Index offset, bool inverse, bool key) {
    cuda::rotary_apply(key ? t.k_cos.data() : t.q_cos.data(), key ? t.k_sin.data() : t.q_sin.data(), t.host.pairs(),
                       x, rows, row_stride, heads, dim_head, T_len, offset, inverse);
    cuda::finish("Rotate");
  }
};

template <class E>
struct kernel<Cuda<float>, ops::Linear<E>> {
  using S = epilogue::Shape<E>;
  static_assert(epilogue::Expression<E>, "xtr: not an epilogue expression of backend/epilogue.hpp's grammar");
  /// No activation and no dropout: cuBLASLt writes or accumulates the output itself, the bias in its epilogue.
  static constexpr bool direct = std::is_void_v<typename S::activation> && !S::dropout;

  static void require_float(const ops::Weights<float>& w) {
    require(!w.bf16 && !w.quantized(),
            "the Cuda backend reads float weights: bf16 and quantized decoding weights are CPU-only so far "
            "(XTR_DECODE_WEIGHTS=f32, or leave the automatic choice, which is float on Cuda)");
  }

  static void forward(View<const float> x, const ops::Weights<float>& w, View<float> out,
                      const epilogue::Operands<float>& o, Arena& arena) {
    require_float(w);
    const Index N = x.rows, W = w.w.rows, in = w.w.cols;
    const float scale = S::scaled ? o.scale : 1.0f;
    const float* bias = S::bias ? o.bias : nullptr;
    if constexpr (direct) {
      cuda::gemm_forward(x.data, x.ld, w.w.data, w.w.ld, out.data, out.ld, N, W, in, scale, S::add_to ? 1.0f : 0.0f,
                         bias);
    } else {
      float* a = o.saved ? o.saved : arena.allocate<float>(N * W);
      cuda::gemm_forward(x.data, x.ld, w.w.data, w.w.ld, a, W, N, W, in, scale, 0.0f, bias);
      cuda::epilogue_forward(cuda::epilogue_of<E>(), a, W, N, W, out.data, out.ld, o.dropout, o.stream);
    }
    cuda::finish("Linear forward");
  }

  static void backward(View<const float> dout, View<const float> x, View<const float> w,
                       const epilogue::Operands<float>& o, View<float> dx, bool accumulate_dx, float* dw, float* dbias,
                       float alpha, Arena& arena, View<float> dz_buffer = {}) {
    const Index N = x.rows, W = w.rows, in = w.cols;
    const float* dz = dout.data;
    Index ld_dz = dout.ld;
    if constexpr (!direct) {
      View<float> buffer = dz_buffer.data ? dz_buffer : View<float>(arena.allocate<float>(N * W), N, W);
      cuda::epilogue_backward(cuda::epilogue_of<E>(), dout.data, dout.ld, o.saved, W, N, W, buffer.data, buffer.ld,
                              o.dropout, o.stream);
      dz = buffer.data;
      ld_dz = buffer.ld;
    }
    if (S::bias && dbias) cuda::bias_gradient(dz, ld_dz, N, W, dbias, alpha);
    const float gemm_alpha = S::scaled ? alpha * o.scale : alpha;  // z' = s · z: the GEMMs see s · dz
    if (dw) cuda::gemm_weight_gradient(dz, ld_dz, x.data, x.ld, dw, in, N, W, in, gemm_alpha);
    if (dx.data)
      cuda::gemm_input_gradient(dz, ld_dz, w.data, w.ld, dx.data, dx.ld, N, W, in, gemm_alpha,
                                accumulate_dx ? 1.0f : 0.0f);
    cuda::finish("Linear backward");
  }
};

template <class ScoreBias>
struct kernel<Cuda<float>, ops::Attention<ScoreBias>> {
  static void forward(const ops::AttentionProblem<float>& p, ops::HeadsView<const float> q,
                      ops::HeadsView<const float> k, ops::HeadsView<const float> v, ops::HeadsView<float> o, float* lse,
                      Arena&) {
    cuda::attention(p, q, k, v, o, lse);
    cuda::finish("Attention forward");
  }
  static void backward(const ops::AttentionProblem<float>& p, ops::HeadsView<const float> q,
                       ops::HeadsView<const float> k, ops::HeadsView<const float> v, ops::HeadsView<const float> o,
                       const float* lse, ops::HeadsView<const float> dout, ops::HeadsView<float> dq,
                       ops::HeadsView<float> dk, ops::HeadsView<float> dv,
                       const ops::AttentionExtraGradients<float>& extra, Arena& arena) {
    float* scratch = arena.allocate<float>(cuda::attention_backward_scratch(p));
    cuda::attention_backward(p, q, k, v, o, lse, dout, dq, dk, dv, extra, scratch);
    cuda::finish("Attention backward");
  }
};

}  // namespace xtr
