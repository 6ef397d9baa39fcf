// fp32 flash attention from the tile algorithms of xtr/backend/cuda/tiles.hpp.
//
// THESE KERNELS HAVE NEVER RUN ON A DEVICE. They compile with nvcc for sm_90 with warnings as errors and ptxas reports
// no spills (tests/cuda/check_spills.sh); the tile functions they call are tested on the CPU against the reference
// backend (tests/unit/test_cuda_tiles.cpp), where host drivers compose them in this file's order. The comparison of
// these kernels with the CPU (kernels/cuda_tests.cpp) runs only on a machine with a GPU.
//
// Forward, one block of 128 threads per (batch · head, query tile of 32 rows); thread t owns query row r = t / 4 of
// the tile and, with the other three threads of its row (lanes c = t mod 4, adjacent in the warp), the key columns
// c, c + 4, … of each 32-key tile and the output channels c, c + 4, … of the row:
//   Q tile → shared once; per key tile up to key_end() (tiles::classify: masked tiles skipped, masks only in partial
//   ones): K → shared, S = scale · Q Kᵀ + bias (−∞ where masked), row max over the 4 lanes (shuffles), rescale(),
//   P = probability(), row sum, l += Σ P, dropout on P; V → the same shared buffer, o = α o + P V; finally finish().
// Split-KV decoding, one block of 128 threads per (query row, split): the split's keys in chunks of 128 (one key per
// thread), block-wide max and sum, o (thread d < dim_head owns channel d) += P V; (m, l, o) of each split to the
// workspace; a combine kernel (one block per row, one thread per channel) merges the splits (combine_splits()).
#include "attention_tiles.cuh"

#include "xtr/backend/cuda/tiles.hpp"
#include "xtr/core/error.hpp"

namespace xtr::cuda {
namespace {

namespace tl = xtr::cuda::tiles;

constexpr int forward_threads = 128;
constexpr int tile_q = 32, tile_k = 32;
constexpr int lanes_per_row = forward_threads / tile_q;  // 4
static_assert(lanes_per_row == 4 && tile_k % lanes_per_row == 0, "xtr: the forward kernel's lane layout");

constexpr int decode_threads = 128;

/// Max and sum over the 4 lanes of a row (adjacent lanes of one warp).
__device__ inline float row_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ inline float row_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

template <int D>
__global__ void __launch_bounds__(forward_threads)
    attention_forward_kernel(const ops::AttentionProblem<float> p, ops::HeadsView<const float> q,
                             ops::HeadsView<const float> k, ops::HeadsView<const float> v, ops::HeadsView<float> o,
                             float* __restrict__ lse) {
  constexpr int ld = D + 1;  // padded rows: the 8 query rows of a warp fall in different banks
  constexpr int per_lane = D / lanes_per_row, keys_per_lane = tile_k / lanes_per_row;
  __shared__ float q_s[tile_q * ld];
  __shared__ float kv_s[tile_k * ld];  // K, then V, of the current key tile
  __shared__ float p_s[tile_q * (tile_k + 1)];

  const std::int64_t bh = blockIdx.y, b = bh / p.heads, h = bh % p.heads, g = h % p.kv_heads;
  const std::int64_t i0 = std::int64_t(blockIdx.x) * tile_q;
  const int rows = int(p.q_len - i0 < tile_q ? p.q_len - i0 : tile_q);
  const int r = int(threadIdx.x) / lanes_per_row, lane = int(threadIdx.x) % lanes_per_row;
  const bool live = r < rows;

  for (int e = int(threadIdx.x); e < tile_q * D; e += forward_threads) {
    const int rr = e / D, d = e % D;
    q_s[rr * ld + d] = rr < rows ? tl::row_of(q, b, i0 + rr, h, D)[d] : 0.0f;
  }
  tl::RowSoftmax<float> state;
  float acc[per_lane];
#pragma unroll
  for (int u = 0; u < per_lane; ++u) acc[u] = 0.0f;

  const std::int64_t j_end = tl::key_end(p, i0, rows);
  for (std::int64_t j0 = 0; j0 < j_end; j0 += tile_k) {
    const int cols = int(p.k_len - j0 < tile_k ? p.k_len - j0 : tile_k);
    const tl::TileKind kind = tl::classify(p, b, i0, rows, j0, cols);  // the same for every thread of the block
    if (kind == tl::TileKind::masked) continue;
    __syncthreads();  // the previous tile's V and P are read
    for (int e = int(threadIdx.x); e < tile_k * D; e += forward_threads) {
      const int c = e / D, d = e % D;
      kv_s[c * ld + d] = c < cols ? tl::row_of(k, b, j0 + c, g, D)[d] : 0.0f;
    }
    __syncthreads();
    float s[keys_per_lane];
    float tile_max = -tl::infinity<float>();
#pragma unroll
    for (int t = 0; t < keys_per_lane; ++t) {
      const int c = lane + t * lanes_per_row;
      float x = -tl::infinity<float>();
      if (live && c < cols) {
        float dot = 0.0f;
#pragma unroll 8
        for (int d = 0; d < D; ++d) dot += q_s[r * ld + d] * kv_s[c * ld + d];
        x = tl::modify_score(p, kind, b, h, i0 + r, j0 + c, p.scale * dot);
      }
      s[t] = x;
      tile_max = fmaxf(tile_max, x);
    }
    const float alpha = tl::rescale(state, row_max(tile_max));
    float sum = 0.0f;
#pragma unroll
    for (int t = 0; t < keys_per_lane; ++t) sum += s[t] = tl::probability(state, s[t]);
    state.l += row_sum(sum);
    __syncthreads();  // K is read: V goes into the same buffer
#pragma unroll
    for (int t = 0; t < keys_per_lane; ++t) {
      const int c = lane + t * lanes_per_row;
      const float drop = p.dropout > 0 && live && c < cols ? tl::dropout_factor(p, b, h, i0 + r, j0 + c) : 1.0f;
      p_s[r * (tile_k + 1) + c] = s[t] * drop;
    }
    for (int e = int(threadIdx.x); e < tile_k * D; e += forward_threads) {
      const int c = e / D, d = e % D;
      kv_s[c * ld + d] = c < cols ? tl::row_of(v, b, j0 + c, g, D)[d] : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int u = 0; u < per_lane; ++u) {
      const int d = lane + u * lanes_per_row;
      float x = acc[u] * alpha;
      for (int c = 0; c < cols; ++c) x += p_s[r * (tile_k + 1) + c] * kv_s[c * ld + d];
      acc[u] = x;
    }
  }
  if (!live) return;
  const bool padded = tl::query_padded(p, b, i0 + r);
  const float row_lse = padded ? tl::infinity<float>() : tl::finish(state, acc, per_lane);
  float* out = tl::row_of(o, b, i0 + r, h, D);
#pragma unroll
  for (int u = 0; u < per_lane; ++u) out[lane + u * lanes_per_row] = padded ? 0.0f : acc[u];
  if (lse && lane == 0) lse[(b * p.heads + h) * p.q_len + i0 + r] = row_lse;
}

/// Block-wide max and sum over decode_threads threads (every thread gets the result).
__device__ inline float block_reduce(float x, bool is_max, float* scratch) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    const float y = __shfl_xor_sync(0xffffffffu, x, offset);
    x = is_max ? fmaxf(x, y) : x + y;
  }
  const int warp = int(threadIdx.x) / 32;
  __syncthreads();  // scratch is free
  if (threadIdx.x % 32 == 0) scratch[warp] = x;
  __syncthreads();
  x = scratch[0];
#pragma unroll
  for (int w = 1; w < decode_threads / 32; ++w) x = is_max ? fmaxf(x, scratch[w]) : x + scratch[w];
  return x;
}

/// Workspace of the split-KV decoding: m (rows, splits), l (rows, splits), o (rows, splits, D).
struct SplitWorkspace {
  float* m;
  float* l;
  float* o;
};

template <int D>
__global__ void __launch_bounds__(decode_threads)
    attention_decode_kernel(const ops::AttentionProblem<float> p, ops::HeadsView<const float> q,
                            ops::HeadsView<const float> k, ops::HeadsView<const float> v, int splits,
                            SplitWorkspace work) {
  static_assert(D <= decode_threads, "xtr: the decoding kernel gives each channel one thread");
  __shared__ float q_s[D];
  __shared__ float p_s[decode_threads];
  __shared__ float scratch[decode_threads / 32];

  const int split = int(blockIdx.x);
  const std::int64_t row = blockIdx.y;  // (b, h, i)
  const std::int64_t i = row % p.q_len, bh = row / p.q_len, b = bh / p.heads, h = bh % p.heads, g = h % p.kv_heads;
  const int t = int(threadIdx.x);
  if (t < D) q_s[t] = tl::row_of(q, b, i, h, D)[t];
  __syncthreads();

  std::int64_t first = 0, end = 0;
  tl::split_range(p.k_len, splits, split, &first, &end);
  const std::int64_t reach = tl::key_end(p, i, 1);
  if (end > reach) end = reach;
  tl::RowSoftmax<float> state;
  float acc = 0.0f;  // channel t
  for (std::int64_t j0 = first; j0 < end; j0 += decode_threads) {
    const int cols = int(end - j0 < decode_threads ? end - j0 : decode_threads);
    const tl::TileKind kind = tl::classify(p, b, i, 1, j0, cols);
    if (kind == tl::TileKind::masked) continue;
    float s = -tl::infinity<float>();
    if (t < cols) {
      const float* key = tl::row_of(k, b, j0 + t, g, D);
      float dot = 0.0f;
#pragma unroll 8
      for (int d = 0; d < D; ++d) dot += q_s[d] * key[d];
      s = tl::modify_score(p, kind, b, h, i, j0 + t, p.scale * dot);
    }
    const float alpha = tl::rescale(state, block_reduce(s, true, scratch));
    const float prob = tl::probability(state, s);
    state.l += block_reduce(prob, false, scratch);
    p_s[t] = prob;
    __syncthreads();
    if (t < D) {
      float x = acc * alpha;
      for (int c = 0; c < cols; ++c) x += p_s[c] * tl::row_of(v, b, j0 + c, g, D)[t];
      acc = x;
    }
    __syncthreads();  // p_s is read
  }
  const std::int64_t slot = row * splits + split;
  if (t == 0) {
    work.m[slot] = state.m;
    work.l[slot] = state.l;
  }
  if (t < D) work.o[slot * D + t] = acc;
}

template <int D>
__global__ void __launch_bounds__(D)
    attention_combine_kernel(const ops::AttentionProblem<float> p, int splits, SplitWorkspace work,
                             ops::HeadsView<float> o, float* __restrict__ lse) {
  const std::int64_t row = blockIdx.x;
  const std::int64_t i = row % p.q_len, bh = row / p.q_len, b = bh / p.heads, h = bh % p.heads;
  const int d = int(threadIdx.x);
  const float* m = work.m + row * splits;
  const float* l = work.l + row * splits;
  const bool padded = tl::query_padded(p, b, i);
  tl::row_of(o, b, i, h, D)[d] =
      padded ? 0.0f : tl::combine_splits(m, l, work.o + row * splits * D + d, std::int64_t(D), splits);
  if (lse && d == 0) lse[(b * p.heads + h) * p.q_len + i] = padded ? tl::infinity<float>() : tl::combine_splits_lse(m, l, splits);
}

void check_problem(const char* what, const ops::AttentionProblem<float>& p, ops::HeadsView<const float> q,
                   ops::HeadsView<const float> k, ops::HeadsView<const float> v, ops::HeadsView<float> o) {
  require(p.dim_head == 32 || p.dim_head == 64 || p.dim_head == 128, what, ": head dim ", p.dim_head,
          " has no compiled kernel; the supported head dims are 32, 64 and 128");
  require(p.batch >= 1 && p.heads >= 1 && p.q_len >= 1 && p.k_len >= 1, what, ": batch ", p.batch, ", heads ",
          p.heads, ", q_len ", p.q_len, ", k_len ", p.k_len, " must all be >= 1");
  require(p.kv_heads >= 1 && p.heads % p.kv_heads == 0, what, ": kv_heads ", p.kv_heads, " must divide heads ",
          p.heads);
  require(p.mem_len == 0, what, ": memory keys (mem_len ", p.mem_len,
          ") have no CUDA kernel yet; run this model on the Cpu backend");
  require(q.data && k.data && v.data && o.data, what, ": null q, k, v or o");
  // A view's heads fit in its rows: side by side (head_stride 0) the row holds them all; with their own head stride
  // (the KV cache's (batch, heads, capacity, dim_head) layout) each head's rows are dim_head apart at least.
  const auto fits = [&](const auto& x, std::int64_t heads) {
    return x.head_stride == 0 ? x.row_stride >= heads * p.dim_head
                              : x.head_stride >= p.dim_head && x.row_stride >= p.dim_head;
  };
  require(fits(q, p.heads) && fits(o, p.heads) && fits(k, p.kv_heads) && fits(v, p.kv_heads), what,
          ": a row or head stride is shorter than its values (q ", q.row_stride, "/", q.head_stride, ", o ",
          o.row_stride, "/", o.head_stride, " for ", p.heads, " heads; k ", k.row_stride, "/", k.head_stride, ", v ",
          v.row_stride, "/", v.head_stride, " for ", p.kv_heads, " heads of ", p.dim_head, " values)");
  require(p.batch * p.heads <= 65535, what, ": batch · heads = ", p.batch * p.heads, " > 65535 (the grid's y limit)");
}

void check_launch(const char* what) {
  const cudaError_t status = cudaGetLastError();
  require(status == cudaSuccess, what, ": kernel launch failed: ", cudaGetErrorString(status));
}

}  // namespace

void attention_forward(const ops::AttentionProblem<float>& p, ops::HeadsView<const float> q,
                       ops::HeadsView<const float> k, ops::HeadsView<const float> v, ops::HeadsView<float> o,
                       float* lse, cudaStream_t stream) {
  check_problem("attention_forward", p, q, k, v, o);
  const dim3 grid{unsigned((p.q_len + tile_q - 1) / tile_q), unsigned(p.batch * p.heads)};
  switch (p.dim_head) {
    case 32: attention_forward_kernel<32><<<grid, forward_threads, 0, stream>>>(p, q, k, v, o, lse); break;
    case 64: attention_forward_kernel<64><<<grid, forward_threads, 0, stream>>>(p, q, k, v, o, lse); break;
    default: attention_forward_kernel<128><<<grid, forward_threads, 0, stream>>>(p, q, k, v, o, lse); break;
  }
  check_launch("attention_forward");
}

std::int64_t attention_decode_workspace(const ops::AttentionProblem<float>& p, int splits) {
  require(splits >= 1, "attention_decode_workspace: splits must be >= 1, got ", splits);
  return p.batch * p.heads * p.q_len * std::int64_t(splits) * (2 + p.dim_head);
}

void attention_decode(const ops::AttentionProblem<float>& p, ops::HeadsView<const float> q,
                      ops::HeadsView<const float> k, ops::HeadsView<const float> v, ops::HeadsView<float> o,
                      float* lse, int splits, float* workspace, cudaStream_t stream) {
  check_problem("attention_decode", p, q, k, v, o);
  require(splits >= 1 && splits <= 65535, "attention_decode: splits must be in [1, 65535], got ", splits);
  require(p.dropout == 0, "attention_decode: decoding takes no attention dropout, got p = ", p.dropout);
  require(workspace != nullptr, "attention_decode: null workspace (attention_decode_workspace(p, ", splits,
          ") floats)");
  const std::int64_t rows = p.batch * p.heads * p.q_len;
  require(rows <= 65535, "attention_decode: batch · heads · q_len = ", rows, " > 65535 (the grid's y limit)");
  const SplitWorkspace work{workspace, workspace + rows * splits, workspace + 2 * rows * splits};
  const dim3 grid{unsigned(splits), unsigned(rows)};
  switch (p.dim_head) {
    case 32:
      attention_decode_kernel<32><<<grid, decode_threads, 0, stream>>>(p, q, k, v, splits, work);
      attention_combine_kernel<32><<<unsigned(rows), 32, 0, stream>>>(p, splits, work, o, lse);
      break;
    case 64:
      attention_decode_kernel<64><<<grid, decode_threads, 0, stream>>>(p, q, k, v, splits, work);
      attention_combine_kernel<64><<<unsigned(rows), 64, 0, stream>>>(p, splits, work, o, lse);
      break;
    default:
      attention_decode_kernel<128><<<grid, decode_threads, 0, stream>>>(p, q, k, v, splits, work);
      attention_combine_kernel<128><<<unsigned(rows), 128, 0, stream>>>(p, splits, work, o, lse);
      break;
  }
  check_launch("attention_decode");
}

}  // namespace xtr::cuda
