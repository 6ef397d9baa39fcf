#pragma once
// The backend seam: what a layer asks for, as op descriptors, and the one template that says how.
//
//   kernel<Backend, Op>::forward(...) / ::backward(...)
//
// Layers name ops; backends specialize kernel<> for the ops they implement (backend/cpu/: Eigen, backend/reference/:
// plain loops, the oracle). A pair without a specialization fails to compile with one sentence, and the compiler's
// "required from" line names the backend and the op. Policies carried by an op (a norm formula, an activation, a
// score bias) are compile-time: they change a kernel's inner loop. Everything else is a run-time argument.
//
// | op                         | forward                                         | backward                          |
// |----------------------------|-------------------------------------------------|-----------------------------------|
// | Linear<Epilogue>           | out ← epilogue(x Wᵀ)  (epilogue.hpp)             | dW += dzᵀ x, dx (+)= dz W, db     |
// | Normalize<Norm>            | h (+)= norm(x [+ r]) ⊙ (c + γ) [+ β], keeps x̂, r | dx += ∂h/∂xᵀ dh, dγ, dβ           |
// | Rotate                     | q, k rotated in place by position               | the inverse rotation              |
// | Attention<ScoreBias>       | O = softmax(scale QKᵀ + bias + mask) V, lse     | dQ, dK, dV (+ d bias table)       |
// | Embedding                  | x = E[ids] (+ s · P[pos])                       | scatter-add into dE, dP           |
// | SoftmaxCrossEntropy        | loss and dz = (softmax(z) − onehot(y)) / M      | (fused into the forward)          |
// | AdamWUpdate                | one AdamW step over a flat buffer               |                                   |
// | ScaleHeads, MixHeads       | x_h · s_h;  a_h + μ_h (b_h − a_h)               | dx, ds;  da, db, dμ               |
// | Multiply, Activation<A>    | a ⊙ b;  A(x)                                    | da, db;  dy ⊙ A'(x)               |
// | Axpby, Fill, Dropout       | y ← β y + α x;  x ← v;  x ← x · keep / (1 − p)   | (Dropout: the same mask)          |
#include <cmath>
#include <concepts>
#include <cstdint>
#include <string_view>
#include <type_traits>

#include "xtr/core/half.hpp"
#include "xtr/core/rng.hpp"
#include "xtr/core/view.hpp"

namespace xtr {

/// What every backend type provides: its scalar and a printable name.
template <class B>
concept Backend = requires {
  typename B::scalar;
  { B::name } -> std::convertible_to<std::string_view>;
};

namespace detail {
template <class...>
inline constexpr bool always_false = false;
}  // namespace detail

/// How `Backend` runs `Op`. The primary template is the refusal: specialize it in the backend's folder.
template <class Backend, class Op>
struct kernel {
  static_assert(detail::always_false<Backend, Op>,
                "xtr: this backend has no kernel for this op (both are named in the kernel<Backend, Op> "
                "instantiation below); specialize kernel<Backend, Op> in the backend's folder or choose a backend "
                "that implements the op");
};

namespace ops {

/// Strided storage of one operand of heads: element (b, t, head, d) is at data[b·batch_stride + t·row_stride +
/// head·head_stride + d], head_stride 0 meaning dim_head — a (batch, length, heads·dim_head) buffer, heads side by
/// side in each row; a KV cache keeps each head's rows together instead, (batch, heads, capacity, dim_head), so a
/// decoding step reads each head's keys as one contiguous run. batch_stride 0: one operand shared by the batch.
template <class T>
struct HeadsView {
  T* data = nullptr;
  Index batch_stride = 0, row_stride = 0, head_stride = 0;
  [[nodiscard]] T* at(Index b, Index t, Index head, Index dim_head) const {
    return data + b * batch_stride + t * row_stride + head * (head_stride ? head_stride : dim_head);
  }
  operator HeadsView<const T>() const  // NOLINT: a writable operand is a readable one
    requires(!std::is_const_v<T>)
  {
    return {data, batch_stride, row_stride, head_stride};
  }
};

/// Sizes, masks and score modifiers of one attention call.
template <class T>
struct AttentionProblem {
  Index batch = 0, heads = 0, kv_heads = 0, dim_head = 0;
  Index q_len = 0, k_len = 0;
  Index q_offset = 0;  // key position of query 0: causal lets query i see keys j ≤ i + q_offset
  bool causal = false;
  T scale = 1;
  const std::uint8_t* key_mask = nullptr;  // (batch, key_mask_stride), 1 = attend; nullptr = every key
  Index key_mask_stride = 0;
  double dropout = 0;
  RandomStream dropout_stream{};
  // Query rows whose (batch, query_mask_stride) byte is 0 get O = 0 and pass no gradient (x-transformers zeroes the
  // attention branch at padded positions); nullptr = every query row is real.
  const std::uint8_t* query_mask = nullptr;
  Index query_mask_stride = 0;
  // Relative score bias (ALiBi, T5 buckets, dynamic position bias): s(b, h, i, j) += bias[h · bias_stride +
  // (j − i − q_offset) + bias_zero] for the regular keys; the backward adds Σ_b dS into dbias the same way.
  const T* bias = nullptr;
  Index bias_stride = 0, bias_zero = 0;
  // Memory keys and values (x-transformers' attn_num_mem_kv): mem_len keys before the regular ones, seen by every
  // query (no causal or padding mask, no score bias); rows (mem_len, kv_heads · dim_head) shared by the batch.
  Index mem_len = 0;
  const T* mem_k = nullptr;
  const T* mem_v = nullptr;
  Index mem_ld = 0;  // row stride of mem_k and mem_v (0: kv_heads · dim_head)
  [[nodiscard]] Index memory_ld() const { return mem_ld ? mem_ld : kv_heads * dim_head; }
};

/// Where the attention backward adds the gradients of the memory keys and values and of the bias table.
template <class T>
struct AttentionExtraGradients {
  T* bias = nullptr;   // like AttentionProblem::bias
  T* mem_k = nullptr;  // (mem_len, kv_heads · dim_head) rows memory_ld() apart, like AttentionProblem::mem_k
  T* mem_v = nullptr;
};

/// A norm's parameters: h = x̂ ⊙ (gain_offset + gain) [+ bias]; gain may be a single scalar (ScaleNorm) or absent.
template <class T>
struct NormWeights {
  NormWeights(const T* gain, T gain_offset = T(1), const T* bias = nullptr)  // NOLINT: a bare gain converts
      : gain(gain), gain_offset(gain_offset), bias(bias) {}
  const T* gain;
  T gain_offset;  // 1: `gain` stores gain − 1 (x-transformers' norm_add_unit_offset); 0: the gain itself
  const T* bias;  // β, or null (bias-less)
};

/// Where a norm's parameter gradients add up: dγ, and dβ when the norm has a bias.
template <class T>
struct NormGradients {
  NormGradients(T* gain, T* bias = nullptr) : gain(gain), bias(bias) {}  // NOLINT: a bare dγ converts
  T* gain;
  T* bias;
};

/// GEMM with an epilogue expression (backend/epilogue.hpp): out ← E(x Wᵀ).
template <class Epilogue>
struct Linear {};

/// Weights of a Linear: (out, in) row-major, or a bfloat16 copy of them (decoding reads half the bytes), or a
/// quantised copy (core/weight_format.hpp: int8 or 4-bit values with one half-precision scale per `group` values of
/// a row).
template <class T>
struct Weights {
  ConstView<T> w;                        // (out, in)
  const std::uint16_t* bf16 = nullptr;  // same layout, or null
  const std::int8_t* q8 = nullptr;      // (out, in) int8 values, or null
  const std::uint8_t* q4 = nullptr;     // (out, in / 2) packed 4-bit values, or null
  const std::uint16_t* scales = nullptr;  // (out, in / group) halves (IEEE binary16 bits) with q8 or q4
  Index group = 0;
  bool int8_activations = false;        // with q8 or q4: x is rounded to int8 per chunk of 32 values of a row first
                                        // (core/weight_format.hpp's ActivationFormat::int8)
  [[nodiscard]] bool quantized() const { return q8 != nullptr || q4 != nullptr; }
};

/// Pre-norm / post-norm formula of a norm policy.
template <class Norm>
struct Normalize {};

/// Rotary rotation of q and k by position. Backends build their table from a RotarySpec.
struct Rotate {};

/// What a rotary table holds: r = dim channels per head rotate, pair i (channels 2i, 2i + 1) by the angle
/// t · inv_freq_i / interpolation_factor at position t, inv_freq_i = 1 / θ^(2i/r), θ = theta · base_rescale^(r/(r − 2));
/// with xpos, q is also scaled by s_i^(t/xpos_scale_base) and k by its inverse, s_i = (2i + 0.4 r) / (1.4 r).
struct RotarySpec {
  Index dim = 0;
  double theta = 10000;
  double interpolation_factor = 1;
  double base_rescale_factor = 1;
  double xpos_scale_base = 0;  // 0: no xpos
  /// θ after the rescaling (x-transformers' rotary_base_rescale_factor).
  [[nodiscard]] double base() const {
    return base_rescale_factor == 1 ? theta
                                    : theta * std::pow(base_rescale_factor, double(dim) / double(dim - 2));
  }
  /// inv_freq_i in float, as x-transformers' buffer holds it.
  [[nodiscard]] float inv_freq(Index i) const {
    return float(1.0 / std::pow(base(), double(2 * i) / double(dim)));
  }
  /// The angle of pair i at position t, computed in float as x-transformers does.
  [[nodiscard]] float angle(Index t, Index i) const {
    const float a = float(t) * inv_freq(i);
    return interpolation_factor == 1 ? a : a / float(interpolation_factor);
  }
  /// The xpos scale of q for pair i at position t (k takes its inverse); 1 without xpos.
  [[nodiscard]] double xpos_scale(Index t, Index i) const {
    if (xpos_scale_base == 0) return 1;
    const double s = (double(2 * i) + 0.4 * double(dim)) / (1.4 * double(dim));
    return std::pow(float(s), float(double(t) / xpos_scale_base));
  }
};

/// Attention with a score-bias policy (NoScoreBias or a relative-position table).
template <class ScoreBias>
struct Attention {};

}  // namespace ops
class Arena;  // core/arena.hpp (this header stays free of Eigen: the CUDA sources include it)
namespace ops {

/// Whether attention kernel K (kernel<Backend, Attention<...>>) also reads keys and values from an f16 KV cache: a
/// forward over halves, and to_halves(x, n, out) writing the nearest halves of n values and returning the index of the
/// first one outside the half range (or n). The CPU backend's does; a cache of another backend keeps its scalar type.
template <class K, class T>
concept HalfKeyValues = requires(const AttentionProblem<T>& p, HeadsView<const T> q, HeadsView<const Half> kv,
                                 HeadsView<T> o, T* lse, Arena& arena, const T* x, Half* out) {
  K::forward(p, q, kv, kv, o, lse, arena);
  { K::to_halves(x, Index{}, out) } -> std::same_as<Index>;
};

/// Token (and absolute position) embedding lookup.
struct Embedding {};

/// Softmax cross-entropy fused with its gradient.
struct SoftmaxCrossEntropy {};

/// One AdamW update over the flat parameter buffer.
struct AdamWUpdate {};

/// x ← value everywhere (zeroing gradient buffers).
struct Fill {};

/// x ← x · keep / (1 − p), keep(n, c) = uniform(n · cols + c) ≥ p: the same call in the backward applies the same
/// mask to the gradient.
struct Dropout {};

/// y ← β y + α x elementwise on (rows, cols) views (the residual add of a branch without an output projection, copies).
struct Axpby {};

/// y_h = x_h · s_h for each head h of (N, H·dh) rows; backward dx = dy_h · s_h, ds_h += Σ dy_h ⊙ x_h (attn_head_scale).
struct ScaleHeads {};

/// y = a ⊙ b elementwise; backward da = dy ⊙ b, db = dy ⊙ a (attn_gate_values).
struct Multiply {};

/// y_h = a_h + μ_h (b_h − a_h) per head h, μ (N, heads) broadcast over the head's channels, computed as torch.lerp
/// does (from a when μ < 0.5, from b otherwise); backward da, db, dμ (add_value_residual).
struct MixHeads {};

/// y = A(x) elementwise; backward dx (+)= dy ⊙ A'(x) (the dynamic position bias MLP between its norms).
template <class A>
struct Activation {};

}  // namespace ops
}  // namespace xtr
