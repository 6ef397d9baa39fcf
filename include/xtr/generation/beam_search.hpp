#pragma once
// Beam search as x-transformers' AutoregressiveWrapper.beam_search (2.31.10), and beyond it an end-of-sequence token:
//   each live hypothesis of a prompt proposes its top min(beams, num_tokens) next tokens, ranked by the logits (or,
//   stochastic, by filter(logits) / temperature + Gumbel noise); a candidate's score is its parent's plus
//   log_softmax(logits)[token] (the plain log-probability: no temperature); when a prompt has more candidates than
//   beams they are sorted by score (descending, stable) and the first `beams` are kept, else kept in proposal order.
//   With eos_token, a candidate ending in eos that ranks within the first `beams` leaves the beam as a finished
//   hypothesis (later tokens pad_value), ranked by score / (tokens generated)^length_penalty; the live beams are
//   refilled from the next candidates. A prompt is done when it holds `beams` finished hypotheses and no live one
//   ranks above the worst of them; the result ranks finished and live hypotheses together, best first (always: where
//   x-transformers keeps no more than `beams` candidates unsorted, its beam 0 need not be its best).
// BeamSearcher holds that bookkeeping apart from any model: the wrappers feed it each step's logits and move their
// KV-cache rows as it says (KVCache::reorder_rows).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <optional>
#include <vector>

#include "xtr/core/error.hpp"
#include "xtr/core/rng.hpp"
#include "xtr/core/tokens.hpp"
#include "xtr/generation/sampling.hpp"

namespace xtr {

/// x-transformers' beam_search keywords (eos_token and length_penalty are xtr's).
struct BeamSearchOptions {
  Index beams = 4;
  bool stochastic = false;   // Gumbel-top-k proposals: filter(logits) / temperature + Gumbel noise
  double temperature = 1.0;  // stochastic only; 0 = not stochastic
  Index top_k = 0;           // stochastic's filter (x-transformers' filter_logits_fn, identity by default): 0 = off
  double top_p = 0;
  double min_p = 0;
  std::optional<std::int32_t> eos_token;  // finished hypotheses leave the beam at eos
  double length_penalty = 0;              // finished (and final) hypotheses ranked by score / length^length_penalty
  bool cache_kv = true;
  std::optional<std::uint64_t> seed;      // the Gumbel draws; unset: a fresh stream per call
  std::vector<Index> prompt_lens;         // ragged prompts, as Sampling::prompt_lens
};

/// The hypotheses of every prompt, best first.
struct BeamSearchResult {
  TokenBatch tokens;                        // (batch, length): the best hypothesis of each prompt
  std::vector<TokenBatch> beams;            // [beam] (batch, length), best first (x-transformers' (beams, b, n))
  std::vector<std::vector<double>> scores;  // [beam][batch]: the rank score (Σ log p / length^length_penalty);
                                            // -inf where a prompt has fewer hypotheses than beams
};

/// The beam bookkeeping of one beam_search call: `batch` prompts × `beams` slots, `length` new tokens.
class BeamSearcher {
 public:
  BeamSearcher(const BeamSearchOptions& o, Index batch, Index length, Index num_tokens, std::int32_t pad_value,
               std::uint64_t seed)
      : o_(o), batch_(batch), length_(length), V_(num_tokens), pad_(pad_value), rng_{seed, 0x6265616D},
        sampler_(Sampling{.temperature = 1.0, .top_k = o.top_k, .top_p = o.top_p, .min_p = o.min_p}, num_tokens) {
    check(o, num_tokens);
    slots_.resize(std::size_t(batch * o.beams));
    finished_.resize(std::size_t(batch));
    done_.assign(std::size_t(batch), 0);
    for (Index b = 0; b < batch; ++b) slots_[std::size_t(b * o.beams)].alive = true;  // the prompt itself
    logp_.resize(std::size_t(V_));
    key_.resize(std::size_t(V_));
    order_.resize(std::size_t(V_));
  }

  static void check(const BeamSearchOptions& o, Index num_tokens) {
    require(o.beams >= 1, "beams must be >= 1, got ", o.beams);
    require(o.temperature >= 0, "temperature must be >= 0, got ", o.temperature);
    require(o.top_k >= 0, "top_k must be >= 0 (0 = off), got ", o.top_k);
    require(o.top_p >= 0 && o.top_p <= 1, "top_p must be in [0, 1], got ", o.top_p);
    require(o.min_p >= 0 && o.min_p <= 1, "min_p must be in [0, 1], got ", o.min_p);
    require(std::isfinite(o.length_penalty), "length_penalty must be finite, got ", o.length_penalty);
    if (o.eos_token)
      require(*o.eos_token >= 0 && *o.eos_token < num_tokens, "eos_token ", *o.eos_token, " outside [0, num_tokens ",
              num_tokens, ")");
  }

  [[nodiscard]] Index beams() const { return o_.beams; }
  [[nodiscard]] bool all_done() const { return std::all_of(done_.begin(), done_.end(), [](auto d) { return d; }); }

  /// Step `step` (0-based): `logits` rows of the live sequences — (batch, V) at step 0 (one per prompt), then
  /// (batch · beams, V), one per slot. Fills parent (batch · beams: the slot each new slot continues) and token.
  template <class T>
  void advance(Index step, const T* logits, std::vector<Index>& parent, std::vector<std::int32_t>& token) {
    const Index K = o_.beams, propose = std::min(K, V_);
    parent.assign(std::size_t(batch_ * K), 0);
    token.assign(std::size_t(batch_ * K), 0);
    std::vector<Slot> next(std::size_t(batch_ * K));
    for (Index b = 0; b < batch_; ++b) {
      candidates_.clear();
      for (Index j = 0; j < K; ++j) {
        const Slot& s = slots_[std::size_t(b * K + j)];
        if (!s.alive || done_[std::size_t(b)]) continue;
        const T* z = step == 0 ? logits + b * V_ : logits + (b * K + j) * V_;
        propose_from(z, step * batch_ * K + b * K + j);
        for (Index r = 0; r < propose; ++r) {
          const std::int32_t t = order_[std::size_t(r)];
          candidates_.push_back({s.score + logp_[std::size_t(t)], j, t});
        }
      }
      if (Index(candidates_.size()) > K)
        std::stable_sort(candidates_.begin(), candidates_.end(),
                         [](const Candidate& a, const Candidate& c) { return a.score > c.score; });
      Index live = 0;
      for (Index i = 0; i < Index(candidates_.size()) && live < K; ++i) {
        const Candidate& c = candidates_[std::size_t(i)];
        Slot& from = slots_[std::size_t(b * K + c.slot)];
        if (o_.eos_token && c.token == *o_.eos_token) {
          if (i < K) {
            Finished f{ranked(c.score, step + 1), from.tokens};
            f.tokens.push_back(c.token);
            finished_[std::size_t(b)].push_back(std::move(f));
          }
          continue;
        }
        Slot& to = next[std::size_t(b * K + live)];
        to.alive = true;
        to.score = c.score;
        to.tokens = from.tokens;
        to.tokens.push_back(c.token);
        parent[std::size_t(b * K + live)] = b * K + c.slot;
        token[std::size_t(b * K + live)] = c.token;
        ++live;
      }
      for (Index j = live; j < K; ++j) parent[std::size_t(b * K + j)] = b * K + j;  // dead slots stay put
      if (!done_[std::size_t(b)]) done_[std::size_t(b)] = settled(b, live, next, step + 1);
    }
    slots_ = std::move(next);
  }

  /// Every prompt's hypotheses, best first.
  [[nodiscard]] BeamSearchResult result() const {
    const Index K = o_.beams;
    BeamSearchResult r;
    r.beams.assign(std::size_t(K), TokenBatch(batch_, length_, pad_));
    r.scores.assign(std::size_t(K), std::vector<double>(std::size_t(batch_), -std::numeric_limits<double>::infinity()));
    for (Index b = 0; b < batch_; ++b) {
      std::vector<Finished> all;
      for (Index j = 0; j < K; ++j) {
        const Slot& s = slots_[std::size_t(b * K + j)];
        if (s.alive && !done_[std::size_t(b)]) all.push_back({ranked(s.score, Index(s.tokens.size())), s.tokens});
      }
      for (const auto& f : finished_[std::size_t(b)]) all.push_back(f);
      // best first (stable: x-transformers' order whenever its last step sorted; it leaves the beams in proposal
      // order when they were no more than `beams` candidates, e.g. beams >= num_tokens, and returns beam 0 then)
      std::stable_sort(all.begin(), all.end(), [](const Finished& a, const Finished& c) { return a.score > c.score; });
      for (Index j = 0; j < std::min(K, Index(all.size())); ++j) {
        const auto& f = all[std::size_t(j)];
        r.scores[std::size_t(j)][std::size_t(b)] = f.score;
        for (Index t = 0; t < Index(f.tokens.size()) && t < length_; ++t) r.beams[std::size_t(j)](b, t) = f.tokens[std::size_t(t)];
      }
    }
    r.tokens = r.beams[0];
    return r;
  }

 private:
  struct Slot {
    bool alive = false;
    double score = 0;
    std::vector<std::int32_t> tokens;  // generated so far
  };
  struct Candidate {
    double score;
    Index slot;
    std::int32_t token;
  };
  struct Finished {
    double score;  // ranked
    std::vector<std::int32_t> tokens;
  };

  [[nodiscard]] double ranked(double score, Index generated) const {
    return o_.length_penalty == 0 ? score : score / std::pow(double(std::max<Index>(generated, 1)), o_.length_penalty);
  }

  /// log_softmax of z into logp_, and order_[0, min(beams, V)) = the proposed tokens, best first.
  template <class T>
  void propose_from(const T* z, std::uint64_t draw) {
    double m = -std::numeric_limits<double>::infinity();
    for (Index i = 0; i < V_; ++i) m = std::max(m, double(z[i]));
    double total = 0;
    for (Index i = 0; i < V_; ++i) total += std::exp(double(z[i]) - m);
    const double log_total = m + std::log(total);
    for (Index i = 0; i < V_; ++i) logp_[std::size_t(i)] = double(z[i]) - log_total;
    if (o_.stochastic && o_.temperature > 0) {
      const auto& filtered = sampler_.filter(z);
      for (Index i = 0; i < V_; ++i) {
        const double u = rng_.open_uniform(draw * std::uint64_t(V_) + std::uint64_t(i));
        key_[std::size_t(i)] = filtered[std::size_t(i)] / o_.temperature - std::log(-std::log(u));
      }
    } else {
      for (Index i = 0; i < V_; ++i) key_[std::size_t(i)] = double(z[i]);
    }
    const Index k = std::min(o_.beams, V_);
    std::iota(order_.begin(), order_.end(), 0);
    std::partial_sort(order_.begin(), order_.begin() + k, order_.end(), [&](std::int32_t a, std::int32_t c) {
      return key_[std::size_t(a)] > key_[std::size_t(c)] || (key_[std::size_t(a)] == key_[std::size_t(c)] && a < c);
    });
  }

  /// Whether prompt b is done after `generated` tokens: no live hypothesis, or `beams` finished ones and no live one
  /// ranking above the worst of the best `beams` of them (the live scores only fall as tokens are added when
  /// length_penalty = 0; with a penalty this is the usual heuristic).
  [[nodiscard]] bool settled(Index b, Index live, const std::vector<Slot>& next, Index generated) const {
    if (live == 0) return true;
    auto& fin = finished_[std::size_t(b)];
    if (Index(fin.size()) < o_.beams) return false;
    std::vector<double> s;
    for (const auto& f : fin) s.push_back(f.score);
    std::nth_element(s.begin(), s.begin() + (o_.beams - 1), s.end(), std::greater<>());
    const double worst = s[std::size_t(o_.beams - 1)];
    double best_live = -std::numeric_limits<double>::infinity();
    for (Index j = 0; j < live; ++j) best_live = std::max(best_live, ranked(next[std::size_t(b * o_.beams + j)].score, generated));
    return best_live <= worst;
  }

  BeamSearchOptions o_;
  Index batch_, length_, V_;
  std::int32_t pad_;
  RandomStream rng_;
  Sampler sampler_;
  std::vector<Slot> slots_;
  std::vector<std::vector<Finished>> finished_;
  std::vector<std::uint8_t> done_;
  std::vector<Candidate> candidates_;
  std::vector<double> logp_, key_;
  std::vector<std::int32_t> order_;
};

}  // namespace xtr
