#pragma once
// fp32 flash attention on the GPU from the tile algorithms of xtr/backend/cuda/tiles.hpp (the ones the CPU tests
// check against the reference backend): a forward kernel (one block per (batch · head, 32-query tile), key tiles
// through shared memory, online softmax) and split-KV decoding (flash-decoding: the keys of each query row cut into
// `splits` ranges, one block each, then a combine kernel). The same ops::AttentionProblem as the CPU backends:
// causal with q_offset, key padding mask, padded queries, relative score-bias table, GQA (query head h reads kv head
// h mod kv_heads), attention dropout in the forward. Memory keys (attn_num_mem_kv) are not implemented here yet.
// NEVER RUN ON A DEVICE so far: compiled and checked for spills only (see attention_tiles.cu).
// Host API: plain C++ callers include this header and link xtr_cuda_kernels. Every pointer, in the operands and in
// the problem (key_mask, query_mask, bias), is device memory.
#include <cstdint>

#include <cuda_runtime_api.h>

#include "xtr/backend/ops.hpp"

namespace xtr::cuda {

/// O (batch, q_len, heads · dim_head rows o.row_stride apart) and lse (batch, heads, q_len; may be null; +∞ for a row
/// with nothing visible or a padded query, whose O is 0) from q, k, v on `stream` (asynchronous). Throws xtr::Error
/// before any launch for a head dim without a kernel (compiled: 32, 64, 128), kv_heads not dividing heads, memory keys,
/// null operands.
void attention_forward(const ops::AttentionProblem<float>& p, ops::HeadsView<const float> q,
                       ops::HeadsView<const float> k, ops::HeadsView<const float> v, ops::HeadsView<float> o,
                       float* lse, cudaStream_t stream = nullptr);

/// Floats of device workspace attention_decode needs for `splits` splits: (m, l, o) per (row, split).
[[nodiscard]] std::int64_t attention_decode_workspace(const ops::AttentionProblem<float>& p, int splits);

/// The decoding forward (flash-decoding): like attention_forward without dropout, the keys of each query row split
/// into `splits` ranges processed by separate blocks, their partial softmax states combined by a second kernel.
/// `workspace` holds attention_decode_workspace(p, splits) floats. Throws as attention_forward, and for splits < 1,
/// dropout > 0 or a null workspace.
void attention_decode(const ops::AttentionProblem<float>& p, ops::HeadsView<const float> q,
                      ops::HeadsView<const float> k, ops::HeadsView<const float> v, ops::HeadsView<float> o,
                      float* lse, int splits, float* workspace, cudaStream_t stream = nullptr);

}  // namespace xtr::cuda
