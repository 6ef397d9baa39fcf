#pragma once
// Rotary: on the first r = rotary_dim (default dim_head/2) channels of each q and k head, interleaved pairs
// (x_{2i}, x_{2i+1}) rotate by angle t·θ^(-2i/r), θ = 10000:  x'_{2i} = x_{2i} cos − x_{2i+1} sin,
// x'_{2i+1} = x_{2i+1} cos + x_{2i} sin; the other channels pass through. Scores then depend on relative position only.
// x-transformers: Decoder(rotary_pos_emb=True, rotary_emb_dim=None); θ is fixed there (LayersConfig::rotary_theta).
#include "xtr/policies/concepts.hpp"

namespace xtr {
struct Rotary {
  using axis = axis::position;
  static constexpr std::string_view name = "Rotary";
};
}  // namespace xtr
