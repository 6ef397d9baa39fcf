#pragma once
// TransformerWrapper<Layers, Backend>: the model, an orchestrator of typed sublayers (one file each):
//   x = Embedding(tokens)                                  layers/embedding.hpp        (B·T, D)
//   per layer, per sublayer f in the residual stream:      layers/block.hpp, residual.hpp
//     self-attention                                       layers/self_attention.hpp
//     cross-attention (CrossAttend)                        layers/cross_attention.hpp
//     feed-forward                                         layers/feedforward.hpp
//   h = final norm(x) (pre-norm stacks)                    layers/norm.hpp
//   logits = Logits(h)                                     layers/logits.hpp           (B·T, V)
// with the stack's score bias (ALiBi, T5, dynamic) computed once per pass (layers/score_bias.hpp) and num_memory_tokens
// learned rows before each sequence (the stack sees M + T rows per sequence; the output drops them).
// Every sublayer asks the backend for ops (kernel<Backend, Op>, backend/ops.hpp); nothing here computes. The forward
// fills a record of what the backward needs (per layer, a tuple of the sublayers' saved state); backward(dlogits, α)
// consumes it. Activations live in an arena reset at each forward, so a steady-state training step allocates nothing.
// Parameters carry x-transformers' state_dict names (`attn_layers.layers.0.1.to_q.weight`, ...).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "xtr/backend/cpu/backend.hpp"
#include "xtr/backend/ops.hpp"
#include "xtr/core/arena.hpp"
#include "xtr/core/parameters.hpp"
#include "xtr/core/rng.hpp"
#include "xtr/core/weight_format.hpp"
#include "xtr/core/tokens.hpp"
#include "xtr/layers/attention_layers.hpp"
#include "xtr/layers/block.hpp"
#include "xtr/layers/embedding.hpp"
#include "xtr/layers/kv_cache.hpp"
#include "xtr/layers/layer_inputs.hpp"
#include "xtr/layers/logits.hpp"
#include "xtr/layers/norm.hpp"
#include "xtr/layers/pass.hpp"
#include "xtr/layers/score_bias.hpp"

namespace xtr {

/// x-transformers' TransformerWrapper keywords; `layers` holds the attn_layers keywords.
struct TransformerConfig {
  Index num_tokens = 0;    // vocabulary size (required)
  Index max_seq_len = 0;   // longest sequence (required)
  double emb_dropout = 0;  // dropout on the summed embeddings
  LayersConfig layers{};
  std::uint64_t seed = 0;  // parameter initialisation and dropout streams
  bool return_only_embed = false;  // no to_logits: embed() only (x-transformers' return_only_embed, an encoder's)
  Index logits_dim = 0;            // outputs per position; 0 = num_tokens (x-transformers' logits_dim; 1: a critic)
  bool logits_bias = false;        // to_logits adds a bias (x-transformers before 1.27.0: nn.Linear with a bias)
  bool tie_embedding = false;      // logits = dim^-½ · h Eᵀ with the token embedding E; no to_logits
  bool post_emb_norm = false;      // a LayerNorm (gain stored as is) after the embeddings are summed
  bool l2norm_embed = false;       // l2-normalised token and position embeddings (init N(0, 1e-5))
  Index num_memory_tokens = 0;     // learned tokens before every sequence (`memory_tokens` (M, dim) ~ N(0, 1))

  static constexpr auto fields() {
    using C = TransformerConfig;
    return std::tuple{
        field("num_tokens", "num_tokens", &C::num_tokens, rules::positive, "vocabulary size"),
        field("max_seq_len", "max_seq_len", &C::max_seq_len, rules::positive, "longest sequence"),
        field("emb_dropout", "emb_dropout", &C::emb_dropout, rules::probability, "dropout on the embeddings"),
        field("return_only_embed", "return_only_embed", &C::return_only_embed, rules::any<bool>, "no to_logits"),
        field("logits_dim", "logits_dim", &C::logits_dim, rules::non_negative, "outputs per position; 0 = num_tokens"),
        field("logits_bias", "", &C::logits_bias, rules::any<bool>, "to_logits bias (releases before 1.27.0)"),
        field("tie_embedding", "tie_embedding", &C::tie_embedding, rules::any<bool>,
              "logits from the token embedding, scaled by dim^-1/2"),
        field("post_emb_norm", "post_emb_norm", &C::post_emb_norm, rules::any<bool>, "LayerNorm after the embedding"),
        field("l2norm_embed", "l2norm_embed", &C::l2norm_embed, rules::any<bool>, "l2-normalised embeddings"),
        field("num_memory_tokens", "num_memory_tokens", &C::num_memory_tokens, rules::non_negative,
              "learned tokens before every sequence")};
  }
};

template <LayerStack Layers, class Backend = Cpu<float>>
class TransformerWrapper {
  static_assert(xtr::Backend<Backend> && (std::is_same_v<typename Backend::scalar, float> ||
                                          std::is_same_v<typename Backend::scalar, double>),
                "xtr: TransformerWrapper computes in float or double: use Cpu<float>, Cpu<double>, Reference<float> "
                "or Reference<double>");
  static_assert(Positions::contains<typename Layers::position> ||
                    std::is_same_v<typename Layers::position, AnyPosition>,
                "xtr: the Cpu backend implements the positions AbsoluteLearned, Rotary and NoPosition; add a kernel "
                "for this position policy or use one of those");
  static_assert(ScoreBiases::contains<typename Layers::score_bias> ||
                    std::is_same_v<typename Layers::score_bias, AnyScoreBias>,
                "xtr: the score-bias sublayer computes the tables of the score biases of policies/any.hpp's "
                "ScoreBiases (NoScoreBias, ALiBi, RelativePositionBias, DynamicPositionBias); add this score bias's "
                "table to layers/score_bias.hpp and its name to that list, or use one of those");
  static_assert(Layers::self_attend || !std::is_same_v<typename Layers::position, Rotary>,
                "xtr: a CrossAttender has no self-attention for Rotary to act on; use AbsoluteLearned or NoPosition");

 public:
  using scalar = typename Backend::scalar;
  using layers_type = Layers;
  using backend_type = Backend;
  using Position = typename Layers::position;
  using Norm = typename Layers::norm;
  using FeedForward = typename Layers::feedforward;
  using ScoreBias = typename Layers::score_bias;
  using Cache = KVCache<scalar>;
  /// What the model type fixes (an AnyPosition slot fixes neither: see uses_rotary(), uses_absolute_positions()).
  static constexpr bool has_absolute_positions = std::is_same_v<Position, AbsoluteLearned>;
  static constexpr bool has_rotary = std::is_same_v<Position, Rotary>;

  explicit TransformerWrapper(TransformerConfig config)
      : config_(validated(config)), owned_params_(std::make_unique<ParameterStore<T>>(memory_of<Backend>())),
        params_(owned_params_.get()) {
    register_parameters("", std::nullopt);
    params_->allocate(config_.seed);
  }

  /// A part of a larger model (XTransformer): registers the parameters in `store` under `prefix`; the owner
  /// allocates the store and keeps it alive. With `tied_token_emb`, that parameter is also this model's token
  /// embedding (x-transformers' tie_token_emb).
  TransformerWrapper(TransformerConfig config, ParameterStore<scalar>& store, const std::string& prefix,
                     std::optional<ParameterId> tied_token_emb = std::nullopt)
      : config_(validated(config)), params_(&store) {
    register_parameters(prefix, tied_token_emb);
  }

  // Copies share no state with the original (the arena is per model). A part of a larger model copies the pointer to
  // its store: the owner copies the store and calls rebind_parameters().
  TransformerWrapper(const TransformerWrapper& other)
      : config_(other.config_),
        owned_params_(other.owned_params_ ? std::make_unique<ParameterStore<T>>(*other.owned_params_) : nullptr),
        params_(owned_params_ ? owned_params_.get() : other.params_), position_kind_(other.position_kind_),
        embedding_(other.embedding_), memory_tokens_(other.memory_tokens_), score_bias_(other.score_bias_),
        blocks_(other.blocks_), final_norm_(other.final_norm_), logits_(other.logits_), rotary_(other.rotary_),
        training_(other.training_), dropout_seed_(other.dropout_seed_), forward_count_(other.forward_count_),
        sequence_offset_(other.sequence_offset_), decode_weights_(other.decode_weights_), automatic_(other.automatic_),
        stages_(other.stages_) {}  // the copy has no gradient hook
  // Moves keep the arena (its blocks do not move, so saved activations stay valid).
  TransformerWrapper(TransformerWrapper&&) noexcept = default;

  /// Points a part of a larger model at `store` (a copy of the one it was registered in).
  void rebind_parameters(ParameterStore<scalar>& store) {
    require(!owned_params_, "rebind_parameters() is for parts of a larger model; this model owns its parameters");
    params_ = &store;
  }
  [[nodiscard]] ParameterId token_embedding() const { return embedding_.token(); }

  [[nodiscard]] const TransformerConfig& config() const { return config_; }
  [[nodiscard]] ParameterStore<scalar>& parameters() { return *params_; }
  [[nodiscard]] const ParameterStore<scalar>& parameters() const { return *params_; }
  [[nodiscard]] Index num_tokens() const { return config_.num_tokens; }
  /// Outputs per position: num_tokens unless config.logits_dim says otherwise.
  [[nodiscard]] Index logits_dim() const { return config_.logits_dim ? config_.logits_dim : config_.num_tokens; }
  [[nodiscard]] Index max_seq_len() const { return config_.max_seq_len; }
  [[nodiscard]] Index kv_heads() const { return config_.layers.kv_heads ? config_.layers.kv_heads : config_.layers.heads; }
  /// x-transformers projects the heads' output back to dim only when heads > 1; one head of width dim is added to
  /// the residual stream as it is.
  [[nodiscard]] bool has_out_projection() const { return config_.layers.heads > 1; }
  [[nodiscard]] Index rotary_dim() const {
    return config_.layers.rotary_dim ? config_.layers.rotary_dim : config_.layers.dim_head / 2;
  }
  [[nodiscard]] Index dim_context() const {
    return config_.layers.dim_context ? config_.layers.dim_context : config_.layers.dim;
  }
  /// The position encoding and score bias the model runs (an Any slot's choice, or the static one).
  [[nodiscard]] std::string_view position_policy() const { return policy_name<Position>(position_kind_); }
  [[nodiscard]] bool uses_rotary() const { return position_policy() == Rotary::name; }
  [[nodiscard]] bool uses_absolute_positions() const { return position_policy() == AbsoluteLearned::name; }
  [[nodiscard]] std::string_view score_bias_policy() const { return score_bias_.policy(); }
  [[nodiscard]] std::string_view norm_policy() const {
    return policy_name<Norm>(resolve_policy<Norm>(config_.layers.policies.norm, "layers.policies.norm"));
  }
  /// The rotary table's description (θ after rescaling, interpolation, xpos).
  [[nodiscard]] ops::RotarySpec rotary_spec() const {
    const auto& L = config_.layers;
    return {.dim = rotary_dim(), .theta = L.rotary_theta, .interpolation_factor = L.rotary.interpolation_factor,
            .base_rescale_factor = L.rotary.base_rescale_factor,
            .xpos_scale_base = L.rotary.xpos ? L.rotary.xpos_scale_base : 0.0};
  }
  /// Whether forward_cached() can append n tokens to `cache`: absolute positions end at max_seq_len, and with memory
  /// tokens (which stay at the start of the cache) the window does not slide.
  [[nodiscard]] bool can_decode(const Cache& cache, Index n) const {
    const Index M = memory_in(cache);
    if (uses_absolute_positions() && cache.position - M + n > config_.max_seq_len) return false;
    if (config_.num_memory_tokens > 0 && cache.position - M + n > config_.max_seq_len) return false;
    return true;
  }

  /// Training mode enables dropout (PyTorch's module.train() / module.eval()).
  void train(bool on = true) { training_ = on; }
  void eval() { training_ = false; }
  [[nodiscard]] bool training() const { return training_; }

  /// Forward passes so far; a backward must follow the forward it differentiates.
  [[nodiscard]] std::uint64_t forward_count() const { return forward_count_; }
  /// Dropout masks (and the wrappers' own draws) come from (dropout_seed, forward pass, site): saving both resumes a
  /// run exactly.
  [[nodiscard]] std::uint64_t dropout_seed() const { return dropout_seed_; }
  void set_random_state(std::uint64_t dropout_seed, std::uint64_t forward_count) {
    dropout_seed_ = dropout_seed;
    forward_count_ = forward_count;
  }
  void set_forward_count(std::uint64_t n) { forward_count_ = n; }
  /// Everything its random draws depend on besides the seed: {dropout_seed, forward_count} (checkpoints).
  [[nodiscard]] std::vector<std::uint64_t> random_state() const { return {dropout_seed_, forward_count_}; }
  void set_random_state(std::span<const std::uint64_t> state) {
    require(state.size() == 2, describe(), " has a random state of 2 counters, got ", state.size());
    set_random_state(state[0], state[1]);
  }

  /// Data-parallel training: this model's batches are rows first, first + 1, … of a global batch. Dropout (and the
  /// wrappers' per-row draws) address rows by their global index, so ranks together draw what one process with the
  /// whole batch draws. 0 (the default) for a model that sees whole batches.
  void set_sequence_offset(Index first) {
    require(first >= 0, "sequence offset ", first, " must be >= 0");
    sequence_offset_ = first;
  }
  [[nodiscard]] Index sequence_offset() const { return sequence_offset_; }

  /// Called during backward() with [begin, end) of the parameter store's flat gradient buffer each time the
  /// gradients there are final for this backward (in backward order: logits, final norm, the last layer … the first,
  /// the score-bias table, then memory tokens and embeddings, which a tied logits layer also writes). A
  /// data-parallel reducer starts all-reducing a bucket while the earlier layers' backward still runs. An empty
  /// function removes the hook; copies of the model have none.
  using GradientReadyHook = std::function<void(Index begin, Index end)>;
  void on_gradients_ready(GradientReadyHook hook) { gradient_ready_ = std::move(hook); }

  /// The activation arena (tests check that a steady-state step makes no heap allocation).
  [[nodiscard]] const Arena& activation_arena() const { return arena_; }

  /// What the model type resolved to.
  static std::string describe() {
    return "TransformerWrapper<" + Layers::describe() + ", " + std::string(Backend::name) + ">";
  }

  /// Logits (batch·length, num_tokens) for `tokens` (batch, length ≤ max_seq_len); `mask` (batch, length) marks the
  /// keys to attend to. The view stays valid until the next forward; activations are kept for backward().
  MatrixView<scalar> forward(TokensView tokens, MaskView mask = {})
    requires(!Layers::cross_attend)
  {
    return forward_to(Output::logits, tokens, mask, {});
  }
  /// The same for a cross-attending stack, attending to `context` (batch, context length, dim_context).
  MatrixView<scalar> forward(TokensView tokens, MaskView mask, ContextView<scalar> context)
    requires(Layers::cross_attend)
  {
    return forward_to(Output::logits, tokens, mask, context);
  }

  /// forward() with x-transformers' self_attn_kv_mask (batch, length): self-attention hides the keys at 0 from every
  /// query (unlike `mask`, the query rows are not zeroed); AutoregressiveWrapper's mask_prob draws it.
  MatrixView<scalar> forward_with_kv_mask(TokensView tokens, MaskView mask, MaskView self_attn_kv_mask,
                                          ContextView<scalar> context = {}) {
    require(!self_attn_kv_mask.empty(), "forward_with_kv_mask: self_attn_kv_mask is empty");
    if constexpr (!Layers::cross_attend) require(context.empty(), "a context was given, but the stack does not cross-attend");
    require(self_attn_kv_mask.batch == tokens.batch && self_attn_kv_mask.length == tokens.length,
            "self_attn_kv_mask shape (", self_attn_kv_mask.batch, ", ", self_attn_kv_mask.length,
            ") does not match tokens (", tokens.batch, ", ", tokens.length, ")");
    return forward_to(Output::logits, tokens, mask, context, nullptr, self_attn_kv_mask);
  }

  /// Logits of left-padded sequences (x-transformers' seq_start_pos): row b's tokens before seq_start_pos[b] are
  /// padding — hidden as keys, zero as queries — and with absolute positions its token t sits at position
  /// t − seq_start_pos[b], so each row computes what it would alone. For generation: no backward() follows.
  MatrixView<scalar> forward_left_padded(TokensView tokens, std::span<const Index> seq_start_pos,
                                         ContextView<scalar> context = {}) {
    check_starts(tokens.batch, tokens.length, seq_start_pos);
    if constexpr (!Layers::cross_attend) require(context.empty(), "a context was given, but the stack does not cross-attend");
    left_pad_mask_.assign(std::size_t(tokens.batch * tokens.length), 1);
    for (Index b = 0; b < tokens.batch; ++b)
      std::fill_n(left_pad_mask_.data() + b * tokens.length, seq_start_pos[std::size_t(b)], std::uint8_t(0));
    return forward_to(Output::logits, tokens, {left_pad_mask_.data(), tokens.batch, tokens.length}, context, nullptr,
                      {}, seq_start_pos.data());
  }

  /// forward() with `sum_embeds` (batch·length, dim) added to the token (and position) embeddings before dropout
  /// (x-transformers' sum_embeds, used for self-conditioning); after backward(), sum_embeds_gradient().
  MatrixView<scalar> forward(TokensView tokens, MaskView mask, const scalar* sum_embeds)
    requires(!Layers::cross_attend)
  {
    require(sum_embeds != nullptr, "sum_embeds is null");
    return forward_to(Output::logits, tokens, mask, {}, sum_embeds);
  }
  /// d loss / d sum_embeds (batch·length, dim) of the last backward, valid until the next forward.
  [[nodiscard]] MatrixView<scalar> sum_embeds_gradient() {
    require(record_.sum_embeds_grad != nullptr, "sum_embeds_gradient() needs a backward() of a forward with sum_embeds");
    return {record_.sum_embeds_grad, record_.batch * record_.length, config_.layers.dim};
  }
  /// The final-normed hidden states of the last forward (batch·length, dim), e.g. for self-conditioning.
  [[nodiscard]] MatrixView<scalar> embeddings() {
    require(record_.final_h != nullptr, "embeddings() needs a forward() first");
    return {record_.final_h, record_.batch * record_.length, config_.layers.dim};
  }

  /// The final-normed hidden states (batch·length, dim) instead of logits (x-transformers' return_embeddings), kept
  /// for backward() like the logits.
  MatrixView<scalar> embed(TokensView tokens, MaskView mask = {})
    requires(!Layers::cross_attend)
  {
    return forward_to(Output::embeddings, tokens, mask, {});
  }
  MatrixView<scalar> embed(TokensView tokens, MaskView mask, ContextView<scalar> context)
    requires(Layers::cross_attend)
  {
    return forward_to(Output::embeddings, tokens, mask, context);
  }

  /// Logits of the last forward (batch·length, logits_dim).
  [[nodiscard]] MatrixView<scalar> logits() {
    require(record_.logits != nullptr, "logits() needs a forward() first (embed() and generation keep no logits)");
    return {record_.logits, record_.batch * record_.length, logits_dim()};
  }

  /// A buffer shaped like the last forward's output (logits, or embeddings after embed()) for d loss / d output, in
  /// the activation arena; valid until the next forward.
  [[nodiscard]] MatrixView<scalar> output_gradient() {
    require(record_.final_h != nullptr, "output_gradient() needs a forward() first");
    if (!record_.output_grad) record_.output_grad = arena_.allocate<T>(record_.batch * record_.length * output_cols());
    return {record_.output_grad, record_.batch * record_.length, output_cols()};
  }

  /// Backward of the last forward() or embed(): `doutput` (batch·length, logits_dim or dim) is d loss / d output;
  /// parameter gradients += α · grad, and with a context, context_gradient() += α · grad.
  void backward(ConstView<scalar> doutput, scalar alpha);
  /// backward(output_gradient(), α) after a loss wrote its gradient there; or, for a custom loss, backward of the
  /// view forward() / embed() returned, the caller having overwritten it with d loss / d output.
  void backward(scalar alpha) {
    require(record_.final_h != nullptr, "backward() needs a training forward() first (or embed(); generation keeps no "
            "activations)");
    const Index rows = record_.batch * record_.length;
    const T* d = record_.output_grad ? record_.output_grad : record_.output == Output::logits ? record_.logits
                                                                                              : record_.final_h;
    backward(ConstView<T>(d, rows, output_cols()), alpha);
  }

  /// d loss / d context of the last backward (batch·context length, dim_context), valid until the next forward.
  [[nodiscard]] MatrixView<scalar> context_gradient()
    requires(Layers::cross_attend)
  {
    require(record_.context_grad != nullptr, "context_gradient() needs a backward() first");
    return {record_.context_grad, record_.batch * record_.context_length, dim_context()};
  }

  /// A cache for generating `batch` sequences. `rows`: the tokens per sequence the caller expects to decode (prompt
  /// and new ones; 0: unknown): the buffer starts that large (at most its full size, 2 · max_seq_len) and grows
  /// beyond it as forward_cached needs (KVCache::make_room).
  [[nodiscard]] Cache make_cache(Index batch, Index rows = 0) const
    requires(Layers::causal && !Layers::cross_attend)
  {
    return empty_cache(batch, rows);
  }
  /// A cache for generating `batch` sequences that cross-attend to `context`: its keys and values are projected
  /// here, once per sequence, and read at every step. `rows` as above.
  [[nodiscard]] Cache make_cache(Index batch, ContextView<scalar> context, Index rows = 0) const
    requires(Layers::causal && Layers::cross_attend)
  {
    require(context.batch == batch, "context batch ", context.batch, " does not match the cache batch ", batch);
    check_context(batch, context);
    Cache c = empty_cache(batch, rows);
    const Index S = context.length, KD = kv_heads() * config_.layers.dim_head;
    c.context_length = S;
    if (!context.mask.empty()) c.context_mask.assign(context.mask.data, context.mask.data + batch * S);
    Arena scratch(memory_of<Backend>());
    Pass<Backend> pass{scratch, *params_};
    for (const auto& block : blocks_) {
      Tensor<T>& kv = c.context_kv.emplace_back(Shape{batch, S, 2 * KD}, memory_of<Backend>());
      block.cross_attention().project_context(pass, ConstView<T>(context.data, batch * S, dim_context()),
                                              View<T>(kv.data(), batch * S, 2 * KD));
    }
    return c;
  }

  /// Makes forward_cached() read the matrices of a copy of the parameters rounded to bfloat16: half the bytes per
  /// decoded token (decoding is bound by reading the weights); the logits change by the rounding (relative ~1e-2).
  void round_weights_to_bf16(Cache& cache) const
    requires(Layers::causal)
  {
    const T* w = params_->values().data();
    cache.bf16_weights.resize(std::size_t(params_->count()));
    cpu::parallel_rows(params_->count(), 4, [&](Index begin, Index end) {
      for (Index i = begin; i < end; ++i) cache.bf16_weights[std::size_t(i)] = cpu::float_to_bf16(float(w[i]));
    });
  }

  /// Makes KV-cached decoding read the weight matrices in `format` from now on (WeightFormat::f32: the parameters
  /// themselves): a copy made once (core/weight_format.hpp), kept until the next quantize(). int8 and q4 quantise per
  /// `group` values of a row. Training afterwards makes the copy stale, and decoding then refuses it (re-quantize).
  /// An explicit choice: it overrides the automatic one (below) until automatic_decode_weights() is called.
  /// `activations` (int8 and q4 only): what the weights multiply — ActivationFormat::automatic is int8 where the
  /// build has the integer kernel (AVX512-VNNI) and float elsewhere, XTR_DECODE_ACTIVATIONS overriding it.
  void quantize(WeightFormat format, Index group = WeightCopy::kDefaultGroup,
                ActivationFormat activations = ActivationFormat::automatic) {
    decode_weights_ = make_copy(format, group, activations);
    automatic_ = false;
  }
  /// Uses `copy` (loaded with io/quantized.hpp) for decoding; it must belong to these parameters.
  void use_weights(std::shared_ptr<const WeightCopy> copy) {
    require(!copy || !copy->stale(*params_), "the weight copy was not made from this model's parameters");
    decode_weights_ = std::move(copy);
    automatic_ = false;
  }
  /// Back to the default: until quantize() or use_weights(), KV-cached decoding of a Cpu<float> model reads bfloat16
  /// weights when its float weights exceed the last-level cache and float weights otherwise
  /// (xtr::automatic_decode_weights, overridden by the environment variable XTR_DECODE_WEIGHTS); the bfloat16 copy is
  /// made at the first decoding step and again after training changed the parameters.
  void automatic_decode_weights() {
    automatic_ = true;
    decode_weights_ = nullptr;
  }
  /// What the caches made from now on (make_cache(), every generate()) keep keys and values in: KVFormat::f32 (the
  /// default: the model's scalar type) or f16 (half the bytes each decoding step's attention reads; backends whose
  /// attention reads halves only, ops::HalfKeyValues).
  void use_kv_format(KVFormat format) {
    if constexpr (!ops::HalfKeyValues<kernel<Backend, ops::Attention<typename Layers::score_bias>>, T>)
      require(format == KVFormat::f32, "an f16 KV cache needs a backend whose attention reads halves (the CPU "
              "backend); this model runs on ", Backend::name);
    kv_format_ = format;
  }
  [[nodiscard]] KVFormat kv_format() const { return kv_format_; }
  /// The decoding copy, or null (float weights).
  [[nodiscard]] const std::shared_ptr<const WeightCopy>& decode_weights() const { return decode_weights_; }
  /// The format KV-cached decoding reads the weights in (the automatic choice included: see decoding()).
  [[nodiscard]] WeightFormat weight_format() const {
    if (automatic_) return decode_format();
    return decode_weights_ ? decode_weights_->format : WeightFormat::f32;
  }
  /// The format KV-cached decoding reads and why, e.g. "bf16 (automatic: 300.0 MiB of float weights > 260.0 MiB
  /// last-level cache)" or "int8, groups of 32 (quantize())": the examples print it with the model.
  /// An f16 KV cache (use_kv_format) adds "; f16 KV cache".
  [[nodiscard]] std::string decoding() const {
    const std::string cache = kv_format_ == KVFormat::f16 ? "; f16 KV cache" : "";
    if (automatic_) {
      const auto choice = decode_choice();
      return std::string(format_name(choice.format)) + " (" + choice.reason + ")" + cache;
    }
    if (!decode_weights_) return "f32 (quantize())" + cache;
    std::string text(format_name(decode_weights_->format));
    if (decode_weights_->quantized())
      text += ", groups of " + std::to_string(decode_weights_->group) + ", " +
              std::string(activation_name(decode_weights_->activations)) + " activations";
    return text + " (quantize())" + cache;
  }

  /// Appends `tokens` (batch, n) to the cached sequence and returns the logits of the last `outputs` new positions
  /// (batch · outputs, V; speculative decoding verifies several). Rotary and position-free stacks slide past
  /// max_seq_len (the oldest keys drop out); AbsoluteLearned cannot, nor can a model with memory tokens (can_decode()
  /// tells; the first call also puts the memory tokens in the cache).
  MatrixView<scalar> forward_cached(TokensView tokens, Cache& cache, Index outputs = 1)
    requires(Layers::causal);
  /// Forgets the last n tokens of the cache (speculative decoding's rejected drafts). Exact while the sequence has
  /// stayed within max_seq_len (nothing slid out of the window: keys that did are not restored).
  void rewind(Cache& cache, Index n) const
    requires(Layers::causal)
  {
    require(n >= 0 && n <= cache.length - memory_in(cache), "rewind: ", n, " tokens, the cache holds ",
            cache.length - memory_in(cache));
    cache.length -= n;
    cache.position -= n;
  }

 private:
  using T = scalar;
  using RotaryTable = typename kernel<Backend, ops::Rotate>::Table;
  using ScoreBiasSublayer = ScoreBiasLayer<ScoreBias, Backend>;
  enum class Output { logits, embeddings };

  /// The last forward: what backward() reads (arena memory, valid until the next forward).
  struct Record {
    Output output = Output::logits;
    Index batch = 0, length = 0, context_length = 0;
    Index stack_length = 0;                 // rows per sequence in the stack: num_memory_tokens + length
    std::int32_t* ids = nullptr;
    std::uint8_t* mask = nullptr;           // (B, stack_length) or null
    std::uint8_t* self_key_mask = nullptr;  // (B, stack_length): the keys self-attention sees, when not `mask`
    bool dropout = false;
    bool left_padded = false;               // forward_left_padded(): no backward
    T* context = nullptr;                   // (B·S, dim_context), a copy of the context
    std::uint8_t* context_mask = nullptr;   // (B, S) or null
    typename Embedding<Backend>::Saved embedding;
    typename ScoreBiasSublayer::Saved score_bias;
    std::vector<typename Block<Layers, Backend>::Saved> layers;  // per layer (capacity kept across forwards)
    typename NormLayer<Norm, Backend>::Saved final_norm;
    ConstView<T> first_values{};            // value residual: the first layer's values
    T* final_h = nullptr;                   // (B·T, D)
    T* logits = nullptr;                    // (B·T, V)
    T* output_grad = nullptr;               // output_gradient()
    bool has_sum_embeds = false;
    T* sum_embeds_grad = nullptr;           // after backward()
    T* context_grad = nullptr;              // after backward()
    T* score_bias_grad = nullptr;           // during backward(): Σ over layers of d table
    T* first_values_grad = nullptr;         // during backward(): Σ over later layers of d v₁
  };

  [[nodiscard]] Index output_cols() const {
    return record_.output == Output::logits ? logits_dim() : config_.layers.dim;
  }
  [[nodiscard]] NormPlacement placement() const {
    return !config_.layers.pre_norm ? NormPlacement::post
                                    : config_.layers.sandwich_norm ? NormPlacement::sandwich : NormPlacement::pre;
  }
  [[nodiscard]] bool has_final_norm() const { return config_.layers.pre_norm; }
  /// Memory-token rows the cache holds (put there by the first decoding step).
  [[nodiscard]] Index memory_in(const Cache& cache) const { return cache.position > 0 ? config_.num_memory_tokens : 0; }

  /// Registers every parameter in x-transformers' names (block i = the i-th sublayer).
  void register_parameters(const std::string& prefix, std::optional<ParameterId> tied_token_emb) {
    const auto& L = config_.layers;
    auto& store = *params_;
    position_kind_ = resolve_policy<Position>(L.policies.position, "layers.policies.position");
    stages_.embedding.begin = store.count();
    embedding_.declare(store, prefix, config_.num_tokens, config_.max_seq_len, L.dim, tied_token_emb,
                       {.absolute = uses_absolute_positions(), .l2norm = config_.l2norm_embed,
                        .post_norm = config_.post_emb_norm});
    if (config_.num_memory_tokens > 0)
      memory_tokens_ = store.add(prefix + "memory_tokens", {config_.num_memory_tokens, L.dim}, Init::normal_std(1.0));
    stages_.embedding.end = store.count();
    const NormStorage storage{L.norm_unit_offset, L.norm_bias, L.policies.norm};
    blocks_.resize(std::size_t(L.depth));
    stages_.blocks.resize(std::size_t(L.depth));
    for (Index l = 0; l < L.depth; ++l) {
      stages_.blocks[std::size_t(l)].begin = store.count();
      blocks_[std::size_t(l)].declare(store, prefix, l, L, kv_heads(), dim_context(), placement(), storage);
      stages_.blocks[std::size_t(l)].end = store.count();
    }
    stages_.final_norm.begin = store.count();
    if (has_final_norm()) final_norm_.declare(store, prefix + "attn_layers.final_norm", L.dim, storage);
    stages_.final_norm.end = stages_.score_bias.begin = store.count();
    score_bias_.declare(store, prefix, L, Layers::causal);
    stages_.score_bias.end = stages_.logits.begin = store.count();
    if (!config_.return_only_embed)
      logits_.declare(store, prefix, logits_dim(), L.dim, config_.logits_bias,
                      config_.tie_embedding ? std::optional(embedding_.token()) : std::nullopt);
    stages_.logits.end = store.count();
    if (uses_rotary()) rotary_ = kernel<Backend, ops::Rotate>::make_table(rotary_spec(), config_.max_seq_len);
    validate_combination();
  }

  /// Every field within its rule, then what only the combination decides.
  static TransformerConfig validated(TransformerConfig c) {
    const auto& L = c.layers;
    check_fields(c, "");
    check_fields(L, "layers.");
    LayersConfig::for_each_policy_options(L, [&](std::string_view key, const auto& options) {
      check_fields(options, ("layers." + std::string(key) + ".").c_str());
    });
    const Index kv = L.kv_heads ? L.kv_heads : L.heads;
    require(kv > 0 && L.heads % kv == 0, "layers.heads ", L.heads, " must be a multiple of layers.kv_heads ", kv);
    require(L.heads > 1 || L.dim_head == L.dim, "with heads = 1 there is no output projection (as in x-transformers), "
            "so dim_head ", L.dim_head, " must equal dim ", L.dim);
    require(!c.logits_bias || !c.return_only_embed, "logits_bias without to_logits (return_only_embed)");
    require(L.pre_norm || !L.sandwich_norm, "layers.sandwich_norm needs layers.pre_norm (x-transformers asserts the "
            "same): a post-norm stack has no sandwich");
    require(!c.tie_embedding || (!c.return_only_embed && (c.logits_dim == 0 || c.logits_dim == c.num_tokens)),
            "tie_embedding makes the logits from the token embedding: it needs to_logits over the vocabulary (logits_dim ",
            c.logits_dim, ", return_only_embed ", c.return_only_embed, ")");
    const auto& A = L.attention;
    require(!A.qk_norm || (L.dim_head % A.qk_norm_groups == 0 && L.dim_head / A.qk_norm_groups > 2),
            "layers.attention.qk_norm_groups ", A.qk_norm_groups, " must divide dim_head ", L.dim_head,
            " into groups of more than 2 channels");
    require(!A.value_residual || !A.learned_value_residual_mix || kv == L.heads,
            "layers.attention.value_residual with learned_value_residual_mix needs kv_heads = heads (x-transformers "
            "fails on grouped-query attention there); kv_heads ", kv, ", heads ", L.heads,
            " (set learned_value_residual_mix = false for a fixed 0.5 mix)");
    LayersConfig::for_each_policy_options(L, [&](std::string_view, const auto& options) {
      if constexpr (requires { options.check(L); }) options.check(L);  // what a policy's options say of the stack
    });
    if constexpr (Layers::cross_attend)
      require(!A.qk_norm && A.num_mem_kv == 0 && !A.gate_values && !A.head_scale && !A.value_residual,
              "the attention options (qk_norm, num_mem_kv, gate_values, head_scale, value_residual) are not supported "
              "in a cross-attending stack yet");
    return c;
  }
  /// What depends on the resolved policies.
  void validate_combination() const {
    const auto& L = config_.layers;
    const std::string_view bias = score_bias_.policy();
    require(!L.norm_bias || norm_policy() == LayerNorm::name, "layers.norm_bias is a LayerNorm bias; ", norm_policy(),
            " has none");
    if (uses_rotary()) {
      const Index r = rotary_dim();
      require(r % 2 == 0 && r >= 2 && r <= L.dim_head, "layers.rotary_dim ", r,
              " must be even, at least 2 and at most dim_head ", L.dim_head);
      require(!L.rotary.xpos || Layers::causal, "layers.rotary.xpos is for causal stacks (x-transformers: not "
              "compatible with bidirectional attention)");
      require(!L.rotary.xpos || L.attention.num_mem_kv == 0, "layers.rotary.xpos with attention.num_mem_kv: the "
              "unscaled memory keys make x-transformers' scores depend on the sequence length, which xtr does not "
              "reproduce");
      require(L.rotary.base_rescale_factor == 1 || r > 2, "layers.rotary.base_rescale_factor needs rotary_dim > 2");
      require(score_bias_.with_rotary(), "Rotary with ", bias,
              ": x-transformers cannot run this combination (only ALiBi goes with custom positions)");
    }
    require(Layers::self_attend || bias == NoScoreBias::name, "a CrossAttender has no self-attention for ", bias);
  }
  template <class S>
  static void check_fields(const S& s, const char* prefix) {
    for_each_field<S>([&](const auto& f) {
      const auto value = s.*(f.member);
      const char* rule = f.rule(value);
      require(rule == nullptr, prefix, f.name, " ", rule ? rule : "", ", got ", value);
    });
  }

  void check_tokens(TokensView tokens, MaskView mask) const {
    require(tokens.data != nullptr && tokens.batch > 0 && tokens.length > 0, "empty token batch (", tokens.batch, ", ",
            tokens.length, ")");
    require(tokens.length <= config_.max_seq_len, "sequence length ", tokens.length, " > max_seq_len ",
            config_.max_seq_len);
    for (Index b = 0; b < tokens.batch; ++b)
      for (Index t = 0; t < tokens.length; ++t) {
        const std::int32_t id = tokens(b, t);
        require(id >= 0 && id < config_.num_tokens, "token id ", id, (id < 0 ? " < 0" : " >= num_tokens "),
                (id < 0 ? std::string() : std::to_string(config_.num_tokens)), " at batch ", b, ", position ", t);
      }
    if (!mask.empty())
      require(mask.batch == tokens.batch && mask.length == tokens.length, "mask shape (", mask.batch, ", ",
              mask.length, ") does not match tokens (", tokens.batch, ", ", tokens.length, ")");
  }
  void check_context(Index batch, ContextView<T> context) const {
    require(!context.empty(), "this stack cross-attends (CrossAttend): pass a context");
    require(context.batch == batch, "context batch ", context.batch, " does not match the token batch ", batch);
    require(context.length > 0, "context length must be > 0, got ", context.length);
    require(context.dim == dim_context(), "context width ", context.dim, " does not match dim_context ",
            dim_context());
    if (!context.mask.empty())
      require(context.mask.batch == context.batch && context.mask.length == context.length, "context mask shape (",
              context.mask.batch, ", ", context.mask.length, ") does not match the context (", context.batch, ", ",
              context.length, ")");
  }

  /// Rows per head's run of a cache at its full size (the sliding window's buffer): 2 · max_seq_len and the memory
  /// tokens.
  [[nodiscard]] Index full_cache_rows() const { return 2 * config_.max_seq_len + config_.num_memory_tokens; }

  /// A cache of room for `rows` tokens per sequence (and the memory tokens; at most the full size), none yet
  /// (forward_cached grows it as it needs: KVCache::make_room).
  [[nodiscard]] Cache empty_cache(Index batch, Index rows) const {
    require(rows >= 0, "make_cache: rows ", rows, " < 0 (0: unknown, the cache grows as it needs)");
    Cache c;
    c.batch = batch;
    c.capacity = rows > 0 ? std::min(full_cache_rows(), rows + config_.num_memory_tokens) : 0;
    const Shape kv{batch, kv_heads(), c.capacity, config_.layers.dim_head};  // each head's rows together
    c.format = kv_format_;
    for (std::size_t l = 0; l < blocks_.size(); ++l) {  // rows are written before they are read
      if (kv_format_ == KVFormat::f16) {
        c.k_half.emplace_back(kv, Uninitialized{}, memory_of<Backend>());
        c.v_half.emplace_back(kv, Uninitialized{}, memory_of<Backend>());
      } else {
        c.k.emplace_back(kv, Uninitialized{}, memory_of<Backend>());
        c.v.emplace_back(kv, Uninitialized{}, memory_of<Backend>());
      }
    }
    return c;
  }

  /// The pass over the record's batch (the stack's rows).
  [[nodiscard]] Pass<Backend> training_pass() {
    Pass<Backend> p{arena_, *params_};
    p.batch = record_.batch;
    p.length = record_.stack_length;
    p.mask = record_.mask;
    p.self_key_mask = record_.self_key_mask;
    p.dropout = record_.dropout;
    p.dropout_seed = dropout_seed_;
    p.forward_count = forward_count_;
    p.sequence_offset = sequence_offset_;
    return p;
  }
  /// What layer l reads besides x.
  [[nodiscard]] LayerInputs<Backend> layer_inputs(Index layer, const typename ScoreBiasSublayer::Saved& bias,
                                                  const ConstView<T>& first_values, T* first_values_grad) const {
    LayerInputs<Backend> in;
    in.layer = layer;
    in.depth = Index(blocks_.size());
    if (uses_rotary()) in.rotary = &rotary_;
    in.context = ConstView<T>(record_.context, record_.batch * record_.context_length, dim_context());
    in.context_mask = record_.context_mask;
    in.context_length = record_.context_length;
    in.context_grad = record_.context_grad;
    in.score_bias = bias.table;
    in.score_bias_stride = bias.width;
    in.score_bias_zero = bias.zero;
    in.score_bias_grad = record_.score_bias_grad;
    if (layer > 0) {
      in.first_values = first_values.data;
      in.first_values_ld = first_values.ld;
    }
    in.first_values_grad = first_values_grad;
    return in;
  }

  MatrixView<T> forward_to(Output output, TokensView tokens, MaskView mask, ContextView<T> context,
                           const T* sum_embeds = nullptr, MaskView self_attn_kv_mask = {},
                           const Index* seq_start = nullptr) {
    require(output == Output::embeddings || !config_.return_only_embed,
            "this model has no to_logits (return_only_embed): use embed()");
    check_tokens(tokens, mask);
    if constexpr (Layers::cross_attend) check_context(tokens.batch, context);
    run_forward(output, tokens, mask, context, sum_embeds, self_attn_kv_mask, seq_start);
    if (output == Output::embeddings) return embeddings();
    return logits();
  }

  void run_forward(Output output, TokensView tokens, MaskView mask, ContextView<T> context, const T* sum_embeds,
                   MaskView self_attn_kv_mask, const Index* seq_start);
  /// Left-padding starts: one per sequence, each in [0, length); no memory tokens (they would sit before the padding).
  void check_starts(Index batch, Index length, std::span<const Index> starts) const {
    require(Index(starts.size()) == batch, "seq_start_pos has ", starts.size(), " entries for a batch of ", batch);
    require(config_.num_memory_tokens == 0, "left-padded (ragged) sequences with memory tokens (num_memory_tokens ",
            config_.num_memory_tokens, ") are not supported");
    for (std::size_t b = 0; b < starts.size(); ++b)
      require(starts[b] >= 0 && starts[b] < length, "seq_start_pos[", b, "] = ", starts[b], " outside [0, ", length,
              "): every sequence needs at least one real token");
  }
  /// x (B·(M + T), D) = [memory tokens; xe] per sequence.
  void prepend_memory(Pass<Backend>& pass, View<T> xe, Index T_len, View<T> x) const {
    const Index M = config_.num_memory_tokens, L = M + T_len;
    const ConstView<T> memory(pass.value(memory_tokens_), M, config_.layers.dim);
    for (Index b = 0; b < pass.batch; ++b) {
      kernel<Backend, ops::Axpby>::run(memory, x.middle_rows(b * L, M), T(1), T(0));
      kernel<Backend, ops::Axpby>::run(xe.middle_rows(b * T_len, T_len), x.middle_rows(b * L + M, T_len), T(1), T(0));
    }
  }

  TransformerConfig config_;
  std::unique_ptr<ParameterStore<T>> owned_params_;  // null for a part of a larger model
  ParameterStore<T>* params_;
  int position_kind_ = 0;  // the policy of an AnyPosition slot
  Embedding<Backend> embedding_;
  ParameterId memory_tokens_;
  ScoreBiasSublayer score_bias_;
  std::vector<Block<Layers, Backend>> blocks_;
  NormLayer<Norm, Backend> final_norm_;
  Logits<Backend> logits_;
  RotaryTable rotary_{};
  bool training_ = true;
  std::uint64_t dropout_seed_ = config_.seed;
  std::uint64_t forward_count_ = 0;
  Index sequence_offset_ = 0;
  std::shared_ptr<const WeightCopy> decode_weights_;  // what cached decoding reads, or null (the parameters)
  bool automatic_ = true;                             // no quantize() / use_weights(): decode_choice() decides
  KVFormat kv_format_ = KVFormat::f32;                // what make_cache() keeps keys and values in

  /// The automatic choice for these parameters: float unless a Cpu<float> model's weights exceed the cache.
  [[nodiscard]] std::int64_t float_weight_bytes() const { return std::int64_t(params_->count()) * std::int64_t(sizeof(T)); }
  [[nodiscard]] WeightFormat decode_format() const {
    if constexpr (std::is_same_v<Backend, Cpu<float>>) return xtr::automatic_decode_format(float_weight_bytes());
    return WeightFormat::f32;
  }
  [[nodiscard]] DecodeWeightsChoice decode_choice() const {
    if constexpr (std::is_same_v<Backend, Cpu<float>>) return xtr::automatic_decode_weights(float_weight_bytes());
    return {WeightFormat::f32, std::string("automatic: float for ") + std::string(Backend::name)};
  }
  [[nodiscard]] std::shared_ptr<const WeightCopy> make_copy(WeightFormat format, Index group,
                                                           ActivationFormat activations = ActivationFormat::automatic) const {
    if (format == WeightFormat::f32) return nullptr;
    // embedding tables are gathered from (one float row per token), not read by a GEMM, unless tied to the logits
    std::vector<int> gathered;
    if (!config_.tie_embedding) gathered.push_back(embedding_.token().index);
    if (embedding_.position().index >= 0) gathered.push_back(embedding_.position().index);
    auto copy = WeightCopy::make(*params_, format, group, gathered);
    copy.activations = resolve_activations(format, activations);
    return std::make_shared<const WeightCopy>(std::move(copy));
  }
  /// The store ranges each backward stage finishes: [begin, end) of the embeddings (and memory tokens), of each
  /// block, of the final norm, of the score-bias table, of the logits.
  struct StorageRange {
    Index begin = 0, end = 0;
  };
  struct Stages {
    StorageRange embedding, final_norm, score_bias, logits;
    std::vector<StorageRange> blocks;
  } stages_;
  GradientReadyHook gradient_ready_;
  void gradients_ready(StorageRange r) const {
    if (gradient_ready_ && r.end > r.begin) gradient_ready_(r.begin, r.end);
  }

  Arena arena_{memory_of<Backend>()};
  Record record_;
  std::vector<std::uint8_t> left_pad_mask_;
};

// ---------------------------------------------------------------------------------------------------------------------

template <LayerStack Layers, class Backend>
void TransformerWrapper<Layers, Backend>::run_forward(Output output, TokensView tokens, MaskView mask,
                                                      ContextView<T> context, const T* sum_embeds,
                                                      MaskView self_attn_kv_mask, const Index* seq_start) {
  const Index B = tokens.batch, Tn = tokens.length, N = B * Tn, D = config_.layers.dim;
  const Index M = config_.num_memory_tokens, L = M + Tn;
  ++forward_count_;
  arena_.reset();
  Record& r = record_;
  r.output = output;
  r.batch = B;
  r.length = Tn;
  r.stack_length = L;
  r.dropout = training_;
  r.left_padded = seq_start != nullptr;
  r.logits = r.final_h = r.output_grad = r.sum_embeds_grad = r.context_grad = nullptr;
  r.score_bias_grad = r.first_values_grad = nullptr;
  r.first_values = {};
  r.has_sum_embeds = sum_embeds != nullptr;
  r.ids = arena_.allocate<std::int32_t>(N);
  std::copy_n(tokens.data, N, r.ids);
  r.mask = nullptr;
  if (!mask.empty()) {  // memory tokens are always attended to
    r.mask = arena_.allocate<std::uint8_t>(B * L);
    for (Index b = 0; b < B; ++b) {
      std::fill_n(r.mask + b * L, M, std::uint8_t(1));
      std::copy_n(mask.data + b * Tn, Tn, r.mask + b * L + M);
    }
  }
  r.self_key_mask = nullptr;
  if (!self_attn_kv_mask.empty()) {  // keys self-attention sees: not padding and not hidden
    r.self_key_mask = arena_.allocate<std::uint8_t>(B * L);
    for (Index b = 0; b < B; ++b) {
      std::fill_n(r.self_key_mask + b * L, M, std::uint8_t(1));
      for (Index t = 0; t < Tn; ++t)
        r.self_key_mask[b * L + M + t] =
            std::uint8_t(self_attn_kv_mask.data[b * Tn + t] != 0 && (mask.empty() || mask.data[b * Tn + t] != 0));
    }
  }
  r.context_length = context.length;
  r.context = nullptr;
  r.context_mask = nullptr;
  if constexpr (Layers::cross_attend) {
    const Index NS = B * context.length, C = dim_context();
    r.context = arena_.allocate<T>(NS * C);
    std::copy_n(context.data, NS * C, r.context);
    if (!context.mask.empty()) {
      r.context_mask = arena_.allocate<std::uint8_t>(NS);
      std::copy_n(context.mask.data, NS, r.context_mask);
    }
  }
  Pass<Backend> pass = training_pass();
  View<T> xe = pass.allocate(N, D);
  r.embedding = embedding_.forward(pass, r.ids, Tn, 0, sum_embeds, config_.emb_dropout, xe, true, seq_start);
  View<T> x = xe;  // the residual stream
  if (M > 0) {
    x = pass.allocate(B * L, D);
    prepend_memory(pass, xe, Tn, x);
  }
  r.score_bias = {};
  if (score_bias_.active()) r.score_bias = score_bias_.forward(pass, L, L, 0);
  r.layers.resize(blocks_.size());
  for (std::size_t l = 0; l < blocks_.size(); ++l) {
    LayerInputs<Backend> in = layer_inputs(Index(l), r.score_bias, r.first_values, nullptr);
    if (l == 0) in.values_out = &r.first_values;
    r.layers[l] = blocks_[l].forward(pass, in, x);
  }
  View<T> real = x;  // the rows of the real tokens
  if (M > 0) {
    real = pass.allocate(N, D);
    for (Index b = 0; b < B; ++b)
      kernel<Backend, ops::Axpby>::run(x.middle_rows(b * L + M, Tn), real.middle_rows(b * Tn, Tn), T(1), T(0));
  }
  if (has_final_norm()) {
    View<T> h = pass.allocate(N, D);
    r.final_norm = final_norm_.forward(pass, real, nullptr, h, false, true);
    r.final_h = h.data;
  } else {
    r.final_h = real.data;
  }
  if (output == Output::logits) {
    View<T> out = pass.allocate(N, logits_dim());
    logits_.forward(pass, ConstView<T>(r.final_h, N, D), out);
    r.logits = out.data;
  }
}

template <LayerStack Layers, class Backend>
void TransformerWrapper<Layers, Backend>::backward(ConstView<T> doutput, T alpha) {
  Record& r = record_;
  require(r.final_h != nullptr, "backward() needs a training forward() first (or embed(); generation keeps no "
          "activations)");
  require(!r.left_padded, "backward() of forward_left_padded() is not supported (it is for generation)");
  const Index N = r.batch * r.length, D = config_.layers.dim, M = config_.num_memory_tokens, L = r.stack_length;
  require(doutput.rows == N && doutput.cols == output_cols(), "backward: d output has shape (", doutput.rows, ", ",
          doutput.cols, "), the last forward's output is (", N, ", ", output_cols(), ")");
  Pass<Backend> pass = training_pass();
  if constexpr (Layers::cross_attend) {
    View<T> dc = pass.allocate(r.batch * r.context_length, dim_context());
    kernel<Backend, ops::Fill>::run(dc, T(0));
    r.context_grad = dc.data;
  }
  if (r.score_bias.table) {
    View<T> db = pass.allocate(config_.layers.heads, r.score_bias.width);
    kernel<Backend, ops::Fill>::run(db, T(0));
    r.score_bias_grad = db.data;
  }
  if (r.first_values.data && config_.layers.attention.value_residual) {
    View<T> dv = pass.allocate(r.batch * L, r.first_values.cols);
    kernel<Backend, ops::Fill>::run(dv, T(0));
    r.first_values_grad = dv.data;
  }
  View<T> dh = pass.allocate(N, D);  // d loss / d final_h
  if (r.output == Output::logits) {
    logits_.backward(pass, ConstView<T>(r.final_h, N, D), doutput, dh, alpha);
  } else {
    kernel<Backend, ops::Axpby>::run(doutput, dh, alpha, T(0));
  }
  gradients_ready(stages_.logits);
  View<T> dreal = dh;
  if (has_final_norm()) {
    dreal = pass.allocate(N, D);
    kernel<Backend, ops::Fill>::run(dreal, T(0));
    final_norm_.backward(pass, r.final_norm, dh, dreal);
  }
  gradients_ready(stages_.final_norm);
  View<T> dx = dreal;  // gradient of the residual stream
  if (M > 0) {
    dx = pass.allocate(r.batch * L, D);
    kernel<Backend, ops::Fill>::run(dx, T(0));
    for (Index b = 0; b < r.batch; ++b)
      kernel<Backend, ops::Axpby>::run(dreal.middle_rows(b * r.length, r.length), dx.middle_rows(b * L + M, r.length),
                                       T(1), T(0));
  }
  for (std::size_t l = blocks_.size(); l-- > 0;) {
    blocks_[l].backward(pass, layer_inputs(Index(l), r.score_bias, r.first_values, r.first_values_grad), r.layers[l],
                        dx);
    gradients_ready(stages_.blocks[l]);
  }
  if (r.score_bias.table) score_bias_.backward(pass, r.score_bias, r.score_bias_grad);
  gradients_ready(stages_.score_bias);
  View<T> dxe = dx;
  if (M > 0) {  // d memory tokens += Σ_b d x[b, :M]; the real rows go on into the embedding
    View<T> dmemory(pass.grad(memory_tokens_), M, D);
    dxe = pass.allocate(N, D);
    for (Index b = 0; b < r.batch; ++b) {
      kernel<Backend, ops::Axpby>::run(dx.middle_rows(b * L, M), dmemory, T(1), T(1));
      kernel<Backend, ops::Axpby>::run(dx.middle_rows(b * L + M, r.length), dxe.middle_rows(b * r.length, r.length),
                                       T(1), T(0));
    }
  }
  embedding_.backward(pass, r.embedding, r.ids, r.length, config_.emb_dropout, dxe);
  gradients_ready(stages_.embedding);
  if (r.has_sum_embeds) r.sum_embeds_grad = dxe.data;  // d loss / d (token + position + sum embeddings)
}

template <LayerStack Layers, class Backend>
auto TransformerWrapper<Layers, Backend>::forward_cached(TokensView tokens, Cache& cache, Index outputs)
    -> MatrixView<T>
  requires(Layers::causal)
{
  require(outputs >= 1 && outputs <= tokens.length, "forward_cached: outputs ", outputs, " outside [1, ",
          tokens.length, "] (the new tokens)");
  require(cache.batch == tokens.batch, "cache holds ", cache.batch, " sequences, tokens have batch ", tokens.batch);
  require(tokens.length <= config_.max_seq_len, "appending ", tokens.length, " tokens > max_seq_len ",
          config_.max_seq_len);
  check_tokens(tokens, {});
  if constexpr (Layers::cross_attend)
    require(Index(cache.context_kv.size()) == Index(blocks_.size()),
            "this cache has no context: make it with make_cache(batch, context)");
  const Index B = tokens.batch, n = tokens.length, D = config_.layers.dim, V = logits_dim();
  const Index M = config_.num_memory_tokens;
  const Index first = cache.position == 0 ? M : 0;  // the first step puts the memory tokens in the cache
  const Index rows = first + n;                      // rows per sequence this step
  if (uses_absolute_positions()) {
    require(cache.position - memory_in(cache) + n <= config_.max_seq_len, "absolute positions end at max_seq_len ",
            config_.max_seq_len, ": cannot decode position ", cache.position - memory_in(cache) + n - 1,
            " with a KV cache (use Rotary or NoPosition)");
  }
  if (M > 0)
    require(cache.position - memory_in(cache) + n <= config_.max_seq_len, "with memory tokens the cache holds at "
            "most max_seq_len ", config_.max_seq_len, " tokens after them: cannot decode token ",
            cache.position - memory_in(cache) + n, " (recompute instead: can_decode() tells)");
  const bool ragged = !cache.seq_start.empty();
  if (ragged) {
    require(Index(cache.seq_start.size()) == B, "cache.seq_start has ", cache.seq_start.size(), " entries for ", B,
            " sequences");
    require(M == 0, "left-padded (ragged) sequences with memory tokens (num_memory_tokens ", M, ") are not supported");
  }
  require(cache.bf16_weights.empty() || Index(cache.bf16_weights.size()) == params_->count(),
          "cache holds bfloat16 weights of ", cache.bf16_weights.size(), " parameters, the model has ",
          params_->count());
  // Sliding window: keep at most max_seq_len keys including the new ones; grow the buffer while it is smaller than
  // its full size, then move the live rows to the front when its end is reached (amortised: once per max_seq_len
  // tokens).
  if (cache.length + rows > config_.max_seq_len + M) {
    const Index drop = cache.length + rows - config_.max_seq_len - M;
    cache.start += drop;
    cache.length -= drop;
  }
  cache.make_room(rows, full_cache_rows());
  if (uses_rotary()) kernel<Backend, ops::Rotate>::ensure(rotary_, cache.position + rows);

  ++forward_count_;
  arena_.reset();
  record_.logits = record_.final_h = nullptr;  // invalidates backward(): this pass keeps no activations
  Pass<Backend> pass{arena_, *params_};
  pass.batch = B;
  pass.length = rows;
  pass.position = cache.position;
  pass.bf16 = cache.bf16_weights.empty() ? nullptr : cache.bf16_weights.data();
  // The copy is compared with the parameters (a fingerprint of 4,096 values) once per cache, at its first step with
  // that copy: every generate() call checks, the tokens of one call do not pay for it.
  const bool checked = decode_weights_ && cache.checked_weights == decode_weights_.get();
  if (!pass.bf16 && automatic_) {  // made at the first step, again after the parameters changed
    const WeightFormat format = decode_format();
    if (format == WeightFormat::f32)
      decode_weights_ = nullptr;
    else if (!decode_weights_ || decode_weights_->format != format || (!checked && decode_weights_->stale(*params_)))
      decode_weights_ = make_copy(format, WeightCopy::kDefaultGroup);
  } else if (!pass.bf16 && decode_weights_ && !checked) {
    require(!decode_weights_->stale(*params_), "the ", format_name(decode_weights_->format),
            " weight copy is stale: the parameters changed since quantize(); call quantize() again");
  }
  cache.checked_weights = decode_weights_.get();
  if (!pass.bf16) pass.copy = decode_weights_.get();
  auto* ids = arena_.allocate<std::int32_t>(B * n);
  std::copy_n(tokens.data, B * n, ids);
  View<T> xe = pass.allocate(B * n, D);
  if (ragged) {  // padding among the new rows: zero queries; keys before each sequence's start: hidden
    const Index k_len = cache.length + rows, first_key = cache.position - cache.length;
    auto* query = arena_.allocate<std::uint8_t>(B * rows);
    auto* keys = arena_.allocate<std::uint8_t>(B * k_len);
    for (Index b = 0; b < B; ++b) {
      const Index start = cache.seq_start[std::size_t(b)];
      for (Index t = 0; t < rows; ++t) query[b * rows + t] = std::uint8_t(cache.position + t >= start);
      for (Index j = 0; j < k_len; ++j) keys[b * k_len + j] = std::uint8_t(first_key + j >= start);
    }
    pass.mask = query;
    pass.self_key_mask = keys;
  }
  embedding_.forward(pass, ids, n, cache.position - memory_in(cache), nullptr, 0.0, xe, false,
                     ragged ? cache.seq_start.data() : nullptr);
  View<T> x = xe;
  if (first > 0) {
    x = pass.allocate(B * rows, D);
    prepend_memory(pass, xe, n, x);
  }
  typename ScoreBiasSublayer::Saved bias;
  if (score_bias_.active())
    bias = score_bias_.forward(pass, rows, cache.length + rows, cache.length, &cache.score_bias_memo);
  ConstView<T> first_values{};
  for (std::size_t l = 0; l < blocks_.size(); ++l) {
    LayerInputs<Backend> in = layer_inputs(Index(l), bias, first_values, nullptr);
    in.cache = &cache;
    if (l == 0) in.values_out = &first_values;
    blocks_[l].decode(pass, in, x);
  }
  cache.length += rows;
  cache.position += rows;
  // logits of the last `outputs` new positions of each sequence only
  const Index O = outputs;
  View<T> last = pass.allocate(B * O, D);
  for (Index b = 0; b < B; ++b)
    kernel<Backend, ops::Axpby>::run(x.middle_rows(b * rows + rows - O, O), last.middle_rows(b * O, O), T(1), T(0));
  View<T> h = last;
  if (has_final_norm()) {
    h = pass.allocate(B * O, D);
    final_norm_.forward(pass, last, nullptr, h, false, false);
  }
  View<T> out = pass.allocate(B * O, V);
  logits_.forward(pass, h, out);
  return {out.data, B * O, V};
}

}  // namespace xtr
