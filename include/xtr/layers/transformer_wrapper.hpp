#pragma once
// TransformerWrapper<Layers, Backend>: the model, an orchestrator of typed sublayers (one file each):
//   x = Embedding(tokens)                                  layers/embedding.hpp        (B·T, D)
//   per layer, per sublayer f in the residual stream:      layers/block.hpp, residual.hpp
//     self-attention                                       layers/self_attention.hpp
//     cross-attention (CrossAttend)                        layers/cross_attention.hpp
//     feed-forward                                         layers/feedforward.hpp
//   h = final norm(x) (pre-norm stacks)                    layers/norm.hpp
//   logits = Logits(h)                                     layers/logits.hpp           (B·T, V)
// Every sublayer asks the backend for ops (kernel<Backend, Op>, backend/ops.hpp); nothing here computes. The forward
// fills a record of what the backward needs (per layer, a tuple of the sublayers' saved state); backward(dlogits, α)
// consumes it. Activations live in an arena reset at each forward, so a steady-state training step allocates nothing.
// Parameters carry x-transformers' state_dict names (`attn_layers.layers.0.1.to_q.weight`, ...).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
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
#include "xtr/core/tokens.hpp"
#include "xtr/layers/attention_layers.hpp"
#include "xtr/layers/block.hpp"
#include "xtr/layers/embedding.hpp"
#include "xtr/layers/kv_cache.hpp"
#include "xtr/layers/layer_inputs.hpp"
#include "xtr/layers/logits.hpp"
#include "xtr/layers/norm.hpp"
#include "xtr/layers/pass.hpp"

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
};

/// What a cross-attending stack attends to: (batch, length, dim) row-major values and an optional (batch, length)
/// key mask (1 = attend). A row whose mask is all 0 gets no cross-attention (the sublayer adds 0).
template <class T>
struct ContextView {
  const T* data = nullptr;
  Index batch = 0, length = 0, dim = 0;
  MaskView mask{};
  [[nodiscard]] bool empty() const { return data == nullptr; }
};

template <LayerStack Layers, class Backend = Cpu<float>>
class TransformerWrapper {
  static_assert(xtr::Backend<Backend> && (std::is_same_v<typename Backend::scalar, float> ||
                                          std::is_same_v<typename Backend::scalar, double>),
                "xtr: TransformerWrapper computes in float or double: use Cpu<float>, Cpu<double>, Reference<float> "
                "or Reference<double>");
  static_assert(detail::one_of<typename Layers::position, AbsoluteLearned, Rotary, NoPosition>,
                "xtr: the Cpu backend implements the positions AbsoluteLearned, Rotary and NoPosition; add a kernel "
                "for this position policy or use one of those");
  static_assert(Layers::self_attend || !std::is_same_v<typename Layers::position, Rotary>,
                "xtr: a CrossAttender has no self-attention for Rotary to act on; use AbsoluteLearned or NoPosition");

 public:
  using scalar = typename Backend::scalar;
  using layers_type = Layers;
  using backend_type = Backend;
  using Position = typename Layers::position;
  using Norm = typename Layers::norm;
  using FeedForward = typename Layers::feedforward;
  using Cache = KVCache<scalar>;
  static constexpr bool has_absolute_positions = std::is_same_v<Position, AbsoluteLearned>;
  static constexpr bool has_rotary = std::is_same_v<Position, Rotary>;

  explicit TransformerWrapper(TransformerConfig config)
      : config_(validated(config)), owned_params_(std::make_unique<ParameterStore<T>>()),
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
        params_(owned_params_ ? owned_params_.get() : other.params_), embedding_(other.embedding_),
        blocks_(other.blocks_), final_norm_(other.final_norm_), logits_(other.logits_), rotary_(other.rotary_),
        training_(other.training_), dropout_seed_(other.dropout_seed_), forward_count_(other.forward_count_) {}
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

  /// A cache for generating `batch` sequences.
  [[nodiscard]] Cache make_cache(Index batch) const
    requires(Layers::causal && !Layers::cross_attend)
  {
    return empty_cache(batch);
  }
  /// A cache for generating `batch` sequences that cross-attend to `context`: its keys and values are projected
  /// here, once per sequence, and read at every step.
  [[nodiscard]] Cache make_cache(Index batch, ContextView<scalar> context) const
    requires(Layers::causal && Layers::cross_attend)
  {
    require(context.batch == batch, "context batch ", context.batch, " does not match the cache batch ", batch);
    check_context(batch, context);
    Cache c = empty_cache(batch);
    const Index S = context.length, KD = kv_heads() * config_.layers.dim_head;
    c.context_length = S;
    if (!context.mask.empty()) c.context_mask.assign(context.mask.data, context.mask.data + batch * S);
    Arena scratch;
    Pass<Backend> pass{scratch, *params_};
    for (const auto& block : blocks_) {
      Tensor<T>& kv = c.context_kv.emplace_back(Shape{batch, S, 2 * KD});
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

  /// Appends `tokens` (batch, n) to the cached sequence and returns the logits of the last new position (batch, V).
  /// Rotary and position-free stacks slide past max_seq_len (the oldest keys drop out); AbsoluteLearned cannot.
  MatrixView<scalar> forward_cached(TokensView tokens, Cache& cache)
    requires(Layers::causal);

 private:
  using T = scalar;
  using RotaryTable = typename kernel<Backend, ops::Rotate>::Table;
  enum class Output { logits, embeddings };

  /// The last forward: what backward() reads (arena memory, valid until the next forward).
  struct Record {
    Output output = Output::logits;
    Index batch = 0, length = 0, context_length = 0;
    std::int32_t* ids = nullptr;
    std::uint8_t* mask = nullptr;           // (B, T) or null
    bool dropout = false;
    T* context = nullptr;                   // (B·S, dim_context), a copy of the context
    std::uint8_t* context_mask = nullptr;   // (B, S) or null
    std::vector<typename Block<Layers, Backend>::Saved> layers;  // per layer (capacity kept across forwards)
    typename NormLayer<Norm, Backend>::Saved final_norm;
    T* final_h = nullptr;                   // (B·T, D)
    T* logits = nullptr;                    // (B·T, V)
    T* output_grad = nullptr;               // output_gradient()
    bool has_sum_embeds = false;
    T* sum_embeds_grad = nullptr;           // after backward()
    T* context_grad = nullptr;              // after backward()
  };

  [[nodiscard]] Index output_cols() const {
    return record_.output == Output::logits ? logits_dim() : config_.layers.dim;
  }
  [[nodiscard]] NormPlacement placement() const {
    return !config_.layers.pre_norm ? NormPlacement::post
                                    : config_.layers.sandwich_norm ? NormPlacement::sandwich : NormPlacement::pre;
  }
  [[nodiscard]] bool has_final_norm() const { return config_.layers.pre_norm; }

  /// Registers every parameter in x-transformers' order and names (block i = the i-th sublayer).
  void register_parameters(const std::string& prefix, std::optional<ParameterId> tied_token_emb) {
    const auto& L = config_.layers;
    auto& store = *params_;
    embedding_.declare(store, prefix, config_.num_tokens, config_.max_seq_len, L.dim, tied_token_emb);
    const NormStorage storage{L.norm_unit_offset, L.norm_bias};
    blocks_.resize(std::size_t(L.depth));
    for (Index l = 0; l < L.depth; ++l)
      blocks_[std::size_t(l)].declare(store, prefix, l, L, kv_heads(), dim_context(), placement(), storage);
    if (has_final_norm()) final_norm_.declare(store, prefix + "attn_layers.final_norm", L.dim, storage);
    if (!config_.return_only_embed) logits_.declare(store, prefix, logits_dim(), L.dim, config_.logits_bias);
    if constexpr (has_rotary)
      rotary_ = kernel<Backend, ops::Rotate>::make_table(
          ops::RotarySpec{.dim = rotary_dim(), .theta = L.rotary_theta}, config_.max_seq_len);
  }

  static TransformerConfig validated(TransformerConfig c) {
    const auto& L = c.layers;
    require(c.num_tokens > 0, "num_tokens must be > 0, got ", c.num_tokens);
    require(c.max_seq_len > 0, "max_seq_len must be > 0, got ", c.max_seq_len);
    require(L.dim > 0, "layers.dim must be > 0, got ", L.dim);
    require(L.depth > 0, "layers.depth must be > 0, got ", L.depth);
    require(L.heads > 0, "layers.heads must be > 0, got ", L.heads);
    require(L.dim_head > 0, "layers.dim_head must be > 0, got ", L.dim_head);
    require(L.ff_mult > 0, "layers.ff_mult must be > 0, got ", L.ff_mult);
    const Index kv = L.kv_heads ? L.kv_heads : L.heads;
    require(kv > 0 && L.heads % kv == 0, "layers.heads ", L.heads, " must be a multiple of layers.kv_heads ", kv);
    require(L.heads > 1 || L.dim_head == L.dim, "with heads = 1 there is no output projection (as in x-transformers), "
            "so dim_head ", L.dim_head, " must equal dim ", L.dim);
    for (double p : {c.emb_dropout, L.attn_dropout, L.ff_dropout})
      require(p >= 0 && p < 1, "dropout rates must be in [0, 1), got ", p);
    require(L.dim_context >= 0, "layers.dim_context must be >= 0 (0 = dim), got ", L.dim_context);
    require(c.logits_dim >= 0, "logits_dim must be >= 0 (0 = num_tokens), got ", c.logits_dim);
    require(!L.norm_bias || Norm::subtracts_mean, "layers.norm_bias is a LayerNorm bias; ", Norm::name, " has none");
    require(!c.logits_bias || !c.return_only_embed, "logits_bias without to_logits (return_only_embed)");
    require(L.pre_norm || !L.sandwich_norm, "layers.sandwich_norm needs layers.pre_norm (x-transformers asserts the "
            "same): a post-norm stack has no sandwich");
    if constexpr (has_rotary) {
      const Index r = L.rotary_dim ? L.rotary_dim : L.dim_head / 2;
      require(r % 2 == 0 && r >= 2 && r <= L.dim_head, "layers.rotary_dim ", r,
              " must be even, at least 2 and at most dim_head ", L.dim_head);
      require(L.rotary_theta > 0, "layers.rotary_theta must be > 0, got ", L.rotary_theta);
    }
    return c;
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

  [[nodiscard]] Cache empty_cache(Index batch) const {
    Cache c;
    c.batch = batch;
    c.capacity = 2 * config_.max_seq_len;
    const Index KD = kv_heads() * config_.layers.dim_head;
    for (std::size_t l = 0; l < blocks_.size(); ++l) {
      c.k.emplace_back(Shape{batch, c.capacity, KD});
      c.v.emplace_back(Shape{batch, c.capacity, KD});
    }
    return c;
  }

  /// The pass over the record's batch.
  [[nodiscard]] Pass<Backend> training_pass() {
    Pass<Backend> p{arena_, *params_};
    p.batch = record_.batch;
    p.length = record_.length;
    p.mask = record_.mask;
    p.dropout = record_.dropout;
    p.dropout_seed = dropout_seed_;
    p.forward_count = forward_count_;
    return p;
  }
  [[nodiscard]] LayerInputs<Backend> layer_inputs(Index layer) const {
    LayerInputs<Backend> in;
    in.layer = layer;
    in.depth = Index(blocks_.size());
    if constexpr (has_rotary) in.rotary = &rotary_;
    in.context = ConstView<T>(record_.context, record_.batch * record_.context_length, dim_context());
    in.context_mask = record_.context_mask;
    in.context_length = record_.context_length;
    in.context_grad = record_.context_grad;
    return in;
  }

  MatrixView<T> forward_to(Output output, TokensView tokens, MaskView mask, ContextView<T> context,
                           const T* sum_embeds = nullptr) {
    require(output == Output::embeddings || !config_.return_only_embed,
            "this model has no to_logits (return_only_embed): use embed()");
    check_tokens(tokens, mask);
    if constexpr (Layers::cross_attend) check_context(tokens.batch, context);
    run_forward(output, tokens, mask, context, sum_embeds);
    if (output == Output::embeddings) return embeddings();
    return logits();
  }

  void run_forward(Output output, TokensView tokens, MaskView mask, ContextView<T> context, const T* sum_embeds);

  TransformerConfig config_;
  std::unique_ptr<ParameterStore<T>> owned_params_;  // null for a part of a larger model
  ParameterStore<T>* params_;
  Embedding<Position, Backend> embedding_;
  std::vector<Block<Layers, Backend>> blocks_;
  NormLayer<Norm, Backend> final_norm_;
  Logits<Backend> logits_;
  RotaryTable rotary_{};
  bool training_ = true;
  std::uint64_t dropout_seed_ = config_.seed;
  std::uint64_t forward_count_ = 0;

  Arena arena_;
  Record record_;
};

// ---------------------------------------------------------------------------------------------------------------------

template <LayerStack Layers, class Backend>
void TransformerWrapper<Layers, Backend>::run_forward(Output output, TokensView tokens, MaskView mask,
                                                      ContextView<T> context, const T* sum_embeds) {
  const Index B = tokens.batch, Tn = tokens.length, N = B * Tn, D = config_.layers.dim;
  ++forward_count_;
  arena_.reset();
  Record& r = record_;
  r.output = output;
  r.batch = B;
  r.length = Tn;
  r.dropout = training_;
  r.logits = r.final_h = r.output_grad = r.sum_embeds_grad = r.context_grad = nullptr;
  r.has_sum_embeds = sum_embeds != nullptr;
  r.ids = arena_.allocate<std::int32_t>(N);
  std::copy_n(tokens.data, N, r.ids);
  r.mask = nullptr;
  if (!mask.empty()) {
    r.mask = arena_.allocate<std::uint8_t>(N);
    std::copy_n(mask.data, N, r.mask);
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
  View<T> x = pass.allocate(N, D);  // the residual stream
  embedding_.forward(pass, r.ids, Tn, 0, sum_embeds, config_.emb_dropout, x);
  r.layers.resize(blocks_.size());
  for (std::size_t l = 0; l < blocks_.size(); ++l)
    r.layers[l] = blocks_[l].forward(pass, layer_inputs(Index(l)), x);
  if (has_final_norm()) {
    View<T> h = pass.allocate(N, D);
    r.final_norm = final_norm_.forward(pass, x, nullptr, h, false, true);
    r.final_h = h.data;
  } else {
    r.final_h = x.data;
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
  const Index N = r.batch * r.length, D = config_.layers.dim;
  require(doutput.rows == N && doutput.cols == output_cols(), "backward: d output has shape (", doutput.rows, ", ",
          doutput.cols, "), the last forward's output is (", N, ", ", output_cols(), ")");
  Pass<Backend> pass = training_pass();
  if constexpr (Layers::cross_attend) {
    View<T> dc = pass.allocate(r.batch * r.context_length, dim_context());
    kernel<Backend, ops::Fill>::run(dc, T(0));
    r.context_grad = dc.data;
  }
  View<T> dh = pass.allocate(N, D);  // d loss / d final_h
  if (r.output == Output::logits) {
    logits_.backward(pass, ConstView<T>(r.final_h, N, D), doutput, dh, alpha);
  } else {
    kernel<Backend, ops::Axpby>::run(doutput, dh, alpha, T(0));
  }
  View<T> dx = dh;  // gradient of the residual stream
  if (has_final_norm()) {
    dx = pass.allocate(N, D);
    kernel<Backend, ops::Fill>::run(dx, T(0));
    final_norm_.backward(pass, r.final_norm, dh, dx);
  }
  for (std::size_t l = blocks_.size(); l-- > 0;) blocks_[l].backward(pass, layer_inputs(Index(l)), r.layers[l], dx);
  embedding_.backward(pass, r.ids, r.length, config_.emb_dropout, dx);
  if (r.has_sum_embeds) r.sum_embeds_grad = dx.data;  // d loss / d (token + position + sum embeddings)
}

template <LayerStack Layers, class Backend>
auto TransformerWrapper<Layers, Backend>::forward_cached(TokensView tokens, Cache& cache) -> MatrixView<T>
  requires(Layers::causal)
{
  require(cache.batch == tokens.batch, "cache holds ", cache.batch, " sequences, tokens have batch ", tokens.batch);
  require(tokens.length <= config_.max_seq_len, "appending ", tokens.length, " tokens > max_seq_len ",
          config_.max_seq_len);
  check_tokens(tokens, {});
  if constexpr (Layers::cross_attend)
    require(Index(cache.context_kv.size()) == Index(blocks_.size()),
            "this cache has no context: make it with make_cache(batch, context)");
  const Index B = tokens.batch, n = tokens.length, N = B * n, D = config_.layers.dim, V = logits_dim();
  if constexpr (has_absolute_positions) {
    require(cache.position + n <= config_.max_seq_len, "absolute positions end at max_seq_len ", config_.max_seq_len,
            ": cannot decode position ", cache.position + n - 1, " with a KV cache (use Rotary or NoPosition)");
  }
  require(cache.bf16_weights.empty() || Index(cache.bf16_weights.size()) == params_->count(),
          "cache holds bfloat16 weights of ", cache.bf16_weights.size(), " parameters, the model has ",
          params_->count());
  // Sliding window: keep at most max_seq_len keys including the new ones; move the live rows to the front when the
  // end of the buffer is reached (amortised: once per max_seq_len tokens).
  if (cache.length + n > config_.max_seq_len) {
    const Index drop = cache.length + n - config_.max_seq_len;
    cache.start += drop;
    cache.length -= drop;
  }
  if (cache.start + cache.length + n > cache.capacity) {
    const Index KD = kv_heads() * config_.layers.dim_head;
    for (std::size_t l = 0; l < blocks_.size(); ++l)
      for (Tensor<T>* t : {&cache.k[l], &cache.v[l]})
        for (Index b = 0; b < B; ++b) {
          T* base = t->data() + b * cache.capacity * KD;
          std::memmove(base, base + cache.start * KD, sizeof(T) * cache.length * KD);
        }
    cache.start = 0;
  }
  if constexpr (has_rotary) kernel<Backend, ops::Rotate>::ensure(rotary_, cache.position + n);

  ++forward_count_;
  arena_.reset();
  record_.logits = record_.final_h = nullptr;  // invalidates backward(): this pass keeps no activations
  Pass<Backend> pass{arena_, *params_};
  pass.batch = B;
  pass.length = n;
  pass.position = cache.position;
  pass.bf16 = cache.bf16_weights.empty() ? nullptr : cache.bf16_weights.data();
  auto* ids = arena_.allocate<std::int32_t>(N);
  std::copy_n(tokens.data, N, ids);
  View<T> x = pass.allocate(N, D);
  embedding_.forward(pass, ids, n, cache.position, nullptr, 0.0, x);
  for (std::size_t l = 0; l < blocks_.size(); ++l) {
    LayerInputs<Backend> in = layer_inputs(Index(l));
    in.cache = &cache;
    blocks_[l].decode(pass, in, x);
  }
  cache.length += n;
  cache.position += n;
  // logits of the last new position of each sequence only
  View<T> last = pass.allocate(B, D);
  for (Index b = 0; b < B; ++b) std::copy_n(x.row(b * n + n - 1), D, last.row(b));
  View<T> h = last;
  if (has_final_norm()) {
    h = pass.allocate(B, D);
    final_norm_.forward(pass, last, nullptr, h, false, false);
  }
  View<T> out = pass.allocate(B, V);
  logits_.forward(pass, h, out);
  return {out.data, B, V};
}

}  // namespace xtr
