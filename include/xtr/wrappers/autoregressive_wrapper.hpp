#pragma once
// AutoregressiveWrapper<Net>: next-token training and generation around a causal TransformerWrapper.
//   loss(x) = CE(net(x[:, :-1]), x[:, 1:]), x of shape (batch, seq_len + 1): the shift happens inside;
//   targets equal to ignore_index do not count; inputs equal to ignore_index are fed as pad_value.
// generate(prompts, n, sampling) returns the n new tokens of each row (KV cache on by default).
// Around a cross-attending decoder (Decoder<..., CrossAttend>) both take the context to attend to.
#include <cstdint>
#include <vector>

#include "xtr/backend/ops.hpp"
#include "xtr/core/tokens.hpp"
#include "xtr/generation/sampling.hpp"
#include "xtr/layers/transformer_wrapper.hpp"
#include "xtr/wrappers/loss.hpp"

namespace xtr {

/// x-transformers' AutoregressiveWrapper keywords.
struct AutoregressiveOptions {
  std::int32_t ignore_index = -100;
  std::int32_t pad_value = 0;
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
    auto logits = net_forward({input_.data(), B, T}, input_mask, context);
    const double value = kernel<typename Net::backend_type, ops::SoftmaxCrossEntropy>::run(
        logits, target_.data(), options_.ignore_index, net.output_gradient().data());
    return Loss(value, this, &AutoregressiveWrapper::backward_of, net.forward_count());
  }

  /// `length` new tokens after each prompt row (prompts: batch × prompt length, all rows the same length).
  TokenBatch generate(TokensView prompts, Index length, const Sampling& sampling = {}, Context context = {}) {
    check_context_given(context);
    require(prompts.data != nullptr && prompts.batch > 0 && prompts.length > 0, "empty prompt batch (",
            prompts.batch, ", ", prompts.length, ")");
    require(length >= 0, "length must be >= 0, got ", length);
    for (Index i = 0; i < prompts.size(); ++i)
      require(prompts.data[i] >= 0 && prompts.data[i] < net.num_tokens(), "prompt token id ", prompts.data[i],
              " outside [0, num_tokens ", net.num_tokens(), ") at batch ", i / prompts.length, ", position ",
              i % prompts.length);
    const Index B = prompts.batch, P = prompts.length, L = net.max_seq_len(), V = net.num_tokens();
    // validate the options before anything changes; without a seed, each call draws a fresh stream
    require(!sampling.bf16_weights || sampling.cache_kv,
            "bf16_weights applies to KV-cached decoding; set cache_kv = true");
    const std::uint64_t seed =
        sampling.seed ? *sampling.seed : RandomStream{net.dropout_seed(), 3}.bits64(generate_calls_++);
    Sampler sampler(sampling, V, seed);
    struct RestoreMode {           // eval() for generation; the caller's mode comes back even on an exception
      Net& net;
      bool was_training;
      ~RestoreMode() { net.train(was_training); }
    } restore{net, net.training()};
    net.eval();
    TokenBatch out(B, P + length);
    for (Index b = 0; b < B; ++b) std::copy_n(prompts.data + b * P, P, out.data.data() + b * (P + length));
    std::vector<std::uint8_t> done(std::size_t(B), 0);
    std::vector<std::int32_t> step(static_cast<std::size_t>(B));
    bool use_cache = sampling.cache_kv;
    auto cache = !use_cache ? typename Net::Cache{} : make_cache(B, context);
    if (sampling.bf16_weights) net.round_weights_to_bf16(cache);
    const scalar* logits = nullptr;  // (B, V): the last position of each row
    std::vector<std::int32_t> window;
    Index produced = 0;
    auto recompute = [&](Index cur) {  // logits of the last position from the last ≤ max_seq_len tokens
      const Index w = std::min(cur, L);
      window.resize(std::size_t(B * w));
      for (Index b = 0; b < B; ++b)
        std::copy_n(out.data.data() + b * (P + length) + cur - w, w, window.data() + b * w);
      auto all = net_forward({window.data(), B, w}, {}, context);
      last_rows_.resize(std::size_t(B * V));
      for (Index b = 0; b < B; ++b) std::copy_n(all.data() + (b * w + w - 1) * V, V, last_rows_.data() + b * V);
      return static_cast<const scalar*>(last_rows_.data());
    };
    if (use_cache && !net.can_decode(cache, std::min(P, L))) use_cache = false;
    if (length > 0) {
      if (use_cache) {
        const Index w = std::min(P, L);
        window.resize(std::size_t(B * w));
        for (Index b = 0; b < B; ++b) std::copy_n(prompts.data + b * P + P - w, w, window.data() + b * w);
        logits = net.forward_cached({window.data(), B, w}, cache).data();
      } else {
        logits = recompute(P);
      }
    }
    for (produced = 0; produced < length; ++produced) {
      bool all_done = true;
      for (Index b = 0; b < B; ++b) {
        const std::int32_t token = sampler(logits + b * V, std::uint64_t(produced * B + b));
        out(b, P + produced) = token;
        step[b] = token;
        if (sampling.eos_token && token == *sampling.eos_token) done[b] = 1;
        all_done = all_done && done[b];
      }
      if (produced + 1 == length || (sampling.eos_token && all_done)) break;
      const Index cur = P + produced + 1;
      if (use_cache && !net.can_decode(cache, 1)) use_cache = false;  // see forward_cached
      logits = use_cache ? net.forward_cached({step.data(), B, 1}, cache).data() : recompute(cur);
    }
    // new tokens only; after an eos, pad_value (x-transformers masks everything after the first eos)
    TokenBatch result(B, length, options_.pad_value);
    for (Index b = 0; b < B; ++b) {
      bool seen_eos = false;
      for (Index t = 0; t < length && t <= produced; ++t) {
        if (seen_eos) break;
        const std::int32_t token = out(b, P + t);
        result(b, t) = token;
        seen_eos = sampling.eos_token && token == *sampling.eos_token;
      }
    }
    return result;
  }

 private:
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
  typename Net::Cache make_cache(Index batch, Context context) const {
    if constexpr (cross_attends) {
      return net.make_cache(batch, context);
    } else {
      return net.make_cache(batch);
    }
  }

  static void backward_of(void* self, double scale, std::uint64_t forward_id) {
    auto& me = *static_cast<AutoregressiveWrapper*>(self);
    claim_backward(forward_id == me.net.forward_count(), forward_id, me.last_backward_);
    me.net.backward(scalar(scale));
  }

  AutoregressiveOptions options_;
  std::vector<std::int32_t> input_, target_;
  std::vector<std::uint8_t> input_mask_;
  std::vector<scalar> last_rows_;
  std::uint64_t generate_calls_ = 0;
  std::uint64_t last_backward_ = 0;  // forward pass whose backward has run
};

}  // namespace xtr
