#pragma once
// MultiHeadAttention: per head h, o_h = softmax(q_h k_gᵀ · scale + bias + mask) v_g with g = h mod kv_heads
// (grouped-query when kv_heads < heads); q, k, v, out projections without bias; dropout on the probabilities.
// Masks: causal (Decoder), key padding (both); the branch adds 0 at padded query positions (as x-transformers).
// Options (run-time: they add steps around the attention, its inner loop does not change):
//   qk_norm:       q, k ← l2norm per head (per group of dim_head / qk_norm_groups channels), scale = qk_norm_scale;
//                  with qk_norm_dim_scale, q, k also ⊙ learned per-channel scales (init dim_head^¼) and
//                  scale = dim_head^-½ (`qk_norm_q_scale` (heads, 1, dh), `qk_norm_k_scale` (kv_heads, 1, dh))
//   num_mem_kv:    learned keys and values `mem_k`, `mem_v` (kv_heads, M, dh) ~ N(0, 1) before the sequence's, seen by
//                  every query, unrotated, without bias (k-normed with qk_norm)
//   gate_values:   o ← o ⊙ σ(h W_gᵀ), `to_v_gate.weight` (H·dh, D), no bias, init 0
//   head_scale:    o_h ← o_h · s_h, `head_scale_params` (1, H, 1, 1), init 1
//   value_residual (later layers): v ← v₁ + μ (v − v₁), v₁ the first layer's values, μ = σ(h W_μᵀ + b_μ) per head
//                  (`to_value_residual_mix.0`, (H, D)) or 0.5 without learned_value_residual_mix
// x-transformers: Attention(dim_head=64, heads=8, kv_heads=None, dropout=0, qk_norm, qk_norm_scale, qk_norm_dim_scale,
// qk_norm_groups, num_mem_kv, gate_values, head_scale), AttentionLayers(add_value_residual,
// learned_value_residual_mix), non-flash path.
#include "xtr/core/fields.hpp"
#include "xtr/policies/concepts.hpp"

namespace xtr {
struct MultiHeadAttention {
  using axis = axis::attention;
  static constexpr std::string_view name = "MultiHeadAttention";

  bool qk_norm = false;                     // attn_qk_norm
  double qk_norm_scale = 10;                // attn_qk_norm_scale
  bool qk_norm_dim_scale = false;           // attn_qk_norm_dim_scale
  std::int64_t qk_norm_groups = 1;          // attn_qk_norm_groups
  std::int64_t num_mem_kv = 0;              // attn_num_mem_kv
  bool gate_values = false;                 // attn_gate_values
  bool head_scale = false;                  // attn_head_scale
  bool value_residual = false;              // add_value_residual
  bool learned_value_residual_mix = true;   // learned_value_residual_mix (with value_residual)

  static constexpr auto fields() {
    using A = MultiHeadAttention;
    return std::tuple{
        field("qk_norm", "attn_qk_norm", &A::qk_norm, rules::any<bool>, "l2-normalise q and k per head"),
        field("qk_norm_scale", "attn_qk_norm_scale", &A::qk_norm_scale, rules::positive_real,
              "the attention scale with qk_norm"),
        field("qk_norm_dim_scale", "attn_qk_norm_dim_scale", &A::qk_norm_dim_scale, rules::any<bool>,
              "learned per-channel q, k scales (scale dim_head^-1/2)"),
        field("qk_norm_groups", "attn_qk_norm_groups", &A::qk_norm_groups, rules::positive,
              "normalise each of this many channel groups of a head separately"),
        field("num_mem_kv", "attn_num_mem_kv", &A::num_mem_kv, rules::non_negative, "learned memory keys and values"),
        field("gate_values", "attn_gate_values", &A::gate_values, rules::any<bool>, "o ⊙ sigmoid(h W_g)"),
        field("head_scale", "attn_head_scale", &A::head_scale, rules::any<bool>, "a learned scale per head"),
        field("value_residual", "add_value_residual", &A::value_residual, rules::any<bool>,
              "mix the first layer's values into later layers'"),
        field("learned_value_residual_mix", "learned_value_residual_mix", &A::learned_value_residual_mix,
              rules::any<bool>, "value residual: a learned mix per token and head (else 0.5)")};
  }
};
}  // namespace xtr
