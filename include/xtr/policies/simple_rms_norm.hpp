#pragma once
// SimpleRMSNorm: y = x / max(‖x‖₂, 1e-12) · sqrt(dim); no parameters (RMSNorm with the gain fixed at 1).
// x-transformers: Decoder(use_simple_rmsnorm=True) (every norm of the stack, the final one included, loses its gain).
#include "xtr/policies/concepts.hpp"

namespace xtr {
struct SimpleRMSNorm {
  using axis = axis::norm;
  static constexpr std::string_view name = "SimpleRMSNorm";
  static constexpr std::string_view gain_name = "";
  static constexpr double eps = 1e-12;
  static constexpr bool root_dim = true;  // r = sqrt(dim) / max(‖x‖, eps) unless subtracts_mean
  static constexpr bool subtracts_mean = false;
  static constexpr NormGain gain = NormGain::none;
};
}  // namespace xtr
