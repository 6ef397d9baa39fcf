// The attention backward on the GPU from the element functions of xtr/backend/cuda/tiles.hpp (the ones the CPU tests
// check against the reference backend), and the model-facing attention calls of xtr/backend/cuda/launch.hpp.
//
// THIS KERNEL HAS NEVER RUN ON A DEVICE: compiled with warnings as errors and checked for spills only.
//
// A first, simple backward (correct before fast; FlashAttention-2's tiled backward with dK, dV in registers is the
// remaining work): Δ = rowsum(dO ⊙ O) per row, then one block of 128 threads per (batch, head, query row): q_i and
// dO_i in shared memory, the keys (memory keys first) spread over the threads; per key j: P = e^{S − lse} with S
// modified as in the forward (tiles::modify_score: bias, then the masks), dropout's factor, dP = dO·V_j,
// dS = P (keep·dP − Δ); dV_j += keep·P dO_i and dK_j += scale dS q_i by atomic adds (rows of one key from many
// queries), dQ_i += scale dS K_j into shared memory by shared atomics, written once; the bias table's gradient by
// atomic adds. Query head h reads kv head h mod kv_heads, as the forward.
#include <cuda_runtime.h>

#include "attention_tiles.cuh"
#include "device.hpp"
#include "device_math.cuh"
#include "xtr/backend/cuda/launch.hpp"
#include "xtr/backend/cuda/tiles.hpp"

namespace xtr::cuda {
namespace {

namespace tl = xtr::cuda::tiles;

constexpr int kBackwardThreads = 128;
constexpr int kMaxDimHead = 128;

__global__ void delta_kernel(const ops::AttentionProblem<float> p, ops::HeadsView<const float> o,
                             ops::HeadsView<const float> dout, float* delta) {
  const std::int64_t rows = p.batch * p.heads * p.q_len;
  for (std::int64_t r = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; r < rows;
       r += std::int64_t(gridDim.x) * blockDim.x) {
    const std::int64_t b = r / (p.heads * p.q_len), h = (r / p.q_len) % p.heads, i = r % p.q_len;
    const float* a = tl::row_of(dout, b, i, h, p.dim_head);
    const float* c = tl::row_of(o, b, i, h, p.dim_head);
    float sum = 0;
    for (std::int64_t d = 0; d < p.dim_head; ++d) sum += a[d] * c[d];
    delta[r] = sum;
  }
}

__global__ void __launch_bounds__(kBackwardThreads)
    attention_backward_kernel(const ops::AttentionProblem<float> p, ops::HeadsView<const float> q,
                              ops::HeadsView<const float> k, ops::HeadsView<const float> v, const float* lse,
                              const float* delta, ops::HeadsView<const float> dout, ops::HeadsView<float> dq,
                              ops::HeadsView<float> dk, ops::HeadsView<float> dv,
                              const ops::AttentionExtraGradients<float> extra) {
  __shared__ float q_s[kMaxDimHead], go_s[kMaxDimHead], dq_s[kMaxDimHead];
  const std::int64_t i = blockIdx.x, h = blockIdx.y, b = blockIdx.z, g = h % p.kv_heads, dh = p.dim_head;
  const std::int64_t row = (b * p.heads + h) * p.q_len + i;
  if (tl::query_padded(p, b, i)) return;  // no gradient (the same for the whole block)
  for (std::int64_t d = threadIdx.x; d < dh; d += blockDim.x) {
    q_s[d] = tl::row_of(q, b, i, h, dh)[d];
    go_s[d] = tl::row_of(dout, b, i, h, dh)[d];
    dq_s[d] = 0.0f;
  }
  __syncthreads();
  const float row_lse = lse[row], row_delta = delta[row];
  const std::int64_t mem_ld = p.mem_ld ? p.mem_ld : p.kv_heads * dh;  // AttentionProblem::memory_ld(), host-only
  const ops::HeadsView<const float> mem_k{p.mem_k, 0, mem_ld}, mem_v{p.mem_v, 0, mem_ld};
  const ops::HeadsView<float> dmem_k{extra.mem_k, 0, mem_ld}, dmem_v{extra.mem_v, 0, mem_ld};
  const std::int64_t keys = p.mem_len + p.k_len;
  for (std::int64_t column = threadIdx.x; column < keys; column += blockDim.x) {
    const bool regular = column >= p.mem_len;
    const std::int64_t j = regular ? column - p.mem_len : column;
    if (regular && !tl::visible(p, b, i, j)) continue;
    const float* kj = regular ? tl::row_of(k, b, j, g, dh) : tl::row_of(mem_k, 0, j, g, dh);
    const float* vj = regular ? tl::row_of(v, b, j, g, dh) : tl::row_of(mem_v, 0, j, g, dh);
    float s = 0, dot_v = 0;
    for (std::int64_t d = 0; d < dh; ++d) {
      s += q_s[d] * kj[d];
      dot_v += go_s[d] * vj[d];
    }
    s *= p.scale;
    if (regular) s = tl::modify_score(p, tl::TileKind::visible, b, h, i, j, s);  // the mask was checked above
    const float pc = tl::probability_from_lse(s, row_lse);
    if (pc == 0.0f) continue;
    const float keep = tl::dropout_factor(p, b, h, i, column);
    const float ds = tl::score_gradient(pc, keep * dot_v, row_delta);
    float* dvj = regular ? (dv.data ? tl::row_of(dv, b, j, g, dh) : nullptr)
                         : (dmem_v.data ? tl::row_of(dmem_v, 0, j, g, dh) : nullptr);
    float* dkj = regular ? (dk.data ? tl::row_of(dk, b, j, g, dh) : nullptr)
                         : (dmem_k.data ? tl::row_of(dmem_k, 0, j, g, dh) : nullptr);
    for (std::int64_t d = 0; d < dh; ++d) {
      if (dvj) atomicAdd(dvj + d, pc * keep * go_s[d]);
      if (dkj) atomicAdd(dkj + d, p.scale * ds * q_s[d]);
      atomicAdd(dq_s + d, p.scale * ds * kj[d]);
    }
    if (regular && p.bias && extra.bias)
      atomicAdd(extra.bias + h * p.bias_stride + p.bias_zero + j - i - p.q_offset, ds);
  }
  __syncthreads();
  float* dqi = tl::row_of(dq, b, i, h, dh);
  for (std::int64_t d = threadIdx.x; d < dh; d += blockDim.x) dqi[d] += dq_s[d];
}

/// The problem with its masks where the device reads them: the layers may pass host memory (a caller's context mask
/// kept by a decoding cache), copied to staging slots 2 and 3.
ops::AttentionProblem<float> with_device_masks(ops::AttentionProblem<float> p) {
  p.key_mask = device_readable(p.key_mask, std::size_t(p.batch * p.key_mask_stride), 2);
  p.query_mask = device_readable(p.query_mask, std::size_t(p.batch * p.query_mask_stride), 3);
  return p;
}

}  // namespace

void attention(const ops::AttentionProblem<float>& p, ops::HeadsView<const float> q, ops::HeadsView<const float> k,
               ops::HeadsView<const float> v, ops::HeadsView<float> o, float* lse) {
  attention_forward(with_device_masks(p), q, k, v, o, lse, nullptr);
}

Index attention_backward_scratch(const ops::AttentionProblem<float>& p) { return p.batch * p.heads * p.q_len; }

void attention_backward(const ops::AttentionProblem<float>& problem, ops::HeadsView<const float> q,
                        ops::HeadsView<const float> k, ops::HeadsView<const float> v, ops::HeadsView<const float> o,
                        const float* lse, ops::HeadsView<const float> dout, ops::HeadsView<float> dq,
                        ops::HeadsView<float> dk, ops::HeadsView<float> dv,
                        const ops::AttentionExtraGradients<float>& extra, float* scratch) {
  const ops::AttentionProblem<float> p = with_device_masks(problem);
  require(p.dim_head >= 1 && p.dim_head <= kMaxDimHead, "the CUDA attention backward takes dim_head 1 to ",
          kMaxDimHead, ", got ", p.dim_head);
  require(p.kv_heads >= 1 && p.heads % p.kv_heads == 0, "the CUDA attention backward: kv_heads ", p.kv_heads,
          " must divide heads ", p.heads);
  require(p.q_len <= 0x7fffffff && p.heads <= 65535 && p.batch <= 65535, "the CUDA attention backward: a grid of (",
          p.q_len, ", ", p.heads, ", ", p.batch, ") exceeds CUDA's limits (2^31 - 1, 65535, 65535)");
  require(lse != nullptr && scratch != nullptr, "the CUDA attention backward needs the forward's lse and scratch");
  if (p.batch * p.heads * p.q_len == 0) return;
  const std::int64_t rows = p.batch * p.heads * p.q_len;
  delta_kernel<<<unsigned(std::min<std::int64_t>((rows + 255) / 256, 65535)), 256>>>(p, o, dout, scratch);
  device::launched("attention_backward (delta)");
  const dim3 grid(unsigned(p.q_len), unsigned(p.heads), unsigned(p.batch));
  attention_backward_kernel<<<grid, kBackwardThreads>>>(p, q, k, v, lse, scratch, dout, dq, dk, dv, extra);
  device::launched("attention_backward");
}

}  // namespace xtr::cuda
