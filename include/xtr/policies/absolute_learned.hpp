#pragma once
// AbsoluteLearned: x_t = token_emb[x_t] + pos_emb[t] · dim^-0.5, pos_emb ~ N(0, 1), t < max_seq_len.
// x-transformers: the default of TransformerWrapper (`pos_emb.emb.weight`), off when rotary_pos_emb=True.
#include "xtr/policies/concepts.hpp"

namespace xtr {
struct AbsoluteLearned {
  using axis = axis::position;
  static constexpr std::string_view name = "AbsoluteLearned";
};
}  // namespace xtr
