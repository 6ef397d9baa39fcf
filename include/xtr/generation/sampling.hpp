#pragma once
// Sampling the next token from logits, as x-transformers' AutoregressiveWrapper.generate does:
//   greedy when temperature = 0, else filter the logits, p = softmax(filtered / temperature), draw from p.
// Filters (applied in this order, each only when set; with none set, top-k keeps ceil(0.1 · num_tokens) as
// x-transformers' default filter_logits_fn=top_k does):
//   top_k: keep the k largest logits;  top_p: keep the smallest prefix of tokens by descending probability whose
//   mass before the last kept token is ≤ p;  min_p: keep tokens with probability ≥ min_p · max probability.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <optional>
#include <functional>
#include <span>
#include <vector>

#include "xtr/core/error.hpp"
#include "xtr/core/rng.hpp"
#include "xtr/core/tensor.hpp"
#include "xtr/generation/contrastive.hpp"

namespace xtr {

struct Sampling {
  double temperature = 1.0;                // 0 = greedy (argmax)
  Index top_k = -1;                        // -1: x-transformers' default (ceil(0.1·V) unless top_p/min_p is set); 0: off
  double top_p = 0;                        // nucleus threshold in (0, 1]; 0: off
  double min_p = 0;                        // in (0, 1]; 0: off
  std::optional<std::int32_t> eos_token;  // stop a sequence here; later positions become pad_value
  bool cache_kv = true;                    // KV cache (false: recompute the window every step)
  bool bf16_weights = false;               // decode from a bfloat16 copy of the weights (KV cache only): half the
                                           // bytes per token; logits differ from float by the rounding
  std::optional<std::uint64_t> seed;       // fixed draws; unset: a fresh stream per generate() call
  std::vector<Index> prompt_lens;          // ragged prompts: row b's prompt is its first prompt_lens[b] tokens
                                           // (x-transformers' prompt_lens); empty: every row is all prompt
  // contrastive decoding: the expert's logits contrasted with each amateur's in turn (x-transformers' amateur_model
  // and contrastive_decode_kwargs); the top-k / top-p / min-p filter is then off, as in x-transformers
  std::vector<Amateur> amateurs;
  // speculative decoding: the draft proposes draft_tokens tokens, the model verifies them in one forward; rejection
  // sampling keeps the model's own distribution (greedy: the same tokens as without a draft)
  std::optional<DecoderHandle> draft;
  Index draft_tokens = 4;
  // streaming: called with each row's new tokens as they are produced (in order; several at once when speculative
  // decoding accepts several); returning false stops that row there
  std::function<bool(Index row, std::span<const std::int32_t> tokens)> on_tokens;
  // a row stops once its new tokens end with one of these (the sequence is kept; later positions become pad_value)
  std::vector<std::vector<std::int32_t>> stop_sequences;
};

/// Draws tokens from rows of logits; scratch buffers are reused across calls.
class Sampler {
 public:
  /// Draws from stream (seed, "sample"); the two-argument form uses s.seed (0 when unset).
  Sampler(const Sampling& s, Index num_tokens) : Sampler(s, num_tokens, s.seed.value_or(0)) {}
  Sampler(const Sampling& s, Index num_tokens, std::uint64_t seed) : s_(s), rng_{seed, 0x73616D706C65} {
    require(s.temperature >= 0, "temperature must be >= 0, got ", s.temperature);
    require(s.top_k >= -1, "top_k must be >= 0 (or -1 for the default), got ", s.top_k);
    require(s.top_p >= 0 && s.top_p <= 1, "top_p must be in [0, 1], got ", s.top_p);
    require(s.min_p >= 0 && s.min_p <= 1, "min_p must be in [0, 1], got ", s.min_p);
    k_ = s.top_k;
    if (k_ == -1) k_ = (s.top_p > 0 || s.min_p > 0) ? 0 : Index(std::ceil(0.1 * double(num_tokens)));
    k_ = std::min(k_, num_tokens);
    z_.resize(std::size_t(num_tokens));
    order_.resize(std::size_t(num_tokens));
  }

  /// The token drawn from `logits` (num_tokens values); `draw` addresses the random number.
  template <class T>
  std::int32_t operator()(const T* logits, std::uint64_t draw) {
    const Index V = Index(z_.size());
    if (s_.temperature == 0) return std::int32_t(std::max_element(logits, logits + V) - logits);
    filter(logits);
    // p = softmax(z / temperature); inverse-CDF draw
    const double m = *std::max_element(z_.begin(), z_.end());
    double total = 0;
    for (auto& z : z_) total += (z = std::exp((z - m) / s_.temperature));
    const double u = rng_.open_uniform(draw) * total;
    double cumulative = 0;
    Index last_positive = 0;
    for (Index i = 0; i < V; ++i) {
      if (z_[i] <= 0) continue;
      last_positive = i;
      cumulative += z_[i];
      if (u < cumulative) return std::int32_t(i);
    }
    return std::int32_t(last_positive);
  }

  /// The logits after the filters (removed tokens at -inf), in a buffer valid until the next call.
  template <class T>
  const std::vector<double>& filter(const T* logits) {
    const Index V = Index(z_.size());
    for (Index i = 0; i < V; ++i) z_[i] = double(logits[i]);
    constexpr double neg_inf = -std::numeric_limits<double>::infinity();
    if (k_ > 0 && k_ < V) {
      std::iota(order_.begin(), order_.end(), 0);
      std::nth_element(order_.begin(), order_.begin() + (k_ - 1), order_.end(),
                       [&](std::int32_t a, std::int32_t b) { return z_[a] > z_[b]; });
      for (Index i = k_; i < V; ++i) z_[order_[i]] = neg_inf;
    }
    if (s_.top_p > 0) {
      std::iota(order_.begin(), order_.end(), 0);
      std::stable_sort(order_.begin(), order_.end(), [&](std::int32_t a, std::int32_t b) { return z_[a] > z_[b]; });
      const double m = z_[order_[0]];
      double total = 0;
      for (Index i = 0; i < V; ++i) total += std::exp(z_[i] - m);
      double cumulative = 0;
      for (Index i = 0; i < V; ++i) {
        const double before = cumulative;
        cumulative += std::exp(z_[order_[i]] - m) / total;
        if (i > 0 && before > s_.top_p) z_[order_[i]] = neg_inf;  // x-transformers: remove cum > p, shifted by one
      }
    }
    if (s_.min_p > 0) {
      const double m = *std::max_element(z_.begin(), z_.end());
      const double limit = std::log(s_.min_p);  // p_i < min_p · p_max  ⇔  z_i − m < log(min_p)
      for (auto& z : z_)
        if (z - m < limit) z = neg_inf;
    }
    return z_;
  }

  [[nodiscard]] const RandomStream& stream() const { return rng_; }

 private:
  Sampling s_;
  RandomStream rng_;
  Index k_ = 0;
  std::vector<double> z_;
  std::vector<std::int32_t> order_;
};

}  // namespace xtr
