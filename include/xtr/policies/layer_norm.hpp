#pragma once
// LayerNorm (bias-less): y = (x − mean(x)) / sqrt(var(x) + 1e-5) · (1 + γ), γ stored as gain − 1 (init 0).
// x-transformers: the default norm; `...gamma` with norm_add_unit_offset=True (since 1.31.3).
#include "xtr/policies/concepts.hpp"

namespace xtr {
struct LayerNorm {
  using axis = axis::norm;
  static constexpr std::string_view name = "LayerNorm";
  static constexpr std::string_view gain_name = "gamma";
  static constexpr double eps = 1e-5;            // added to the variance
  static constexpr bool root_dim = true;  // r = sqrt(dim) / max(‖x‖, eps) unless subtracts_mean
  static constexpr bool subtracts_mean = true;   // r = 1 / sqrt(var + eps)
  static constexpr NormGain gain = NormGain::channel;
};
}  // namespace xtr
