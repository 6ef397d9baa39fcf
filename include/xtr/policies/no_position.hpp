#pragma once
// NoPosition: x_t = token_emb[x_t]; a causal decoder still infers order from its mask.
// x-transformers: TransformerWrapper(use_abs_pos_emb=False) without rotary.
#include "xtr/policies/concepts.hpp"

namespace xtr {
struct NoPosition {
  using axis = axis::position;
  static constexpr std::string_view name = "NoPosition";
};
}  // namespace xtr
