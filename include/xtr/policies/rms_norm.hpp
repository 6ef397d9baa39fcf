#pragma once
// RMSNorm: y = x / max(‖x‖₂, 1e-12) · sqrt(dim) · (1 + g), g stored as gain − 1 (init 0).
// x-transformers: Decoder(use_rmsnorm=True); parameter `...g`.
#include "xtr/policies/concepts.hpp"

namespace xtr {
struct RMSNorm {
  using axis = axis::norm;
  static constexpr std::string_view name = "RMSNorm";
  static constexpr std::string_view gain_name = "g";
  static constexpr double eps = 1e-12;  // clamps the norm, as F.normalize does
  static constexpr bool root_dim = true;  // r = sqrt(dim) / max(‖x‖, eps) unless subtracts_mean
  static constexpr bool subtracts_mean = false;  // r = sqrt(dim) / max(‖x‖, eps)
  static constexpr NormGain gain = NormGain::channel;
};
}  // namespace xtr
