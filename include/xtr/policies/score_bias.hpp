#pragma once
// Score biases: what is added to the attention scores s = q·k · scale before the mask and softmax.
//   NoScoreBias: nothing (the default).
// Each other policy adds b(h, i, j) = table_h[j − i] (a function of the relative position only), computed once per
// forward from its parameters, so the attention kernel's inner loop is the same for all of them: add the table.
#include "xtr/policies/concepts.hpp"

namespace xtr {
struct NoScoreBias {
  using axis = axis::score_bias;
  static constexpr std::string_view name = "NoScoreBias";
  static constexpr bool has_table = false;
};
}  // namespace xtr
