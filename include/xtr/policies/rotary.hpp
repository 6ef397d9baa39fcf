#pragma once
// Rotary: on the first r = rotary_dim (default dim_head/2) channels of each q and k head, interleaved pairs
// (x_{2i}, x_{2i+1}) rotate by angle a = t·θ^(-2i/r) / interpolation_factor:
//   x'_{2i} = x_{2i} cos a − x_{2i+1} sin a,  x'_{2i+1} = x_{2i+1} cos a + x_{2i} sin a;  the other channels pass through.
// θ = rotary_theta (10000) · base_rescale_factor^(r/(r − 2)). With xpos, q is also scaled by s_i^(t/xpos_scale_base)
// and k by its inverse, s_i = (2i + 0.4 r)/(1.4 r): scores then depend on relative position only, and decay with it.
// x-transformers: Decoder(rotary_pos_emb=True, rotary_emb_dim, rotary_xpos, rotary_xpos_scale_base,
// rotary_interpolation_factor, rotary_base_rescale_factor); θ itself is fixed there (LayersConfig::rotary_theta).
// xtr scales xpos around position 0 rather than around the sequence's middle (x-transformers' choice): the scores are
// the same, and cached keys never need re-scaling.
#include "xtr/core/fields.hpp"
#include "xtr/policies/concepts.hpp"

namespace xtr {
struct Rotary {
  using axis = axis::position;
  static constexpr std::string_view name = "Rotary";

  bool xpos = false;                  // rotary_xpos (causal stacks only)
  double xpos_scale_base = 512;       // rotary_xpos_scale_base
  double interpolation_factor = 1;    // rotary_interpolation_factor: positions divided by it (≥ 1)
  double base_rescale_factor = 1;     // rotary_base_rescale_factor: θ · factor^(r/(r − 2))

  static constexpr auto fields() {
    return std::tuple{
        field("xpos", "rotary_xpos", &Rotary::xpos, rules::any<bool>, "scale q and k by s^(±t/scale_base) (xpos)"),
        field("xpos_scale_base", "rotary_xpos_scale_base", &Rotary::xpos_scale_base, rules::positive_real,
              "xpos: positions per power of the scale"),
        field("interpolation_factor", "rotary_interpolation_factor", &Rotary::interpolation_factor,
              rules::at_least_one, "positions are divided by it (position interpolation)"),
        field("base_rescale_factor", "rotary_base_rescale_factor", &Rotary::base_rescale_factor,
              rules::positive_real, "θ becomes θ · factor^(r/(r − 2)) (NTK-aware rescaling)")};
  }
};
}  // namespace xtr
