#pragma once
// NonAutoregressiveWrapper<Net>: masked-token training and iterative parallel decoding (MaskGIT, x-transformers'
// NonAutoregressiveWrapper) around a TransformerWrapper whose rows are exactly max_seq_len tokens: an Encoder, or a
// Decoder as x-transformers' own example writes it (each position then predicts from the positions up to it).
//   training, per row of x (B, n = max_seq_len):
//     t ~ U(0, 1);  k = max(1, ⌈γ(t) · n⌉) positions masked, chosen uniformly;  γ = schedule (cosine: cos(πt/2))
//     each masked position independently: keeps its token (no_replace_prob), gets a random token ≠ mask_id
//     (random_token_prob), or becomes mask_id (the rest); or, with coin_flips (x-transformers' recipe): with
//     probability ½ per batch, ⌈m · no_replace_prob⌉ of each row's m masked positions keep their tokens, and with
//     probability ½ per batch ⌈m' · random_token_prob · (1 − no_replace_prob if applied)⌉ of the m' still to be
//     replaced get a random token (any id, mask_id included); the rest become mask_id
//     loss = mean over masked positions of CE(net(x̃), x)
//     self_cond: net(x̃, sum_embeds = W_sc e) with e = the embeddings of a first, detached pass net(x̃) (probability
//     self_cond_train_prob) or the learned null_embed; generate() feeds each step's embeddings to the next.
//     token critic c (a second network, one logit per position): ŷ = x with masked positions sampled from net(x̃)
//     (Gumbel-max at a random temperature), loss += critic_loss_weight · mean BCE(c(ŷ), [ŷ ≠ x]);
//     generate() re-masks by the critic's scores (+ annealed Gumbel noise) instead of the generator's confidence.
//   generate, S steps, t_s = (s + 1) / S:
//     predict every position; sample the masked ones (top-k filter, Gumbel-max at temperature T₀ · (S − 1 − s) / S;
//     never mask_id);
//     re-mask the ⌊γ(t_s) · free⌋ least confident of them (confidence = p(sampled token)); γ(1) = 0: nothing masked.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <numbers>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "xtr/backend/cpu/cross_entropy.hpp"
#include "xtr/backend/cpu/linear.hpp"
#include "xtr/core/rng.hpp"
#include "xtr/core/tokens.hpp"
#include "xtr/layers/transformer_wrapper.hpp"
#include "xtr/wrappers/loss.hpp"

namespace xtr {

/// Masking schedules γ: [0, 1] → [0, 1], the fraction of tokens masked at time t (t = 1: none).
inline double cosine_schedule(double t) { return std::cos(t * std::numbers::pi / 2); }
inline double linear_schedule(double t) { return 1 - t; }

/// x-transformers' NonAutoregressiveWrapper keywords. xtr's defaults differ from x-transformers' in two places, on
/// purpose: the cosine schedule (MaskGIT's; x-transformers' default is linear) and per-position replacement draws
/// (x-transformers flips two coins per batch: coin_flips). x_transformers_defaults() is x-transformers' recipe, except
/// its default MDLM loss weighting (use_simple_mdlm_loss_weight), which is not well-defined: see
/// docs/non-autoregressive.md.
struct NonAutoregressiveOptions {
  std::int32_t mask_id = -1;   // required: a token id of the net's vocabulary that data never contains
  Index steps = 18;            // refinement steps of generate()
  std::function<double(double)> schedule = cosine_schedule;  // linear_schedule, or any γ with values in [0, 1]
  double no_replace_prob = 0.15;   // of the masked positions: keep the token (BERT)
  double random_token_prob = 0.1;  // of the masked positions: a random token
  bool can_mask_prev_unmasked = false;  // generate(): may re-mask tokens fixed at earlier steps
  bool self_cond = false;               // self-conditioning (construct the wrapper from a TransformerConfig)
  double self_cond_train_prob = 0.75;   // training: how often the previous prediction is fed back
  double critic_loss_weight = 1.0;      // with a token critic: total = generator loss + weight · critic loss
  bool coin_flips = false;              // x-transformers' batch-level coin flips for no_replace / random tokens

  /// NonAutoregressiveWrapper(net, mask_id = ..., steps = ...) of x-transformers 2.31.10: linear schedule, coin flips;
  /// the one difference: no MDLM loss weight (x-transformers' default weight γ'(t) / (1 − γ(t)) = −1/t for the linear
  /// schedule is negative and unbounded; the loss here is the plain mean cross-entropy over masked positions).
  static NonAutoregressiveOptions x_transformers_defaults(std::int32_t mask_id, Index steps = 18) {
    NonAutoregressiveOptions o;
    o.mask_id = mask_id;
    o.steps = steps;
    o.schedule = linear_schedule;
    o.coin_flips = true;
    return o;
  }
};

/// What generate() samples with (x-transformers' generate keywords).
struct NonAutoregressiveSampling {
  double start_temperature = 1.0;  // annealed linearly to 0 over the steps
  double filter_thres = 0.7;       // top-k filter keeping ⌈(1 − filter_thres) · V⌉ logits; 0 = keep all
  std::optional<std::uint64_t> seed;  // unseeded: a fresh stream per call
  double noise_level_scale = 1.0;  // with a token critic: Gumbel noise on its scores, annealed like the temperature
};

namespace detail {
struct NoCritic {};
}  // namespace detail

/// `Critic`: the token critic's network type (a TransformerWrapper<Encoder<...>>), or void for none.
template <class Net, class Critic = void>
class NonAutoregressiveWrapper {
  static_assert(Net::layers_type::self_attend && !Net::layers_type::cross_attend,
                "xtr: NonAutoregressiveWrapper needs a self-attending stack without cross-attention: wrap a "
                "TransformerWrapper<Encoder<...>> or <Decoder<...>>");

 public:
  using scalar = typename Net::scalar;
  static constexpr bool has_critic = !std::is_void_v<Critic>;
  using CriticNet = std::conditional_t<has_critic, Critic, detail::NoCritic>;

  /// Around a built network (its parameter names unchanged); no self-conditioning.
  NonAutoregressiveWrapper(Net network, NonAutoregressiveOptions options)
    requires(!has_critic)
      : net(std::move(network)), options_(validated(std::move(options), net.num_tokens())) {
    require(!options_.self_cond, "self_cond adds parameters: construct the wrapper from a TransformerConfig");
  }
  /// Building the network: all parameters in one store under x-transformers' names (`net.…`, and with self_cond
  /// `null_embed`, `to_self_cond.weight`).
  NonAutoregressiveWrapper(TransformerConfig config, NonAutoregressiveOptions options)
    requires(!has_critic)
      : store_(std::make_unique<ParameterStore<scalar>>(memory_of<typename Net::backend_type>())),
        net(config, *store_, "net."),
        options_(validated(std::move(options), net.num_tokens())) {
    add_wrapper_parameters();
  }
  /// With a token critic built from `critic` (its logits_dim becomes 1; parameters `token_critic.…`).
  NonAutoregressiveWrapper(TransformerConfig config, NonAutoregressiveOptions options, TransformerConfig critic)
    requires(has_critic)
      : store_(std::make_unique<ParameterStore<scalar>>(memory_of<typename Net::backend_type>())),
        net(config, *store_, "net."),
        token_critic(critic_config(critic, config), *store_, "token_critic."),
        options_(validated(std::move(options), net.num_tokens())) {
    add_wrapper_parameters();
  }

 private:
  static TransformerConfig critic_config(TransformerConfig critic, const TransformerConfig& net) {
    require(critic.num_tokens == net.num_tokens, "the token critic reads the generator's tokens: num_tokens ",
            critic.num_tokens, " != ", net.num_tokens);
    require(critic.max_seq_len >= net.max_seq_len, "the token critic's max_seq_len ", critic.max_seq_len,
            " < the generator's ", net.max_seq_len);
    critic.logits_dim = 1;
    return critic;
  }
  void add_wrapper_parameters() {
    const Index D = net.config().layers.dim;
    if (options_.self_cond) {
      null_embed_ = store_->add("null_embed", {D}, Init::normal_std(1.0));
      to_self_cond_ = store_->add("to_self_cond.weight", {D, D}, Init::uniform_bound(1.0 / std::sqrt(double(D))));
    }
    store_->allocate(net.config().seed);
  }

 public:
  NonAutoregressiveWrapper(const NonAutoregressiveWrapper& other)
      : store_(other.store_ ? std::make_unique<ParameterStore<scalar>>(*other.store_) : nullptr), net(other.net),
        token_critic(other.token_critic), null_embed_(other.null_embed_), to_self_cond_(other.to_self_cond_),
        options_(other.options_), calls_(other.calls_), generate_calls_(other.generate_calls_) {
    if (store_) net.rebind_parameters(*store_);
    if constexpr (has_critic) token_critic.rebind_parameters(*store_);
  }
  NonAutoregressiveWrapper(NonAutoregressiveWrapper&&) noexcept = default;

 private:
  std::unique_ptr<ParameterStore<scalar>> store_;  // when built from a config: the net's and the wrapper's parameters

 public:
  Net net;
  [[no_unique_address]] CriticNet token_critic;  // with a Critic type: one logit per position

  [[nodiscard]] const NonAutoregressiveOptions& options() const { return options_; }
  /// The network's (and the critic's) random state, then the counts of training and unseeded generate() calls.
  [[nodiscard]] std::vector<std::uint64_t> random_state() const {
    auto state = net.random_state();
    if constexpr (has_critic) {
      const auto critic = token_critic.random_state();
      state.insert(state.end(), critic.begin(), critic.end());
    }
    state.push_back(calls_);
    state.push_back(generate_calls_);
    return state;
  }
  void set_random_state(std::span<const std::uint64_t> state) {
    const std::size_t n = has_critic ? 6 : 4;
    require(state.size() == n, "this NonAutoregressiveWrapper has a random state of ", n, " counters, got ",
            state.size());
    net.set_random_state(state.first(2));
    if constexpr (has_critic) token_critic.set_random_state(state.subspan(2, 2));
    calls_ = state[n - 2];
    generate_calls_ = state[n - 1];
  }
  static std::string describe() {
    std::string d = "NonAutoregressiveWrapper<" + Net::describe();
    if constexpr (has_critic) d += ", " + Critic::describe();
    return d + ">";
  }
  [[nodiscard]] ParameterStore<scalar>& parameters() { return store_ ? *store_ : net.parameters(); }
  [[nodiscard]] const ParameterStore<scalar>& parameters() const { return store_ ? *store_ : net.parameters(); }
  void train(bool on = true) {
    net.train(on);
    if constexpr (has_critic) token_critic.train(on);
  }
  void eval() { train(false); }
  /// The two parts of the last training loss (critic: 0 without a critic).
  struct Losses {
    double generator = 0, critic = 0;
  };
  [[nodiscard]] const Losses& last_losses() const { return losses_; }
  [[nodiscard]] Index max_seq_len() const { return net.max_seq_len(); }

  /// γ(t), checked to lie in [0, 1].
  [[nodiscard]] double schedule(double t) const {
    const double g = options_.schedule(t);
    require(g >= 0 && g <= 1 && std::isfinite(g), "schedule(t = ", t, ") = ", g, " is outside [0, 1]");
    return g;
  }

  /// The corrupted input and the loss mask of one training batch, drawn from `stream` (exposed for tests).
  struct Corruption {
    std::vector<std::int32_t> input;  // (B, n): x with masked positions replaced
    std::vector<std::uint8_t> masked;  // (B, n): 1 where the loss counts
    std::vector<double> times;         // (B): t per row
    bool self_condition = false;       // self_cond: feed a first pass's embeddings (else null_embed)
    double critic_temperature = 0;     // token critic: the generator's sampling temperature, U(0, 1)
    std::uint64_t critic_seed = 0;     // and its Gumbel noise
  };
  [[nodiscard]] Corruption corrupt(TokensView x, const RandomStream& stream) const {
    check_batch(x);
    const Index B = x.batch, n = x.length;
    Corruption c;
    c.input.assign(x.data, x.data + x.size());
    c.masked.assign(std::size_t(B * n), 0);
    c.times.resize(std::size_t(B));
    std::vector<std::pair<float, Index>> order(static_cast<std::size_t>(n));
    const RandomStream batch_draws = stream.fork(~std::uint64_t(0));
    c.self_condition = options_.self_cond && batch_draws.uniform(0) < options_.self_cond_train_prob;
    c.critic_temperature = batch_draws.uniform(1);
    c.critic_seed = batch_draws.bits64(2);
    // coin_flips: whether this batch keeps some tokens and whether it draws random ones
    const bool keep_some = options_.coin_flips && options_.no_replace_prob > 0 && batch_draws.uniform(3) < 0.5;
    const bool randomise = options_.coin_flips && options_.random_token_prob > 0 && batch_draws.uniform(4) < 0.5;
    for (Index b = 0; b < B; ++b) {
      const RandomStream row = stream.fork(std::uint64_t(net.sequence_offset() + b));  // the global row
      const double t = row.open_uniform(0);
      c.times[std::size_t(b)] = t;
      const Index k = std::clamp<Index>(Index(std::ceil(schedule(t) * double(n))), 1, n);
      for (Index j = 0; j < n; ++j) order[std::size_t(j)] = {row.uniform(std::uint64_t(1 + j)), j};
      std::partial_sort(order.begin(), order.begin() + k, order.end());  // k positions, uniformly chosen
      if (options_.coin_flips) {  // the first `kept` of the k (a uniform subset) keep their token, the next
                                  // `randomised` get a random id, the rest mask_id
        const double left = keep_some ? 1 - options_.no_replace_prob : 1.0;
        const Index kept = keep_some ? Index(std::ceil(double(k) * options_.no_replace_prob)) : 0;
        const Index randomised =
            randomise ? Index(std::ceil(double(k - kept) * options_.random_token_prob * left)) : 0;
        for (Index r = 0; r < k; ++r) {
          const Index j = order[std::size_t(r)].second, i = b * n + j;
          c.masked[std::size_t(i)] = 1;
          if (r < kept) continue;
          c.input[std::size_t(i)] = r < kept + randomised
                                        ? std::int32_t(row.below(std::uint64_t(1 + 2 * n + j), std::uint64_t(net.num_tokens())))
                                        : options_.mask_id;
        }
        continue;
      }
      for (Index r = 0; r < k; ++r) {
        const Index j = order[std::size_t(r)].second, i = b * n + j;
        c.masked[std::size_t(i)] = 1;
        const double u = row.open_uniform(std::uint64_t(1 + n + j));
        if (u < options_.no_replace_prob) continue;  // keeps its token
        if (u < options_.no_replace_prob + options_.random_token_prob) {
          auto id = std::int32_t(row.below(std::uint64_t(1 + 2 * n + j), std::uint64_t(net.num_tokens() - 1)));
          c.input[std::size_t(i)] = id >= options_.mask_id ? id + 1 : id;  // any token but mask_id
        } else {
          c.input[std::size_t(i)] = options_.mask_id;
        }
      }
    }
    return c;
  }

  /// Mean cross-entropy over the masked positions of x (batch, max_seq_len), corrupted inside.
  Loss operator()(TokensView x) {
    return (*this)(x, corrupt(x, RandomStream{net.dropout_seed(), 6}.fork(calls_++)));
  }
  /// The same for a given corruption of x (from corrupt()).
  Loss operator()(TokensView x, const Corruption& corruption) {
    check_batch(x);
    require(Index(corruption.input.size()) == x.size() && Index(corruption.masked.size()) == x.size(),
            "a corruption of ", corruption.input.size(), " tokens for a batch of ", x.size());
    targets_.assign(x.data, x.data + x.size());
    for (std::size_t i = 0; i < targets_.size(); ++i)
      if (!corruption.masked[i]) targets_[i] = ignore;
    const TokensView input{corruption.input.data(), x.batch, x.length};  // the net copies what it reads
    self_conditioned_ = corruption.self_condition;
    if (options_.self_cond) {
      if (self_conditioned_) {  // a first pass, detached
        auto h = net.embed(input);
        self_cond_input_.assign(h.data(), h.data() + h.size());
      } else {
        fill_null(x.batch * x.length);
      }
    }
    auto logits = options_.self_cond ? net.forward(input, {}, self_cond_sum(x.batch * x.length)) : net.forward(input);
    if constexpr (has_critic) sample_for_critic(x, corruption, logits);
    losses_.generator = kernel<typename Net::backend_type, ops::SoftmaxCrossEntropy>::run(
        logits, targets_.data(), ignore, net.output_gradient().data());
    double value = losses_.generator;
    if constexpr (has_critic) {
      losses_.critic = critic_loss();
      value += options_.critic_loss_weight * losses_.critic;
    }
    return Loss(value, this, &NonAutoregressiveWrapper::backward_of, net.forward_count());
  }

  /// `batch` sequences of max_seq_len tokens in options().steps parallel refinement steps; `prefix` (batch or 1
  /// rows, P < max_seq_len tokens) stays fixed at the start of every row. No mask_id remains.
  TokenBatch generate(Index batch, const NonAutoregressiveSampling& sampling = {}, TokensView prefix = {}) {
    require(batch > 0, "batch must be > 0, got ", batch);
    require(sampling.filter_thres >= 0 && sampling.filter_thres < 1, "filter_thres must be in [0, 1), got ",
            sampling.filter_thres);
    require(sampling.start_temperature >= 0, "start_temperature must be >= 0, got ", sampling.start_temperature);
    const Index L = net.max_seq_len(), V = net.num_tokens(), P = prefix.data ? prefix.length : 0;
    if (P > 0) {
      require(prefix.batch == batch || prefix.batch == 1, "prefix batch ", prefix.batch, " must be 1 or ", batch);
      require(P < L, "prefix length ", P, " must be < max_seq_len ", L);
      for (Index i = 0; i < prefix.size(); ++i)
        require(prefix.data[i] >= 0 && prefix.data[i] < V && prefix.data[i] != options_.mask_id, "prefix token ",
                prefix.data[i], " at position ", i % P, " is not a token id in [0, ", V, ") other than mask_id ",
                options_.mask_id);
    }
    const Index S = options_.steps, free = L - P;
    const std::uint64_t seed =
        sampling.seed ? *sampling.seed : RandomStream{net.dropout_seed(), 7}.bits64(generate_calls_++);
    const RandomStream stream{seed, 0x6E6172};
    struct RestoreMode {
      NonAutoregressiveWrapper& model;
      bool was_training;
      ~RestoreMode() { model.train(was_training); }
    } restore{*this, net.training()};
    eval();

    TokenBatch seq(batch, L, options_.mask_id);
    std::vector<std::uint8_t> mask(std::size_t(batch * L), 1);
    for (Index b = 0; b < batch; ++b)
      for (Index j = 0; j < P; ++j) {
        seq(b, j) = prefix.data[(prefix.batch == 1 ? 0 : b) * P + j];
        mask[std::size_t(b * L + j)] = 0;
      }
    // top-k over the V − 1 tokens other than mask_id
    const Index keep = std::min<Index>(
        V - 1, sampling.filter_thres > 0 ? Index(std::ceil((1 - sampling.filter_thres) * double(V))) : V);
    std::vector<scalar> filtered(static_cast<std::size_t>(V));
    std::vector<std::pair<double, Index>> scores(static_cast<std::size_t>(L));
    if (options_.self_cond) fill_null(batch * L);
    std::vector<Index> candidates_of_row(static_cast<std::size_t>(batch));
    // re-mask the `remask` highest scores of row b (never more than its candidates: a schedule may rise)
    auto remask_row = [&](Index b, Index candidates, Index remask) {
      const Index count = std::min(remask, candidates);
      std::partial_sort(scores.begin(), scores.begin() + count, scores.end(), std::greater<>());
      for (Index j = 0; j < L; ++j) mask[std::size_t(b * L + j)] = 0;
      for (Index r = 0; r < count; ++r) {
        const Index j = scores[std::size_t(r)].second;
        mask[std::size_t(b * L + j)] = 1;
        seq(b, j) = options_.mask_id;
      }
    };
    for (Index s = 0; s < S; ++s) {
      const Index remask = Index(schedule(double(s + 1) / double(S)) * double(free));  // ⌊γ(t_s) · free⌋
      const double temperature = std::max(sampling.start_temperature * double(S - 1 - s) / double(S), 1e-3);
      auto logits = options_.self_cond ? net.forward(seq, {}, self_cond_sum(batch * L)) : net.forward(seq);
      if (options_.self_cond) {  // this step's embeddings condition the next
        const auto h = net.embeddings();
        self_cond_input_.assign(h.data(), h.data() + h.size());
      }
      const RandomStream step = stream.fork(std::uint64_t(s));
      for (Index b = 0; b < batch; ++b) {
        Index candidates = 0;
        for (Index j = 0; j < L; ++j) {
          const Index i = b * L + j;
          scores[std::size_t(j)] = {-std::numeric_limits<double>::infinity(), j};
          if (!mask[std::size_t(i)] && !(options_.can_mask_prev_unmasked && j >= P)) continue;
          ++candidates;
          const scalar* row = logits.data() + i * V;
          // top-k filter: logits below the k-th largest are dropped
          std::copy_n(row, V, filtered.begin());
          filtered[std::size_t(options_.mask_id)] = -std::numeric_limits<scalar>::infinity();  // never sampled
          std::nth_element(filtered.begin(), filtered.begin() + (keep - 1), filtered.end(), std::greater<>());
          const scalar kth = filtered[std::size_t(keep - 1)];
          // Gumbel-max sample at `temperature`, and p(sampled) under the filtered softmax
          Index best = 0;
          double best_key = -std::numeric_limits<double>::infinity(), max_logit = best_key, sum = 0;
          auto allowed = [&](Index v) { return row[v] >= kth && v != options_.mask_id; };
          for (Index v = 0; v < V; ++v)
            if (allowed(v)) max_logit = std::max<double>(max_logit, row[v]);
          for (Index v = 0; v < V; ++v) {
            if (!allowed(v)) continue;
            sum += std::exp(double(row[v]) - max_logit);
            const double u = step.open_uniform(std::uint64_t(i * V + v));
            const double key = double(row[v]) / temperature - std::log(-std::log(u));
            if (key > best_key) best_key = key, best = v;
          }
          if (mask[std::size_t(i)]) seq(b, j) = std::int32_t(best);
          const double p = std::exp(double(row[seq(b, j)]) - max_logit) / sum;
          scores[std::size_t(j)] = {allowed(seq(b, j)) ? 1 - p : 1.0, j};  // higher: less confident
        }
        if constexpr (has_critic) candidates_of_row[std::size_t(b)] = candidates;
        else remask_row(b, candidates, remask);
      }
      if constexpr (has_critic) {  // the critic scores the whole new sequence: higher = more likely wrong
        auto critic_logits = token_critic.forward(seq);
        const double annealing = double(S - 1 - s) / double(S);
        for (Index b = 0; b < batch; ++b) {
          for (Index j = 0; j < L; ++j) {
            const Index i = b * L + j;
            if (!mask[std::size_t(i)] && !(options_.can_mask_prev_unmasked && j >= P)) {
              scores[std::size_t(j)] = {-std::numeric_limits<double>::infinity(), j};
              continue;
            }
            const double u = step.fork(1).open_uniform(std::uint64_t(i));
            scores[std::size_t(j)] = {double(critic_logits(i, 0)) -
                                          sampling.noise_level_scale * annealing * std::log(-std::log(u)),
                                      j};
          }
          remask_row(b, candidates_of_row[std::size_t(b)], remask);
        }
      }
    }
    return seq;
  }

 private:
  static constexpr std::int32_t ignore = -1;

  /// Samples the masked positions of the last generator forward for the critic: ŷ and its labels [ŷ ≠ x].
  void sample_for_critic(TokensView x, const Corruption& c, MatrixView<scalar> logits) {
    const Index N = x.size(), V = net.num_tokens();
    const double temperature = std::max(c.critic_temperature, 1e-10);
    const RandomStream noise{c.critic_seed, 0x637269};
    generated_.assign(x.data, x.data + N);
    critic_labels_.assign(std::size_t(N), 0);
    for (Index i = 0; i < N; ++i) {
      if (!c.masked[std::size_t(i)]) continue;
      Index best = 0;
      double best_key = -std::numeric_limits<double>::infinity();
      for (Index v = 0; v < V; ++v) {
        const double key = double(logits(i, v)) / temperature - std::log(-std::log(noise.open_uniform(std::uint64_t(i * V + v))));
        if (key > best_key) best_key = key, best = v;
      }
      generated_[std::size_t(i)] = std::int32_t(best);
      critic_labels_[std::size_t(i)] = generated_[std::size_t(i)] != x.data[i];
    }
  }
  /// Mean binary cross-entropy of the critic on ŷ; writes its gradient into the critic's output gradient.
  double critic_loss() {
    const Index N = Index(generated_.size());
    auto z = token_critic.forward({generated_.data(), N / net.max_seq_len(), net.max_seq_len()});
    auto dz = token_critic.output_gradient();
    double total = 0;
    for (Index i = 0; i < N; ++i) {
      const double zi = z(i, 0), y = critic_labels_[std::size_t(i)];
      total += std::max(zi, 0.0) - zi * y + std::log1p(std::exp(-std::abs(zi)));  // BCE with logits, stable
      dz(i, 0) = scalar((1 / (1 + std::exp(-zi)) - y) / double(N));
    }
    return total / double(N);
  }


  static NonAutoregressiveOptions validated(NonAutoregressiveOptions o, Index num_tokens) {
    require(o.mask_id >= 0 && o.mask_id < num_tokens, "mask_id ", o.mask_id, " must be a token id in [0, num_tokens ",
            num_tokens, ")");
    require(o.steps >= 1, "steps must be >= 1, got ", o.steps);
    require(bool(o.schedule), "schedule must be a function");
    require(o.no_replace_prob >= 0 && o.random_token_prob >= 0 && o.no_replace_prob + o.random_token_prob <= 1,
            "no_replace_prob ", o.no_replace_prob, " and random_token_prob ", o.random_token_prob,
            " must be >= 0 with a sum <= 1");
    require(num_tokens >= 2, "a vocabulary of num_tokens ", num_tokens, " has no token besides mask_id");
    require(o.self_cond_train_prob >= 0 && o.self_cond_train_prob <= 1, "self_cond_train_prob must be in [0, 1], got ",
            o.self_cond_train_prob);
    return o;
  }

  /// Every row of the self-conditioning input = null_embed.
  void fill_null(Index rows) {
    const Index D = net.config().layers.dim;
    const scalar* null = store_->value(null_embed_).data();
    self_cond_input_.resize(std::size_t(rows * D));
    for (Index r = 0; r < rows; ++r) std::copy_n(null, D, self_cond_input_.data() + r * D);
  }
  /// sum_embeds = e W_scᵀ (rows, D) for the self-conditioning input e.
  const scalar* self_cond_sum(Index rows) {
    const Index D = net.config().layers.dim;
    sum_embeds_.resize(std::size_t(rows * D));
    cpu::linear_forward<scalar>(ConstMatrixView<scalar>(self_cond_input_.data(), rows, D),
                                store_->value(to_self_cond_), MatrixView<scalar>(sum_embeds_.data(), rows, D));
    return sum_embeds_.data();
  }

  void check_batch(TokensView x) const {
    require(x.data != nullptr && x.batch > 0, "empty batch");
    require(x.length == net.max_seq_len(), "rows must be exactly max_seq_len ", net.max_seq_len(), " tokens, got ",
            x.length);
    for (Index i = 0; i < x.size(); ++i) {
      const std::int32_t id = x.data[i];
      require(id >= 0 && id < net.num_tokens(), "token id ", id, " outside [0, num_tokens ", net.num_tokens(),
              ") at batch ", i / x.length, ", position ", i % x.length);
      require(id != options_.mask_id, "the data contains mask_id ", id, " at batch ", i / x.length, ", position ",
              i % x.length, ": choose a mask_id the data never uses");
    }
  }

  static void backward_of(void* self, double scale, std::uint64_t forward_id) {
    auto& me = *static_cast<NonAutoregressiveWrapper*>(self);
    claim_backward(forward_id == me.net.forward_count(), forward_id, me.last_backward_);
    me.net.backward(scalar(scale));
    if constexpr (has_critic) me.token_critic.backward(scalar(scale * me.options_.critic_loss_weight));
    if (!me.options_.self_cond) return;
    // sum = e W_scᵀ: dW_sc += gᵀ e; e = null_embed in every row (not detached): d null_embed += (Σ_rows g) W_sc
    auto& store = *me.store_;
    const auto g = me.net.sum_embeds_gradient();
    const Index D = g.cols();
    const ConstMatrixView<scalar> e(me.self_cond_input_.data(), g.rows(), D);
    cpu::linear_backward_weight<scalar>(g, e, store.grad(me.to_self_cond_), scalar(1));
    if (!me.self_conditioned_)
      store.grad(me.null_embed_).noalias() += g.colwise().sum() * store.value(me.to_self_cond_);
  }

  ParameterId null_embed_, to_self_cond_;
  NonAutoregressiveOptions options_;
  std::vector<std::int32_t> targets_;
  std::vector<scalar> self_cond_input_, sum_embeds_;  // (rows, D)
  bool self_conditioned_ = false;
  std::vector<std::int32_t> generated_;        // token critic: ŷ
  std::vector<std::uint8_t> critic_labels_;    // [ŷ ≠ x]
  Losses losses_;
  std::uint64_t calls_ = 0, generate_calls_ = 0, last_backward_ = 0;
};

}  // namespace xtr
