#pragma once
// CrossAttend: each layer adds a cross-attention sublayer after its self-attention,
//   x += Wₒ softmax(q kᵀ / sqrt(dim_head) + context_mask) v,  q = W_q norm(x),  [k | v] = [W_k; W_v] context,
// over a context (batch, context_length, dim_context) given at run time (an encoder's output, say), without position
// encoding on either side (as x-transformers). Heads, dim_head and kv_heads are the stack's.
// x-transformers: Decoder(cross_attend=True, cross_attn_dim_context=...).
#include "xtr/policies/concepts.hpp"

namespace xtr {
struct CrossAttend {
  using axis = axis::cross_attention;
  static constexpr std::string_view name = "CrossAttend";
};
}  // namespace xtr
