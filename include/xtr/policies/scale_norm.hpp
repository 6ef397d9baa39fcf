#pragma once
// ScaleNorm: y = x / max(‖x‖₂, 1e-12) · sqrt(dim) · (1 + g), one scalar gain g (shape (1,)) stored as gain − 1.
// x-transformers: Decoder(use_scalenorm=True); parameter `...g` of shape (1,) (the eps clamps the L2 norm, as
// F.normalize does).
#include "xtr/policies/concepts.hpp"

namespace xtr {
struct ScaleNorm {
  using axis = axis::norm;
  static constexpr std::string_view name = "ScaleNorm";
  static constexpr std::string_view gain_name = "g";
  static constexpr double eps = 1e-12;
  static constexpr bool root_dim = true;  // r = sqrt(dim) / max(‖x‖, eps) unless subtracts_mean
  static constexpr bool subtracts_mean = false;
  static constexpr NormGain gain = NormGain::scalar;
};
}  // namespace xtr
