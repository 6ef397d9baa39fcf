#pragma once
// Activation functions of the feed-forward (and of gates), as tags: the formula here, the vectorised evaluation in
// each backend (backend/cpu/activations.hpp, backend/reference/kernels.hpp).
//   Gelu:        gelu(a) = a Φ(a) = a/2 · (1 + erf(a/√2))         gelu'(a) = Φ(a) + a φ(a)      (torch's exact GELU)
//   Silu:        silu(a) = a σ(a)                                   silu'(a) = σ(a) (1 + a (1 − σ(a)))
//   ReluSquared: relu²(a) = max(a, 0)²                              relu²'(a) = 2 max(a, 0)
//   Sigmoid:     σ(a) = 1 / (1 + e^−a)                              σ'(a) = σ(a) (1 − σ(a))
#include <string_view>

namespace xtr::act {
struct Gelu {
  static constexpr std::string_view name = "gelu";
};
struct Silu {
  static constexpr std::string_view name = "silu";
};
struct ReluSquared {
  static constexpr std::string_view name = "relu_squared";
};
struct Sigmoid {
  static constexpr std::string_view name = "sigmoid";
};
}  // namespace xtr::act
