#pragma once
// AutoregressiveWrapper<Net>: next-token training and generation around a causal TransformerWrapper.
//   loss(x) = CE(net(x[:, :-1]), x[:, 1:]), x of shape (batch, seq_len + 1): the shift happens inside;
//   targets equal to ignore_index do not count; inputs equal to ignore_index are fed as pad_value.
//   mask_prob (x-transformers' forgetful causal mask, arXiv 2210.13432): each row hides floor(mask_prob · (seq_len + 1))
//   random keys (never the first, at most seq_len − 1) from self-attention; the query rows stay.
// generate(prompts, n, sampling) returns the n new tokens of each row (KV cache on by default), with contrastive
// decoding when sampling.amateurs is set; beam_search(prompts, n, options) the best hypotheses (beam_search.hpp).
// Around a cross-attending decoder (Decoder<..., CrossAttend>) all take the context to attend to.
#include <cstdint>
#include <vector>

#include "xtr/backend/ops.hpp"
#include "xtr/core/tokens.hpp"
#include "xtr/generation/beam_search.hpp"
#include "xtr/generation/sampling.hpp"
#include "xtr/generation/session.hpp"
#include "xtr/layers/transformer_wrapper.hpp"
#include "xtr/wrappers/loss.hpp"

namespace xtr {

/// x-transformers' AutoregressiveWrapper keywords.
struct AutoregressiveOptions {
  std::int32_t ignore_index = -100;
  std::int32_t pad_value = 0;
  double mask_prob = 0;  // in [0, 1): the fraction of keys each training row hides (0 = off)
};

template <class Net>
class AutoregressiveWrapper {
  static_assert(Net::layers_type::causal,
                "xtr: AutoregressiveWrapper needs a causal stack: wrap a TransformerWrapper<Decoder<...>>");

 public:
  using scalar = typename Net::scalar;
  using Context = ContextView<scalar>;
  static constexpr bool cross_attends = Net::layers_type::cross_attend;

  explicit AutoregressiveWrapper(Net network, AutoregressiveOptions options = {})
      : net(std::move(network)), options_(options) {
    require(net.logits_dim() == net.num_tokens(), "AutoregressiveWrapper needs logits over the vocabulary: logits_dim ",
            net.logits_dim(), " != num_tokens ", net.num_tokens());
    require(options.mask_prob >= 0 && options.mask_prob < 1, "mask_prob must be in [0, 1), got ", options.mask_prob);
  }

  Net net;

  [[nodiscard]] const AutoregressiveOptions& options() const { return options_; }
  [[nodiscard]] ParameterStore<scalar>& parameters() { return net.parameters(); }
  /// The network's random state and the count of unseeded generate() calls (checkpoints).
  [[nodiscard]] std::vector<std::uint64_t> random_state() const {
    auto state = net.random_state();
    state.push_back(generate_calls_);
    return state;
  }
  void set_random_state(std::span<const std::uint64_t> state) {
    require(state.size() == 3, "an AutoregressiveWrapper has a random state of 3 counters, got ", state.size());
    net.set_random_state(state.first(2));
    generate_calls_ = state[2];
  }
  void train(bool on = true) { net.train(on); }
  void eval() { net.eval(); }
  [[nodiscard]] Index max_seq_len() const { return net.max_seq_len(); }

  /// Mean next-token cross-entropy over the non-ignored targets of x (batch, seq_len + 1); `mask` (batch,
  /// seq_len + 1) marks real tokens (keys of padded positions are not attended to).
  Loss operator()(TokensView x, MaskView mask = {}, Context context = {}) {
    check_context_given(context);
    require(x.data != nullptr && x.batch > 0, "empty batch");
    require(x.length >= 2, "a training batch needs at least 2 tokens per row (seq_len + 1), got ", x.length);
    require(x.length - 1 <= net.max_seq_len(), "batch rows of ", x.length, " tokens need seq_len ", x.length - 1,
            " <= max_seq_len ", net.max_seq_len(), " (rows are seq_len + 1 tokens)");
    if (!mask.empty())
      require(mask.batch == x.batch && mask.length == x.length, "mask shape (", mask.batch, ", ", mask.length,
              ") does not match the batch (", x.batch, ", ", x.length, ")");
    const Index B = x.batch, T = x.length - 1;
    input_.resize(std::size_t(B * T));
    target_.resize(std::size_t(B * T));
    if (!mask.empty()) input_mask_.resize(std::size_t(B * T));
    for (Index b = 0; b < B; ++b)
      for (Index t = 0; t <= T; ++t) {
        const std::int32_t id = x(b, t);
        require(id == options_.ignore_index || (id >= 0 && id < net.num_tokens()), "token id ", id,
                (id < 0 ? " < 0" : " >= num_tokens "), (id < 0 ? std::string() : std::to_string(net.num_tokens())),
                " at batch ", b, ", position ", t, " (and not ignore_index ", options_.ignore_index, ")");
        if (t < T) {
          input_[b * T + t] = id == options_.ignore_index ? options_.pad_value : id;
          if (!mask.empty()) input_mask_[b * T + t] = mask.data[b * x.length + t];
        }
        if (t > 0) target_[b * T + t - 1] = id;
      }
    MaskView input_mask{};
    if (!mask.empty()) input_mask = {input_mask_.data(), B, T};
    const Index hidden = hidden_keys(x.length);
    auto logits = hidden == 0 ? net_forward({input_.data(), B, T}, input_mask, context)
                              : net.forward_with_kv_mask({input_.data(), B, T}, input_mask,
                                                         draw_kv_mask(B, T, hidden), context);
    const double value = kernel<typename Net::backend_type, ops::SoftmaxCrossEntropy>::run(
        logits, target_.data(), options_.ignore_index, net.output_gradient().data());
    return Loss(value, this, &AutoregressiveWrapper::backward_of, net.forward_count());
  }

  /// Keys each row of a (batch, seq_len + 1) training batch hides with mask_prob: floor(mask_prob · (seq_len + 1)),
  /// at most seq_len − 1 (the first key always stays).
  [[nodiscard]] Index hidden_keys(Index row_length) const {
    if (options_.mask_prob <= 0) return 0;
    return std::min(Index(options_.mask_prob * double(row_length)), row_length - 2);
  }
  /// The self-attention key mask mask_prob draws for the next forward: `hidden` of keys 1 … T − 1 of each row,
  /// uniformly without replacement, from (dropout seed, forward pass) — a resumed run draws the same.
  MaskView draw_kv_mask(Index B, Index T, Index hidden) {
    kv_mask_.assign(std::size_t(B * T), 1);
    const RandomStream stream = RandomStream{net.dropout_seed(), 6}.fork(net.forward_count() + 1);
    order_.resize(std::size_t(T - 1));
    for (Index b = 0; b < B; ++b) {  // partial Fisher-Yates over positions 1 … T − 1
      for (Index i = 0; i < T - 1; ++i) order_[std::size_t(i)] = i + 1;
      for (Index i = 0; i < hidden; ++i) {
        const Index j = i + Index(stream.below(std::uint64_t((net.sequence_offset() + b) * T + i),  // global row
                                               std::uint64_t(T - 1 - i)));
        std::swap(order_[std::size_t(i)], order_[std::size_t(j)]);
        kv_mask_[std::size_t(b * T + order_[std::size_t(i)])] = 0;
      }
    }
    return {kv_mask_.data(), B, T};
  }

  /// `length` new tokens after each prompt row (prompts: batch × prompt length; with sampling.prompt_lens, ragged).
  /// With sampling.amateurs, contrastive decoding: the logits are contrasted with each amateur's (its own KV cache)
  /// and then sampled (temperature 0: argmax) without a filter. With sampling.draft, speculative decoding (row by
  /// row). A row stops at eos_token, at the end of a stop sequence, or when on_tokens returns false; its later
  /// positions are pad_value, and generation ends once every row has stopped.
  TokenBatch generate(TokensView prompts, Index length, const Sampling& sampling = {}, Context context = {}) {
    check_context_given(context);
    check_prompts(prompts, length, sampling.prompt_lens);
    const Index B = prompts.batch, P = prompts.length, V = net.num_tokens();
    // validate the options before anything changes; without a seed, each call draws a fresh stream
    require(!sampling.bf16_weights || sampling.cache_kv,
            "bf16_weights applies to KV-cached decoding; set cache_kv = true");
    Sampling s = sampling;
    if (!s.amateurs.empty()) {
      require(s.top_k == -1 && s.top_p == 0 && s.min_p == 0, "contrastive decoding samples without a filter (as "
              "x-transformers, which turns it off): leave top_k = -1, top_p = 0 and min_p = 0, got top_k ", s.top_k,
              ", top_p ", s.top_p, ", min_p ", s.min_p);
      require(!s.draft, "contrastive and speculative decoding together are not supported");
      for (std::size_t a = 0; a < s.amateurs.size(); ++a)
        require(s.amateurs[a].num_tokens() == V, "amateur ", a, " has ", s.amateurs[a].num_tokens(),
                " logits per position, the expert ", V, ": contrastive decoding needs one vocabulary");
      s.top_k = 0;
    }
    if (s.draft) {
      require(s.draft->num_tokens() == V, "the draft model has ", s.draft->num_tokens(),
              " logits per position, the model ", V, ": speculative decoding needs one vocabulary");
      require(s.draft_tokens >= 1, "draft_tokens must be >= 1, got ", s.draft_tokens);
    }
    for (std::size_t q = 0; q < s.stop_sequences.size(); ++q)
      require(!s.stop_sequences[q].empty(), "stop sequence ", q, " is empty");
    const std::uint64_t seed = s.seed ? *s.seed : RandomStream{net.dropout_seed(), 3}.bits64(generate_calls_++);
    Sampler sampler(s, V, seed);
    struct RestoreMode {           // eval() for generation; the caller's mode comes back even on an exception
      Net& net;
      bool was_training;
      ~RestoreMode() { net.train(was_training); }
    } restore{net, net.training()};
    net.eval();
    const Index W = P + length;
    TokenBatch out(B, W);
    const std::vector<Index> starts = place_prompts(prompts, s.prompt_lens, out);
    Stops stops(s, B, P, options_.pad_value);
    if (s.draft) {
      speculative(out, starts, length, s, sampler, stops, context);
      return stops.result(out, length);
    }
    DecodeSession<Net> session(net, B, s.cache_kv, s.bf16_weights, context, starts, W);
    OpenSessions amateurs;
    for (const auto& a : s.amateurs) amateurs.sessions.push_back(a.open(B, s.cache_kv, starts));
    std::vector<scalar> contrasted;
    for (Index produced = 0; produced < length && !stops.all(); ++produced) {
      const Index cur = P + produced;
      const scalar* logits = session.next(out.data.data(), W, cur);
      if (!amateurs.sessions.empty()) {
        contrasted.assign(logits, logits + B * V);
        for (std::size_t a = 0; a < amateurs.sessions.size(); ++a) {
          const double* amateur = amateurs.sessions[a]->next(out.data.data(), W, cur);
          for (Index b = 0; b < B; ++b)
            contrastive_logits(contrasted.data() + b * V, amateur + b * V, V, s.amateurs[a].alpha,
                               s.amateurs[a].beta, contrasted.data() + b * V);
        }
        logits = contrasted.data();
      }
      for (Index b = 0; b < B; ++b) {
        out(b, cur) = sampler(logits + b * V, std::uint64_t(produced * B + b));
        stops.emit(out, b, produced, 1);
      }
    }
    return stops.result(out, length);
  }

  /// Prompts of different lengths (x-transformers' list of prompts): row b generates what prompts[b] would alone.
  TokenBatch generate(const std::vector<std::vector<std::int32_t>>& prompts, Index length, Sampling sampling = {},
                      Context context = {}) {
    require(sampling.prompt_lens.empty(), "prompt_lens is derived from a list of prompts: leave it empty");
    const TokenBatch padded = pad_prompts(prompts, sampling.prompt_lens);
    return generate(padded, length, sampling, context);
  }

  /// Beam search for `length` new tokens after each prompt row (x-transformers' beam_search; see beam_search.hpp):
  /// the best hypothesis of each prompt in .tokens, every beam and its score best first. With the KV cache the
  /// prompt runs once, its cache is repeated to the beams, and each step moves only the rows whose beam changed.
  BeamSearchResult beam_search(TokensView prompts, Index length, const BeamSearchOptions& options = {},
                               Context context = {}) {
    check_context_given(context);
    check_prompts(prompts, length, options.prompt_lens);
    const Index B = prompts.batch, P = prompts.length, V = net.num_tokens(), K = options.beams;
    BeamSearcher::check(options, V);
    const std::uint64_t seed =
        options.seed ? *options.seed : RandomStream{net.dropout_seed(), 3}.bits64(generate_calls_++);
    BeamSearcher search(options, B, length, V, options_.pad_value, seed);
    struct RestoreMode {
      Net& net;
      bool was_training;
      ~RestoreMode() { net.train(was_training); }
    } restore{net, net.training()};
    net.eval();
    if (length == 0) return search.result();
    const Index W = P + length;
    TokenBatch out(B, W), previous;
    const std::vector<Index> starts = place_prompts(prompts, options.prompt_lens, out);
    DecodeSession<Net> session(net, B, options.cache_kv, false, context, starts, W);
    std::vector<Index> parent;
    std::vector<std::int32_t> token;
    for (Index step = 0; step < length; ++step) {
      const scalar* logits = session.next(out.data.data(), W, P + step);
      search.advance(step, logits, parent, token);
      if (step == 0) {  // every prompt becomes its beams
        session.repeat_rows(K);
        TokenBatch repeated(B * K, W);
        for (Index r = 0; r < B * K; ++r) std::copy_n(out.data.data() + (r / K) * W, W, repeated.data.data() + r * W);
        out = std::move(repeated);
        for (Index r = 0; r < B * K; ++r) parent[std::size_t(r)] = r;  // the repeated rows are their own parents
      } else {
        session.reorder_rows(parent, K);
        previous = out;
        for (Index r = 0; r < B * K; ++r)
          if (parent[std::size_t(r)] != r)
            std::copy_n(previous.data.data() + parent[std::size_t(r)] * W, W, out.data.data() + r * W);
      }
      for (Index r = 0; r < B * K; ++r) out(r, P + step) = token[std::size_t(r)];
      if (search.all_done()) break;
    }
    return search.result();
  }
  /// Beam search over prompts of different lengths (x-transformers' prompt_lens).
  BeamSearchResult beam_search(const std::vector<std::vector<std::int32_t>>& prompts, Index length,
                               BeamSearchOptions options = {}, Context context = {}) {
    require(options.prompt_lens.empty(), "prompt_lens is derived from a list of prompts: leave it empty");
    const TokenBatch padded = pad_prompts(prompts, options.prompt_lens);
    return beam_search(padded, length, options, context);
  }

 private:
  /// Where each row stops: eos, a stop sequence, on_tokens returning false; and the result with pad_value after.
  class Stops {
   public:
    Stops(const Sampling& s, Index batch, Index prompt_length, std::int32_t pad)
        : s_(s), P_(prompt_length), pad_(pad), end_(std::size_t(batch), -1) {}
    [[nodiscard]] bool stopped(Index b) const { return end_[std::size_t(b)] >= 0; }
    [[nodiscard]] bool all() const { return std::all_of(end_.begin(), end_.end(), [](Index e) { return e >= 0; }); }
    /// Row b produced `count` tokens at new positions [from, from + count) of `out`: stops it at the first eos or
    /// stop sequence among them, streams what it keeps. Returns how many it kept.
    Index emit(const TokenBatch& out, Index b, Index from, Index count) {
      if (stopped(b)) return 0;
      Index kept = count;
      for (Index i = 0; i < count; ++i)
        if (ends(out, b, from + i)) {
          kept = i + 1;
          end_[std::size_t(b)] = from + i + 1;
          break;
        }
      if (s_.on_tokens &&
          !s_.on_tokens(b, std::span<const std::int32_t>(&out.data[std::size_t(b * out.length + P_ + from)],
                                                          std::size_t(kept))))
        end_[std::size_t(b)] = from + kept;
      return kept;
    }
    /// The new tokens; pad_value after each row's stop.
    [[nodiscard]] TokenBatch result(const TokenBatch& out, Index length) const {
      TokenBatch r(Index(end_.size()), length, pad_);
      for (Index b = 0; b < r.batch; ++b) {
        const Index n = stopped(b) ? end_[std::size_t(b)] : length;
        std::copy_n(out.data.data() + b * out.length + P_, n, r.data.data() + b * length);
      }
      return r;
    }

   private:
    /// Whether the new token at position t of row b ends the row.
    bool ends(const TokenBatch& out, Index b, Index t) const {
      const std::int32_t* row = out.data.data() + b * out.length + P_;
      if (s_.eos_token && row[t] == *s_.eos_token) return true;
      for (const auto& q : s_.stop_sequences)
        if (Index(q.size()) <= t + 1 && std::equal(q.begin(), q.end(), row + t + 1 - Index(q.size()))) return true;
      return false;
    }
    const Sampling& s_;
    Index P_;
    std::int32_t pad_;
    std::vector<Index> end_;  // new tokens kept per row; -1 while running
  };

  /// Speculative decoding (Leviathan et al. 2023; Chen et al. 2023), one row at a time: the draft proposes k tokens
  /// x₁…x_k from q (its filtered, tempered distribution), the model scores all k + 1 positions in one forward, x_i is
  /// kept with probability min(1, p(x_i) / q(x_i)) in order, the first rejected one is replaced by a draw from
  /// norm(max(p − q, 0)), and when all are kept one more token comes from p: the output is distributed as the
  /// model's own sampling (greedy: x_i kept iff it is the model's argmax, the same tokens as without a draft). Rejected
  /// tokens are rewound from both caches; near max_seq_len (where the cache would slide) it decodes one token a step.
  void speculative(TokenBatch& out, const std::vector<Index>& starts, Index length, const Sampling& s,
                   Sampler& sampler, Stops& stops, Context context) {
    const Index B = out.batch, W = out.length, P = W - length, V = net.num_tokens(), L = net.max_seq_len();
    const RandomStream rng{sampler.stream().seed, 0x7370656375};
    std::vector<std::int32_t> h;
    std::vector<double> q, p, draft_probs;
    std::vector<std::int32_t> proposed;
    auto probabilities = [&](const auto* logits, std::vector<double>& probs) {  // softmax(filter(z) / T)
      const auto& z = sampler.filter(logits);
      const double m = *std::max_element(z.begin(), z.end());
      probs.resize(std::size_t(V));
      double total = 0;
      for (Index i = 0; i < V; ++i) total += (probs[std::size_t(i)] = std::exp((z[std::size_t(i)] - m) / s.temperature));
      for (auto& v : probs) v /= total;
    };
    auto draw = [&](const std::vector<double>& probs, std::uint64_t index) {
      const double u = rng.open_uniform(index);
      double cumulative = 0;
      Index last = 0;
      for (Index i = 0; i < V; ++i) {
        if (probs[std::size_t(i)] <= 0) continue;
        last = i;
        cumulative += probs[std::size_t(i)];
        if (u * 1.0 < cumulative) return std::int32_t(i);
      }
      return std::int32_t(last);
    };
    for (Index b = 0; b < B; ++b) {
      const Index start = starts.empty() ? 0 : starts[std::size_t(b)];
      h.assign(out.data.begin() + b * W + start, out.data.begin() + b * W + P);  // the real prompt
      Context row_context{};
      if constexpr (cross_attends)
        row_context = {context.data + b * context.length * context.dim, 1, context.length, context.dim,
                       context.mask.empty() ? MaskView{} : MaskView{context.mask.data + b * context.length, 1,
                                                                    context.length}};
      DecodeSession<Net> target(net, 1, s.cache_kv, s.bf16_weights, row_context, {}, W);
      OpenSessions open;
      open.sessions.push_back(s.draft->open(1, s.cache_kv));
      auto& draft = *open.sessions[0];
      Index produced = 0;
      std::uint64_t round = 0;
      while (produced < length && !stops.stopped(b)) {
        const Index cur = Index(h.size());
        const Index k = std::min(s.draft_tokens, length - produced - 1);
        const std::uint64_t base = (std::uint64_t(b) << 40) + (round++ << 12);
        Index emitted = 0;
        if (k <= 0 || cur + k > std::min(L, s.draft->max_seq_len())) {  // one token from the model alone
          const scalar* logits = target.next(h.data(), cur, cur);
          h.push_back(sampler(logits, base));
          emitted = 1;
        } else {
          proposed.clear();
          draft_probs.clear();
          for (Index i = 0; i < k; ++i) {  // the draft's proposals and their probabilities
            const double* z = draft.next(h.data(), Index(h.size()), Index(h.size()));
            std::int32_t x;
            if (s.temperature == 0) {
              x = std::int32_t(std::max_element(z, z + V) - z);
            } else {
              probabilities(z, q);
              x = draw(q, base + std::uint64_t(2 * i));
              draft_probs.insert(draft_probs.end(), q.begin(), q.end());
            }
            proposed.push_back(x);
            h.push_back(x);
          }
          const scalar* verify = target.next_all(h.data(), cur + k, cur + k, k + 1);  // (k + 1, V)
          h.resize(std::size_t(cur));
          Index accepted = 0;
          std::int32_t z = -1;
          for (; accepted < k; ++accepted) {
            const scalar* row = verify + accepted * V;
            const std::int32_t x = proposed[std::size_t(accepted)];
            if (s.temperature == 0) {
              const auto best = std::int32_t(std::max_element(row, row + V) - row);
              if (best != x) {
                z = best;
                break;
              }
            } else {
              probabilities(row, p);
              const double* qi = draft_probs.data() + accepted * V;
              const double u = rng.open_uniform(base + std::uint64_t(2 * accepted + 1));
              if (!(u * qi[x] < p[std::size_t(x)])) {  // reject: draw from norm(max(p − q, 0))
                double total = 0;
                for (Index i = 0; i < V; ++i) total += (p[std::size_t(i)] = std::max(p[std::size_t(i)] - qi[i], 0.0));
                if (total <= 0) probabilities(row, p);  // p = q exactly: any draw from p
                else for (auto& v : p) v /= total;
                z = draw(p, base + 4000 + std::uint64_t(accepted));
                break;
              }
            }
            h.push_back(x);
          }
          if (z < 0) {  // every proposal kept: one more token from the last position
            const scalar* row = verify + k * V;
            if (s.temperature == 0) {
              z = std::int32_t(std::max_element(row, row + V) - row);
            } else {
              probabilities(row, p);
              z = draw(p, base + 4095);
            }
          }
          h.push_back(z);
          emitted = accepted + 1;
          target.rewind(k - accepted);                                          // it saw cur + k tokens
          draft.rewind(std::max<Index>(0, (cur + k - 1) - (cur + accepted)));  // it saw cur + k − 1
        }
        std::copy_n(h.end() - emitted, emitted, out.data.begin() + b * W + P + produced);
        stops.emit(out, b, produced, emitted);
        produced += emitted;
        accepted_ += emitted;
        ++rounds_;
      }
    }
  }

 public:
  /// Speculative decoding's totals since construction: tokens produced and model forwards (rounds) spent on them.
  [[nodiscard]] std::pair<std::uint64_t, std::uint64_t> speculative_counts() const { return {accepted_, rounds_}; }

 private:
  /// A list of prompts as one batch, each row's tokens first (then 0), and their lengths into `lens`.
  static TokenBatch pad_prompts(const std::vector<std::vector<std::int32_t>>& prompts, std::vector<Index>& lens) {
    require(!prompts.empty(), "empty list of prompts");
    std::size_t longest = 0;
    for (std::size_t b = 0; b < prompts.size(); ++b) {
      require(!prompts[b].empty(), "prompt ", b, " is empty");
      longest = std::max(longest, prompts[b].size());
    }
    TokenBatch padded(Index(prompts.size()), Index(longest));
    for (std::size_t b = 0; b < prompts.size(); ++b) {
      std::copy(prompts[b].begin(), prompts[b].end(), padded.data.begin() + std::ptrdiff_t(b * longest));
      lens.push_back(Index(prompts[b].size()));
    }
    return padded;
  }
  /// The prompts (and with `lens`, each row's first lens[b] tokens) are token ids; lens[b] in [1, prompt length].
  void check_prompts(TokensView prompts, Index length, std::span<const Index> lens) const {
    require(prompts.data != nullptr && prompts.batch > 0 && prompts.length > 0, "empty prompt batch (",
            prompts.batch, ", ", prompts.length, ")");
    require(length >= 0, "length must be >= 0, got ", length);
    if (!lens.empty()) {
      require(Index(lens.size()) == prompts.batch, "prompt_lens has ", lens.size(), " entries for ", prompts.batch,
              " prompts");
      for (std::size_t b = 0; b < lens.size(); ++b)
        require(lens[b] >= 1 && lens[b] <= prompts.length, "prompt_lens[", b, "] = ", lens[b], " outside [1, ",
                prompts.length, "] (the prompt length)");
    }
    for (Index i = 0; i < prompts.size(); ++i) {
      const Index b = i / prompts.length, t = i % prompts.length;
      if (!lens.empty() && t >= lens[std::size_t(b)]) continue;  // padding
      require(prompts.data[i] >= 0 && prompts.data[i] < net.num_tokens(), "prompt token id ", prompts.data[i],
              " outside [0, num_tokens ", net.num_tokens(), ") at batch ", b, ", position ", t);
    }
  }
  /// Copies the prompts into the first prompts.length columns of `out`; ragged rows right-aligned after padding
  /// (token 0: hidden, never read as a token) as x-transformers' align_right. Returns each row's start (empty when
  /// none is padded).
  static std::vector<Index> place_prompts(TokensView prompts, std::span<const Index> lens, TokenBatch& out) {
    const Index B = prompts.batch, P = prompts.length, W = out.length;
    std::vector<Index> starts;
    for (Index b = 0; b < B; ++b) {
      const Index n = lens.empty() ? P : lens[std::size_t(b)];
      std::fill_n(out.data.data() + b * W, P - n, 0);
      std::copy_n(prompts.data + b * P, n, out.data.data() + b * W + P - n);
      if (n < P) starts.resize(std::size_t(B), 0);
      if (!starts.empty()) starts[std::size_t(b)] = P - n;
    }
    return starts;
  }
  void check_context_given(Context context) const {
    if constexpr (cross_attends) {
      require(!context.empty(), "the decoder cross-attends (CrossAttend): pass the context to attend to");
    } else {
      require(context.empty(), "a context was given, but the decoder does not cross-attend: use Decoder<..., "
              "CrossAttend>");
    }
  }
  MatrixView<scalar> net_forward(TokensView tokens, MaskView mask, Context context) {
    if constexpr (cross_attends) {
      return net.forward(tokens, mask, context);
    } else {
      return net.forward(tokens, mask);
    }
  }

  static void backward_of(void* self, double scale, std::uint64_t forward_id) {
    auto& me = *static_cast<AutoregressiveWrapper*>(self);
    claim_backward(forward_id == me.net.forward_count(), forward_id, me.last_backward_);
    me.net.backward(scalar(scale));
  }

  AutoregressiveOptions options_;
  std::vector<std::int32_t> input_, target_;
  std::vector<std::uint8_t> input_mask_, kv_mask_;
  std::vector<Index> order_;
  std::uint64_t accepted_ = 0, rounds_ = 0;
  std::uint64_t generate_calls_ = 0;
  std::uint64_t last_backward_ = 0;  // forward pass whose backward has run
};

/// Makes a model's KV-cached decoding read its weights in `format` (TransformerWrapper::quantize on its net):
/// `xtr::quantize(model, xtr::WeightFormat::int8)`; `activations` as TransformerWrapper::quantize.
template <class Model>
void quantize(Model& model, WeightFormat format, Index group = WeightCopy::kDefaultGroup,
              ActivationFormat activations = ActivationFormat::automatic) {
  if constexpr (requires { model.net.quantize(format, group, activations); }) {
    model.net.quantize(format, group, activations);
  } else {
    model.quantize(format, group, activations);
  }
}

/// Makes a model's KV caches keep keys and values in `format` (TransformerWrapper::use_kv_format on its net, or on
/// the decoder's of an XTransformer): `xtr::use_kv_format(model, xtr::KVFormat::f16)`.
template <class Model>
void use_kv_format(Model& model, KVFormat format) {
  if constexpr (requires { model.net.use_kv_format(format); }) {
    model.net.use_kv_format(format);
  } else if constexpr (requires { model.decoder.net.use_kv_format(format); }) {
    model.decoder.net.use_kv_format(format);
  } else {
    model.use_kv_format(format);
  }
}

}  // namespace xtr
