#pragma once
// Feed-forward, inner width F = mult · dim (mult 4), with biases:
//   GELU:   y = W₂ gelu(W₁x + b₁) + b₂,                 gelu(a) = a · Φ(a) (exact erf form)
//   GEGLU:  y = W₂ (u ⊙ gelu(g)) + b₂,  [u; g] = W₁x + b₁ (W₁ is 2F × dim, first half u, second half g)
//   SwiGLU: y = W₂ (u ⊙ silu(g)) + b₂,  silu(g) = g · σ(g)
// x-transformers: FeedForward(mult=4) default, ff_glu=True, ff_glu=True + ff_swish=True.
#include "xtr/policies/concepts.hpp"

namespace xtr {

enum class Activation { gelu, silu };

struct GELU {
  using axis = axis::feedforward;
  static constexpr std::string_view name = "GELU";
  static constexpr bool gated = false;
  static constexpr Activation activation = Activation::gelu;
};
struct GEGLU {
  using axis = axis::feedforward;
  static constexpr std::string_view name = "GEGLU";
  static constexpr bool gated = true;
  static constexpr Activation activation = Activation::gelu;
};
struct SwiGLU {
  using axis = axis::feedforward;
  static constexpr std::string_view name = "SwiGLU";
  static constexpr bool gated = true;
  static constexpr Activation activation = Activation::silu;
};

}  // namespace xtr
