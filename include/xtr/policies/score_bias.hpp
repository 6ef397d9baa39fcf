#pragma once
// Score biases: what is added to the attention scores s = q·k · scale before the mask and softmax. Each one is a
// function of the head and the relative position d = j − i only (positions right-aligned when decoding), computed
// once per forward into a table (heads, positions), so the attention kernel's inner loop is the same for all of them:
// add the table. Memory keys (attn_num_mem_kv) get no bias.
//   NoScoreBias:          nothing (the default).
//   ALiBi:                b(h, d) = −|d| · m_h for the first num_heads heads (0 for the rest), m_h the geometric
//                         slopes of x-transformers' AlibiPositionalBias for num_heads heads (2^(−8(h+1)/n) when n is a
//                         power of two, interleaved from the next power of two otherwise). No parameters.
//                         x-transformers: alibi_pos_bias=True, alibi_num_heads (keeps the absolute position embedding).
//   RelativePositionBias: b(h, d) = W[bucket(−d), h] · sqrt(dim_head), T5's buckets of the distance n = max(−d, 0)
//                         (causal): n < B/2 exact, else B/2 + ⌊log(n / (B/2)) / log(max_distance / (B/2)) · (B − B/2)⌋,
//                         at most B − 1 (bidirectional: half the buckets per sign). W (B, heads) ~ N(0, 1) at
//                         `attn_layers.rel_pos.relative_attention_bias.weight`.
//                         x-transformers: rel_pos_bias=True, rel_pos_num_buckets, rel_pos_max_distance (removes the
//                         absolute position embedding).
//   DynamicPositionBias:  b(h, d) = MLP(−d)_h: Linear(1, D/4) → [LayerNorm] → SiLU → (Linear(D/4, D/4) →
//                         [LayerNorm] → SiLU) × (depth − 1) → Linear(D/4, heads), on the float distances (or
//                         sign · log(|·| + 1) with log_distance), at `attn_layers.rel_pos.mlp.*`.
//                         x-transformers: dynamic_pos_bias=True, dynamic_pos_bias_mlp_depth, _log_distance, _norm.
#include <cmath>
#include <vector>

#include "xtr/core/error.hpp"
#include "xtr/core/fields.hpp"
#include "xtr/policies/concepts.hpp"

namespace xtr {

struct NoScoreBias {
  using axis = axis::score_bias;
  static constexpr std::string_view name = "NoScoreBias";
  static constexpr bool has_table = false;
  static constexpr bool with_rotary = true;
  static constexpr auto fields() { return std::tuple{}; }
};

struct ALiBi {
  using axis = axis::score_bias;
  static constexpr std::string_view name = "ALiBi";
  static constexpr bool has_table = true;
  static constexpr bool with_rotary = true;  // x-transformers allows ALiBi beside custom (rotary) positions

  std::int64_t num_heads = 0;  // alibi_num_heads: heads with a bias, the first ones; 0 = all

  static constexpr auto fields() {
    return std::tuple{field("num_heads", "alibi_num_heads", &ALiBi::num_heads, rules::non_negative,
                            "heads with a bias (the first ones); 0 = every head")};
  }
  /// What the stack's configuration (a LayersConfig) decides beyond each field's rule.
  template <class Layers>
  void check(const Layers& layers) const {
    require(num_heads <= layers.heads, "layers.alibi.num_heads ", num_heads, " > heads ", layers.heads);
  }
  /// x-transformers' slopes for n heads.
  static std::vector<double> slopes(std::int64_t n) {
    auto power_of_two = [](std::int64_t k) {
      std::vector<double> s;
      const double start = std::pow(2.0, -std::pow(2.0, -(std::log2(double(k)) - 3)));
      for (std::int64_t i = 0; i < k; ++i) s.push_back(start * std::pow(start, double(i)));
      return s;
    };
    if (std::log2(double(n)) == std::floor(std::log2(double(n)))) return power_of_two(n);
    const std::int64_t closest = std::int64_t(1) << std::int64_t(std::floor(std::log2(double(n))));
    std::vector<double> s = power_of_two(closest);
    const std::vector<double> more = power_of_two(2 * closest);
    for (std::int64_t i = 0; i < n - closest; ++i) s.push_back(more[std::size_t(2 * i)]);
    return s;
  }
};

struct RelativePositionBias {
  using axis = axis::score_bias;
  static constexpr std::string_view name = "RelativePositionBias";
  static constexpr bool has_table = true;
  static constexpr bool with_rotary = false;  // x-transformers refuses it beside custom (rotary) positions

  std::int64_t num_buckets = 32;    // rel_pos_num_buckets
  std::int64_t max_distance = 128;  // rel_pos_max_distance

  static constexpr auto fields() {
    return std::tuple{
        field("num_buckets", "rel_pos_num_buckets", &RelativePositionBias::num_buckets, rules::positive,
              "T5 buckets of the relative distance"),
        field("max_distance", "rel_pos_max_distance", &RelativePositionBias::max_distance, rules::positive,
              "distances from here on share the last bucket")};
  }
  template <class Layers>
  void check(const Layers&) const {
    require(num_buckets <= max_distance, "layers.rel_pos_bias.num_buckets ", num_buckets,
            " must be <= max_distance ", max_distance);
  }
  /// T5's bucket of distance n = query − key (causal: future keys get bucket 0; bidirectional: half the buckets per
  /// sign, the upper half for keys after the query).
  [[nodiscard]] std::int64_t bucket(std::int64_t n, bool causal) const {
    std::int64_t buckets = num_buckets, offset = 0;
    if (!causal) {
      buckets /= 2;
      if (n < 0) offset = buckets;
      n = n < 0 ? -n : n;
    } else {
      n = n > 0 ? n : 0;
    }
    const std::int64_t exact = buckets / 2;
    if (n < exact) return offset + n;
    const float ratio = float(n) / float(exact);
    const double scaled = double(std::log(ratio)) / std::log(double(max_distance) / double(exact)) * double(buckets - exact);
    const std::int64_t large = std::min<std::int64_t>(exact + std::int64_t(float(scaled)), buckets - 1);
    return offset + large;
  }
};

struct DynamicPositionBias {
  using axis = axis::score_bias;
  static constexpr std::string_view name = "DynamicPositionBias";
  static constexpr bool has_table = true;
  static constexpr bool with_rotary = false;  // x-transformers refuses it beside custom (rotary) positions

  std::int64_t mlp_depth = 2;  // dynamic_pos_bias_mlp_depth
  bool log_distance = false;   // dynamic_pos_bias_log_distance
  bool norm = false;           // dynamic_pos_bias_norm

  static constexpr auto fields() {
    return std::tuple{
        field("mlp_depth", "dynamic_pos_bias_mlp_depth", &DynamicPositionBias::mlp_depth, rules::positive,
              "Linear layers before the output layer"),
        field("log_distance", "dynamic_pos_bias_log_distance", &DynamicPositionBias::log_distance, rules::any<bool>,
              "feed sign(d) · log(|d| + 1) instead of d"),
        field("norm", "dynamic_pos_bias_norm", &DynamicPositionBias::norm, rules::any<bool>,
              "a LayerNorm after each hidden Linear")};
  }
};

}  // namespace xtr
