#pragma once
// Feed-forward, inner width F = mult · dim (mult 4), with biases (ff_no_bias drops them, except a gated first
// projection's, as x-transformers):
//   GELU:        y = W₂ gelu(W₁x + b₁) + b₂,                 gelu(a) = a · Φ(a) (exact erf form)
//   GEGLU:       y = W₂ (u ⊙ gelu(g)) + b₂,  [u; g] = W₁x + b₁ (W₁ is 2F × dim, first half u, second half g)
//   SwiGLU:      y = W₂ (u ⊙ silu(g)) + b₂,  silu(g) = g · σ(g)
//   SiLU:        y = W₂ silu(W₁x + b₁) + b₂
//   ReLUSquared: y = W₂ relu(W₁x + b₁)² + b₂
// x-transformers: FeedForward(mult=4) default, ff_glu=True, ff_glu=True + ff_swish=True, ff_swish=True,
// ff_relu_squared=True.
#include "xtr/policies/activations.hpp"
#include "xtr/policies/concepts.hpp"

namespace xtr {

struct GELU {
  using axis = axis::feedforward;
  static constexpr std::string_view name = "GELU";
  static constexpr bool gated = false;
  using activation = act::Gelu;
};
struct GEGLU {
  using axis = axis::feedforward;
  static constexpr std::string_view name = "GEGLU";
  static constexpr bool gated = true;
  using activation = act::Gelu;
};
struct SwiGLU {
  using axis = axis::feedforward;
  static constexpr std::string_view name = "SwiGLU";
  static constexpr bool gated = true;
  using activation = act::Silu;
};
struct SiLU {
  using axis = axis::feedforward;
  static constexpr std::string_view name = "SiLU";
  static constexpr bool gated = false;
  using activation = act::Silu;
};
struct ReLUSquared {
  using axis = axis::feedforward;
  static constexpr std::string_view name = "ReLUSquared";
  static constexpr bool gated = false;
  using activation = act::ReluSquared;
};

}  // namespace xtr
