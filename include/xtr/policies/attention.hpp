#pragma once
// MultiHeadAttention: per head h, o_h = softmax(q_h k_gᵀ / sqrt(dim_head) + mask) v_g with g = h mod kv_heads
// (grouped-query when kv_heads < heads); q, k, v, out projections without bias; dropout on the probabilities.
// Masks: causal (Decoder), key padding (both); the branch adds 0 at padded query positions (as x-transformers).
// x-transformers: Attention(dim_head=64, heads=8, kv_heads=None, dropout=0), non-flash path.
#include "xtr/policies/concepts.hpp"

namespace xtr {
struct MultiHeadAttention {
  using axis = axis::attention;
  static constexpr std::string_view name = "MultiHeadAttention";
};
}  // namespace xtr
