#pragma once
// L2Norm: y = x / max(‖x‖₂, 1e-12) [⊙ g], g an optional per-channel gain stored as is. Not a stack's norm: the
// normalisation of attn_qk_norm (per head or channel group of q and k, with attn_qk_norm_dim_scale's gains) and of
// l2norm_embed (token and position embeddings), as x-transformers' l2norm (F.normalize).
#include "xtr/policies/concepts.hpp"

namespace xtr {
struct L2Norm {
  using axis = axis::norm;
  static constexpr std::string_view name = "L2Norm";
  static constexpr std::string_view gain_name = "";
  static constexpr double eps = 1e-12;
  static constexpr bool subtracts_mean = false;
  static constexpr bool root_dim = false;  // r = 1 / max(‖x‖, eps), not sqrt(dim) / max(‖x‖, eps)
  static constexpr NormGain gain = NormGain::channel;  // optional: a null gain is 1
};
}  // namespace xtr
