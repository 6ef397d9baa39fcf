#pragma once
// TransformerWrapper<Layers, Backend>: token (and position) embedding → layer stack → final norm → logits, with a
// manual backward (no tape) and a KV-cached incremental forward for generation.
//
//   x = emb[tok] (+ pos)                                           (B·T, D)
//   per layer:  x += m ⊙ Wₒ attn(rot(q), rot(k), v),  [q | k | v] = W_qkv h,  h = norm₁(x)   (one GEMM: to_q, to_k
//               and to_v are adjacent in the parameter buffer, so W_qkv = [W_q; W_k; W_v] is a view; m is 0 at
//               key-padded positions and 1 elsewhere, as x-transformers masks the attention branch)
//    CrossAttend: x += m ⊙ W'ₒ attn(q', k', v'),  q' = W'_q h,  h = norm_c(x),  [k' | v'] = [W'_k; W'_v] c
//               over the context c (B·S, dim_context) and its key mask; no rotary
//               x += W₂ ff(W₁ h + b₁) + b₂,                    h = norm₂(x)
//   logits = W_logits norm_f(x)                                   (B·T, V)   (embed(): norm_f(x), (B·T, D))
//
// Parameters carry x-transformers' state_dict names (`attn_layers.layers.0.1.to_q.weight`, ...): block i of
// attn_layers.layers is the i-th sublayer in order (self-attention, cross-attention, feed-forward). Activations live
// in an arena reset at each forward, so a steady-state training step allocates nothing.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "xtr/backend/cpu/attention.hpp"
#include "xtr/backend/cpu/embedding.hpp"
#include "xtr/backend/cpu/feedforward.hpp"
#include "xtr/backend/cpu/linear.hpp"
#include "xtr/backend/cpu/norm.hpp"
#include "xtr/backend/cpu/rotary.hpp"
#include "xtr/core/arena.hpp"
#include "xtr/core/parameters.hpp"
#include "xtr/core/rng.hpp"
#include "xtr/core/tokens.hpp"
#include "xtr/layers/attention_layers.hpp"

namespace xtr {

/// The CPU backend (Eigen), in float (training) or double (gradient checks).
template <class T>
struct Cpu {
  using scalar = T;
  static constexpr std::string_view name = std::is_same_v<T, float> ? "Cpu<float>" : "Cpu<double>";
};

template <class B>
concept CpuBackend = std::is_same_v<B, Cpu<typename B::scalar>> &&
                     (std::is_same_v<typename B::scalar, float> || std::is_same_v<typename B::scalar, double>);

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

/// What a decoder keeps between generation steps: per layer K and V of the tokens seen so far.
template <class T>
struct KVCache {
  Index batch = 0, capacity = 0;  // rows per sequence held (2 · max_seq_len: a sliding window moves rarely)
  Index start = 0, length = 0;    // live rows [start, start + length)
  Index position = 0;             // position of the next token (keeps counting past max_seq_len)
  std::vector<Tensor<T>> k, v;    // per layer (batch, capacity, kv_heads · dim_head)
  std::vector<std::uint16_t> bf16_weights;  // when set: the parameters rounded to bfloat16, same layout
  // CrossAttend: the context's keys and values, projected once per sequence
  Index context_length = 0;
  std::vector<Tensor<T>> context_kv;        // per layer (batch, context_length, 2 · kv_heads · dim_head) [k | v]
  std::vector<std::uint8_t> context_mask;   // (batch, context_length), empty = every key
};

template <LayerStack Layers, class Backend = Cpu<float>>
class TransformerWrapper {
  static_assert(CpuBackend<Backend>,
                "xtr: TransformerWrapper supports the Cpu<float> and Cpu<double> backends in this build");
  static_assert(detail::one_of<typename Layers::position, AbsoluteLearned, Rotary, NoPosition>,
                "xtr: the Cpu backend implements the positions AbsoluteLearned, Rotary and NoPosition; add a kernel "
                "for this position policy or use one of those");
  static_assert(detail::one_of<typename Layers::norm, LayerNorm, RMSNorm>,
                "xtr: the Cpu backend implements the norms LayerNorm and RMSNorm; add a kernel for this norm policy "
                "or use one of those");
  static_assert(detail::one_of<typename Layers::feedforward, GELU, GEGLU, SwiGLU>,
                "xtr: the Cpu backend implements the feed-forwards GELU, GEGLU and SwiGLU; add a kernel for this "
                "feed-forward policy or use one of those");
  static_assert(detail::one_of<typename Layers::attention, MultiHeadAttention>,
                "xtr: the Cpu backend implements MultiHeadAttention; add a kernel for this attention policy or use it");
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
        params_(owned_params_ ? owned_params_.get() : other.params_), layers_(other.layers_),
        token_emb_(other.token_emb_), pos_emb_(other.pos_emb_), to_logits_(other.to_logits_),
        to_logits_bias_(other.to_logits_bias_), final_norm_(other.final_norm_), rotary_(other.rotary_),
        training_(other.training_),
        dropout_seed_(other.dropout_seed_), forward_count_(other.forward_count_) {
    activations_.resize(layers_.size());
  }
  // Moves keep the arena (its blocks do not move, so saved activations stay valid).
  TransformerWrapper(TransformerWrapper&&) noexcept = default;

  /// Points a part of a larger model at `store` (a copy of the one it was registered in).
  void rebind_parameters(ParameterStore<scalar>& store) {
    require(!owned_params_, "rebind_parameters() is for parts of a larger model; this model owns its parameters");
    params_ = &store;
  }
  [[nodiscard]] ParameterId token_embedding() const { return token_emb_; }

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
    require(sum_embeds_grad_ != nullptr, "sum_embeds_gradient() needs a backward() of a forward with sum_embeds");
    return {sum_embeds_grad_, batch_ * length_, config_.layers.dim};
  }
  /// The final-normed hidden states of the last forward (batch·length, dim), e.g. for self-conditioning.
  [[nodiscard]] MatrixView<scalar> embeddings() {
    require(final_h_ != nullptr, "embeddings() needs a forward() first");
    return {final_h_, batch_ * length_, config_.layers.dim};
  }

  /// The final-normed hidden states (batch·length, dim) instead of logits (x-transformers' return_embeddings), kept
  /// for backward() like the logits: write d loss / d embeddings into the returned view, then call backward().
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

  /// Logits of the last forward, writable: a loss writes d loss / d logits here before backward().
  [[nodiscard]] MatrixView<scalar> logits() {
    require(logits_ != nullptr, "logits() needs a forward() first (embed() and generation keep no logits)");
    return {logits_, batch_ * length_, logits_dim()};
  }

  /// Backward of the last forward() (the logits buffer holding d loss / d logits) or embed() (its buffer holding
  /// d loss / d embeddings); parameter gradients += α · grad, and with a context, context_gradient() += α · grad.
  void backward(scalar alpha);

  /// d loss / d context of the last backward (batch·context length, dim_context), valid until the next forward.
  [[nodiscard]] MatrixView<scalar> context_gradient()
    requires(Layers::cross_attend)
  {
    require(context_grad_ != nullptr, "context_gradient() needs a backward() first");
    return {context_grad_, batch_ * context_length_, dim_context()};
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
    const ConstMatrixView<T> ctx(context.data, batch * S, dim_context());
    for (const auto& p : layers_) {
      Tensor<T>& kv = c.context_kv.emplace_back(Shape{batch, S, 2 * KD});
      cpu::linear_forward<T>(ctx, cross_kv_weight(p), MatrixView<T>(kv.data(), batch * S, 2 * KD));
    }
    return c;
  }

 private:
  [[nodiscard]] Cache empty_cache(Index batch) const {
    Cache c;
    c.batch = batch;
    c.capacity = 2 * config_.max_seq_len;
    const Index KD = kv_heads() * config_.layers.dim_head;
    for (std::size_t l = 0; l < layers_.size(); ++l) {
      c.k.emplace_back(Shape{batch, c.capacity, KD});
      c.v.emplace_back(Shape{batch, c.capacity, KD});
    }
    return c;
  }

 public:

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
  enum class Output { logits, embeddings };
  struct NormParameters {
    ParameterId gain, bias;  // bias only with layers.norm_bias
  };
  struct LayerParameters {
    NormParameters attn_norm, ff_norm, cross_norm;
    ParameterId to_q, to_k, to_v, to_out, ff_in, ff_in_bias, ff_out, ff_out_bias;
    ParameterId cross_q, cross_k, cross_v, cross_out;
  };
  struct LayerActivations {
    T *attn_xhat, *attn_rstd, *attn_h, *qkv, *o, *lse;  // qkv: (N, HD + 2·KD) rows [q | k | v]
    T *cross_xhat, *cross_rstd, *cross_h, *cross_q, *cross_kv, *cross_o, *cross_lse;  // cross_kv: (B·S, 2·KD)
    T *ff_xhat, *ff_rstd, *ff_h, *ff_a, *ff_g;
  };

  /// Registers every parameter in x-transformers' order and names (block i = the i-th sublayer).
  void register_parameters(const std::string& prefix, std::optional<ParameterId> tied_token_emb) {
    const auto& L = config_.layers;
    const Index D = L.dim, V = config_.num_tokens, HD = L.heads * L.dim_head, KD = kv_heads() * L.dim_head;
    const Index F = L.ff_mult * D, W1 = FeedForward::gated ? 2 * F : F, C = dim_context();
    auto bound = [](Index fan_in) { return Init::uniform_bound(1.0 / std::sqrt(double(fan_in))); };
    auto& store = *params_;
    if (tied_token_emb) {
      const auto& tied = store.entry(*tied_token_emb);
      require(tied.shape == Shape{V, D}, "a tied token embedding must have shape ", Shape{V, D}.str(), " (num_tokens ",
              V, ", dim ", D, "), '", tied.name, "' has ", tied.shape.str());
      token_emb_ = store.alias(prefix + "token_emb.emb.weight", *tied_token_emb);
    } else {
      token_emb_ = store.add(prefix + "token_emb.emb.weight", {V, D}, Init::normal_std(std::sqrt(2.0 / double(D))));
    }
    if constexpr (has_absolute_positions)
      pos_emb_ = store.add(prefix + "pos_emb.emb.weight", {config_.max_seq_len, D}, Init::normal_std(1.0));
    // norm `<name>.gamma` (or `.g`): gain − 1 init 0 with norm_unit_offset, else the gain, init 1; `<name>.beta`
    const auto add_norm = [&](const std::string& name) {
      NormParameters n;
      n.gain = store.add(name + "." + std::string(Norm::gain_name), {D}, Init::fill(L.norm_unit_offset ? 0 : 1));
      if (L.norm_bias) n.bias = store.add(name + ".beta", {D}, Init::fill(0));
      return n;
    };
    Index block = 0;
    auto next_block = [&] { return prefix + "attn_layers.layers." + std::to_string(block++) + "."; };
    for (Index l = 0; l < L.depth; ++l) {
      LayerParameters p;
      if constexpr (Layers::self_attend) {
        const std::string a = next_block();
        p.attn_norm = add_norm(a + "0.0");
        p.to_q = store.add(a + "1.to_q.weight", {HD, D}, bound(D));
        p.to_k = store.add(a + "1.to_k.weight", {KD, D}, bound(D));
        p.to_v = store.add(a + "1.to_v.weight", {KD, D}, bound(D));
        if (has_out_projection()) p.to_out = store.add(a + "1.to_out.weight", {D, HD}, bound(HD));
      }
      if constexpr (Layers::cross_attend) {
        const std::string c = next_block();
        p.cross_norm = add_norm(c + "0.0");
        p.cross_q = store.add(c + "1.to_q.weight", {HD, D}, bound(D));
        p.cross_k = store.add(c + "1.to_k.weight", {KD, C}, bound(C));
        p.cross_v = store.add(c + "1.to_v.weight", {KD, C}, bound(C));
        if (has_out_projection()) p.cross_out = store.add(c + "1.to_out.weight", {D, HD}, bound(HD));
      }
      const std::string f = next_block();
      p.ff_norm = add_norm(f + "0.0");
      const std::string in = FeedForward::gated ? "1.ff.0.proj." : "1.ff.0.0.";
      p.ff_in = store.add(f + in + "weight", {W1, D}, bound(D));
      p.ff_in_bias = store.add(f + in + "bias", {W1}, bound(D));
      p.ff_out = store.add(f + "1.ff.2.weight", {D, F}, bound(F));
      p.ff_out_bias = store.add(f + "1.ff.2.bias", {D}, bound(F));
      layers_.push_back(p);
    }
    final_norm_ = add_norm(prefix + "attn_layers.final_norm");
    for (const auto& p : layers_) {  // the fused projections rely on this layout
      if constexpr (Layers::self_attend)
        require(store.entry(p.to_k).offset == store.entry(p.to_q).offset + HD * D &&
                    store.entry(p.to_v).offset == store.entry(p.to_k).offset + KD * D,
                "internal: to_q, to_k, to_v must be adjacent in the parameter buffer");
      if constexpr (Layers::cross_attend)
        require(store.entry(p.cross_v).offset == store.entry(p.cross_k).offset + KD * C,
                "internal: the cross-attention's to_k, to_v must be adjacent in the parameter buffer");
    }
    if (!config_.return_only_embed) {
      to_logits_ = store.add(prefix + "to_logits.weight", {logits_dim(), D}, bound(D));
      if (config_.logits_bias) to_logits_bias_ = store.add(prefix + "to_logits.bias", {logits_dim()}, bound(D));
    }
    if constexpr (has_rotary) rotary_ = cpu::RotaryTable<scalar>(rotary_dim(), L.rotary_theta, config_.max_seq_len);
    activations_.resize(std::size_t(L.depth));
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
    require(!L.norm_bias || cpu::subtracts_mean<Norm>, "layers.norm_bias is a LayerNorm bias; ", Norm::name, " has none");
    require(!c.logits_bias || !c.return_only_embed, "logits_bias without to_logits (return_only_embed)");
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

  MatrixView<T> forward_to(Output output, TokensView tokens, MaskView mask, ContextView<T> context,
                           const T* sum_embeds = nullptr) {
    require(output == Output::embeddings || !config_.return_only_embed,
            "this model has no to_logits (return_only_embed): use embed()");
    check_tokens(tokens, mask);
    if constexpr (Layers::cross_attend) check_context(tokens.batch, context);
    run_forward(output, tokens, mask, context, sum_embeds);
    if (output == Output::embeddings) return {final_h_, batch_ * length_, config_.layers.dim};
    return logits();
  }

  /// Dropout in place with a counter-based mask; the same (stream, index) gives the same mask in the backward.
  static void dropout(MatrixView<T> x, double p, RandomStream stream) {
    if (p <= 0) return;
    const T keep_scale = T(1.0 / (1.0 - p));
    const float threshold = float(p);
    const Index cols = x.cols();
    cpu::parallel_rows(x.rows(), 20 * cols, [&](Index begin, Index end) {
      for (Index n = begin; n < end; ++n)
        for (Index c = 0; c < cols; ++c)
          x(n, c) *= stream.uniform(std::uint64_t(n * cols + c)) >= threshold ? keep_scale : T(0);
    });
  }
  /// Dropout streams: (forward pass, site); sites: 0 embeddings, 3l+1 attention, 3l+2 feed-forward,
  /// 3·depth + l cross-attention of layer l.
  [[nodiscard]] RandomStream dropout_stream(std::uint64_t site) const {
    return RandomStream{dropout_seed_, 1}.fork(forward_count_).fork(site);
  }

  cpu::AttentionProblem<T> attention_problem(Index batch, Index q_len, Index k_len, Index q_offset,
                                             const std::uint8_t* key_mask, Index key_mask_stride,
                                             bool causal) const {
    cpu::AttentionProblem<T> p;
    p.batch = batch;
    p.heads = config_.layers.heads;
    p.kv_heads = kv_heads();
    p.dim_head = config_.layers.dim_head;
    p.q_len = q_len;
    p.k_len = k_len;
    p.q_offset = q_offset;
    p.causal = causal;
    p.scale = T(1.0 / std::sqrt(double(config_.layers.dim_head)));
    p.key_mask = key_mask;
    p.key_mask_stride = key_mask_stride;
    return p;
  }

  void run_forward(Output output, TokensView tokens, MaskView mask, ContextView<T> context, const T* sum_embeds);
  /// y (+)= x Wᵀ for the `rows` output rows of parameters starting at `first` (adjacent parameters form one matrix):
  /// the float weights, or their bfloat16 copy while forward_cached() decodes with one.
  void project(MatrixView<T> x, ParameterId first, Index rows, MatrixView<T> y, bool accumulate) {
    const auto& e = params_->entry(first);
    const Index cols = e.shape.cols();
    if (!bf16_weights_) {
      cpu::linear_forward<T>(x, MatrixView<T>(params_->values().data() + e.offset, rows, cols), y, accumulate);
    } else if (x.rows() <= 8) {
      cpu::linear_forward_bf16<T>(x, bf16_weights_ + e.offset, rows, cols, y, accumulate);
    } else {  // a prefill: widen the block once, then one GEMM
      MatrixView<T> w = arena_.matrix<T>(rows, cols);
      for (Index i = 0; i < rows * cols; ++i) w.data()[i] = T(cpu::bf16_to_float(bf16_weights_[e.offset + i]));
      cpu::linear_forward<T>(x, w, y, accumulate);
    }
  }
  /// Rows of x (B·T, ·) at key-padded positions of the last forward's mask set to 0.
  void zero_padded_rows(MatrixView<T> x) const {
    if (!mask_) return;
    for (Index n = 0; n < x.rows(); ++n)
      if (!mask_[n]) x.row(n).setZero();
  }
  /// x += o Wₒᵀ, or x += o when there is no output projection (heads = 1).
  void add_attention_output(ParameterId to_out, MatrixView<T> o, MatrixView<T> x) {
    if (has_out_projection()) {
      project(o, to_out, config_.layers.dim, x, /*accumulate=*/true);
    } else {
      x += o;
    }
  }
  /// [W_q; W_k; W_v] (HD + 2·KD, D): one view over three adjacent parameters, and its gradient.
  MatrixView<T> qkv_weight(const LayerParameters& p) {
    return {params_->value(p.to_q).data(), qkv_width(), config_.layers.dim};
  }
  MatrixView<T> qkv_grad(const LayerParameters& p) {
    return {params_->grad(p.to_q).data(), qkv_width(), config_.layers.dim};
  }
  /// [W'_k; W'_v] (2·KD, dim_context) of a cross-attention sublayer, and its gradient.
  MatrixView<T> cross_kv_weight(const LayerParameters& p) const {
    return {params_->value(p.cross_k).data(), 2 * kv_heads() * config_.layers.dim_head, dim_context()};
  }
  MatrixView<T> cross_kv_grad(const LayerParameters& p) {
    return {params_->grad(p.cross_k).data(), 2 * kv_heads() * config_.layers.dim_head, dim_context()};
  }
  /// A norm's parameters and gradients in the backend's form.
  cpu::NormWeights<T> norm_weights(const NormParameters& n) const {
    return {params_->value(n.gain).data(), T(config_.layers.norm_unit_offset ? 1 : 0),
            n.bias.index >= 0 ? params_->value(n.bias).data() : nullptr};
  }
  cpu::NormGradients<T> norm_gradients(const NormParameters& n) {
    return {params_->grad(n.gain).data(), n.bias.index >= 0 ? params_->grad(n.bias).data() : nullptr};
  }
  /// y (+)= x W_logitsᵀ + b_logits (the bias only with logits_bias).
  void project_logits(MatrixView<T> x, MatrixView<T> logits) {
    project(x, to_logits_, logits_dim(), logits, false);
    if (to_logits_bias_.index >= 0)
      logits.rowwise() += Eigen::Map<const Eigen::Matrix<T, 1, Eigen::Dynamic>>(params_->value(to_logits_bias_).data(),
                                                                               logits_dim());
  }
  [[nodiscard]] Index qkv_width() const {
    return (config_.layers.heads + 2 * kv_heads()) * config_.layers.dim_head;
  }
  /// Feed-forward sublayer: x += W₂ act(W₁ h + b₁) with h = norm(x); returns b₂, which the next norm adds to x in
  /// its own pass (residual + norm fused). Norm statistics are kept when `a` has buffers for them (training).
  const T* feedforward_sublayer(const LayerParameters& p, MatrixView<T> x, LayerActivations& a,
                                const T* pending_bias, double dropout_p, RandomStream stream);
  /// Backward of x += o Wₒᵀ (or x += o with one head): dWₒ += dxᵀ o, dout = dx Wₒ, 0 at padded rows.
  void attention_output_backward(ParameterId to_out, MatrixView<T> o, MatrixView<T> dx, MatrixView<T> dout) {
    if (has_out_projection()) {
      cpu::linear_backward_weight<T>(dx, o, params_->grad(to_out), T(1));  // o is 0 at padded rows
      cpu::linear_backward_input<T>(dx, params_->value(to_out), dout, T(1), false);
    } else {
      dout = dx;
    }
    zero_padded_rows(dout);
  }

  TransformerConfig config_;
  std::unique_ptr<ParameterStore<T>> owned_params_;  // null for a part of a larger model
  ParameterStore<T>* params_;
  std::vector<LayerParameters> layers_;
  ParameterId token_emb_, pos_emb_, to_logits_, to_logits_bias_;
  NormParameters final_norm_;
  cpu::RotaryTable<T> rotary_;
  bool training_ = true;
  const std::uint16_t* bf16_weights_ = nullptr;  // set only inside forward_cached()
  std::uint64_t dropout_seed_ = config_.seed;
  std::uint64_t forward_count_ = 0;

  // State of the last forward (arena memory).
  Arena arena_;
  Index batch_ = 0, length_ = 0;
  std::int32_t* ids_ = nullptr;
  std::uint8_t* mask_ = nullptr;
  Output output_ = Output::logits;
  bool dropout_active_ = false;
  Index context_length_ = 0;
  T* context_ = nullptr;                  // (B·S, dim_context), a copy of the context
  std::uint8_t* context_mask_ = nullptr;  // (B, S) or null
  T* context_grad_ = nullptr;             // (B·S, dim_context) after backward()
  bool has_sum_embeds_ = false;
  T* sum_embeds_grad_ = nullptr;          // (B·T, D) after backward() of a forward with sum_embeds
  std::vector<LayerActivations> activations_;
  T *final_xhat_ = nullptr, *final_rstd_ = nullptr;
  T* final_h_ = nullptr;  // (B·T, D)
  T* logits_ = nullptr;   // (B·T, V)
};

// ---------------------------------------------------------------------------------------------------------------------

template <LayerStack Layers, class Backend>
auto TransformerWrapper<Layers, Backend>::feedforward_sublayer(const LayerParameters& p, MatrixView<T> x,
                                                               LayerActivations& a, const T* pending_bias,
                                                               double dropout_p, RandomStream stream) -> const T* {
  const Index N = x.rows(), D = x.cols(), F = config_.layers.ff_mult * D, W1 = FeedForward::gated ? 2 * F : F;
  MatrixView<T> h(a.ff_h, N, D), pre(a.ff_a, N, W1), g(a.ff_g, N, F);
  cpu::norm_forward<Norm, T>(x, norm_weights(p.ff_norm), h, a.ff_xhat, a.ff_rstd, pending_bias);
  project(h, p.ff_in, W1, pre, false);
  cpu::feedforward_activation_forward<FeedForward, T>(pre, params_->value(p.ff_in_bias).data(), g);
  dropout(g, dropout_p, stream);
  project(g, p.ff_out, D, x, /*accumulate=*/true);
  return params_->value(p.ff_out_bias).data();
}

template <LayerStack Layers, class Backend>
void TransformerWrapper<Layers, Backend>::run_forward(Output output, TokensView tokens, MaskView mask,
                                                      ContextView<T> context, const T* sum_embeds) {
  const auto& L = config_.layers;
  const Index B = tokens.batch, Tn = tokens.length, N = B * Tn, D = L.dim;
  const Index H = L.heads, dh = L.dim_head, HD = H * dh, KD = kv_heads() * dh, QKV = HD + 2 * KD;
  const Index F = L.ff_mult * D, W1 = FeedForward::gated ? 2 * F : F;
  ++forward_count_;
  arena_.reset();
  batch_ = B;
  length_ = Tn;
  output_ = output;
  logits_ = nullptr;
  context_grad_ = nullptr;
  dropout_active_ = training_;
  ids_ = arena_.allocate<std::int32_t>(N);
  std::copy_n(tokens.data, N, ids_);
  mask_ = nullptr;
  if (!mask.empty()) {
    mask_ = arena_.allocate<std::uint8_t>(N);
    std::copy_n(mask.data, N, mask_);
  }
  const Index S = context.length, C = dim_context(), NS = B * S;
  context_length_ = S;
  context_ = nullptr;
  context_mask_ = nullptr;
  if constexpr (Layers::cross_attend) {
    context_ = arena_.allocate<T>(NS * C);
    std::copy_n(context.data, NS * C, context_);
    if (!context.mask.empty()) {
      context_mask_ = arena_.allocate<std::uint8_t>(NS);
      std::copy_n(context.mask.data, NS, context_mask_);
    }
  }

  MatrixView<T> x = arena_.matrix<T>(N, D);  // the residual stream
  const T* positions = nullptr;
  if constexpr (has_absolute_positions) positions = params_->value(pos_emb_).data();
  cpu::embedding_forward<T>(ids_, N, Tn, 0, params_->value(token_emb_), positions, T(1.0 / std::sqrt(double(D))), x);
  has_sum_embeds_ = sum_embeds != nullptr;
  sum_embeds_grad_ = nullptr;
  if (sum_embeds) x += ConstMatrixView<T>(sum_embeds, N, D);
  if (training_) dropout(x, config_.emb_dropout, dropout_stream(0));
  const T* pending_bias = nullptr;  // the last feed-forward's b₂, added by the next norm

  for (std::size_t l = 0; l < layers_.size(); ++l) {
    const LayerParameters& p = layers_[l];
    LayerActivations& a = activations_[l];
    if constexpr (Layers::self_attend) {  // x += Wₒ attn(q, k, v)
      a.attn_xhat = arena_.allocate<T>(N * D);
      a.attn_rstd = arena_.allocate<T>(N);
      a.attn_h = arena_.allocate<T>(N * D);
      a.qkv = arena_.allocate<T>(N * QKV);
      a.o = arena_.allocate<T>(N * HD);
      a.lse = arena_.allocate<T>(B * H * Tn);
      MatrixView<T> h(a.attn_h, N, D), qkv(a.qkv, N, QKV), o(a.o, N, HD);
      cpu::norm_forward<Norm, T>(x, norm_weights(p.attn_norm), h, a.attn_xhat, a.attn_rstd, pending_bias);
      pending_bias = nullptr;
      project(h, p.to_q, QKV, qkv, false);  // [W_q; W_k; W_v] are adjacent
      if constexpr (has_rotary) {
        rotary_.apply(a.qkv, N, QKV, H, dh, Tn, 0, false);
        rotary_.apply(a.qkv + HD, N, QKV, kv_heads(), dh, Tn, 0, false);
      }
      auto problem = attention_problem(B, Tn, Tn, 0, mask_, Tn, Layers::causal);
      if (training_ && L.attn_dropout > 0) {
        problem.dropout = L.attn_dropout;
        problem.dropout_stream = dropout_stream(3 * l + 1);
      }
      cpu::attention_forward<T>(problem, {a.qkv, Tn * QKV, QKV}, {a.qkv + HD, Tn * QKV, QKV},
                                {a.qkv + HD + KD, Tn * QKV, QKV}, {a.o, Tn * HD, HD}, a.lse, arena_);
      zero_padded_rows(o);  // x-transformers: the attention branch adds nothing at padded positions
      add_attention_output(p.to_out, o, x);
    }
    if constexpr (Layers::cross_attend) {  // x += W'ₒ attn(W'_q h, W'_k c, W'_v c)
      a.cross_xhat = arena_.allocate<T>(N * D);
      a.cross_rstd = arena_.allocate<T>(N);
      a.cross_h = arena_.allocate<T>(N * D);
      a.cross_q = arena_.allocate<T>(N * HD);
      a.cross_kv = arena_.allocate<T>(NS * 2 * KD);
      a.cross_o = arena_.allocate<T>(N * HD);
      a.cross_lse = arena_.allocate<T>(B * H * Tn);
      MatrixView<T> h(a.cross_h, N, D), q(a.cross_q, N, HD), o(a.cross_o, N, HD);
      cpu::norm_forward<Norm, T>(x, norm_weights(p.cross_norm), h, a.cross_xhat, a.cross_rstd, pending_bias);
      pending_bias = nullptr;
      project(h, p.cross_q, HD, q, false);
      project(MatrixView<T>(context_, NS, C), p.cross_k, 2 * KD, MatrixView<T>(a.cross_kv, NS, 2 * KD), false);
      auto problem = attention_problem(B, Tn, S, 0, context_mask_, S, false);
      if (training_ && L.attn_dropout > 0) {
        problem.dropout = L.attn_dropout;
        problem.dropout_stream = dropout_stream(3 * layers_.size() + l);
      }
      cpu::attention_forward<T>(problem, {a.cross_q, Tn * HD, HD}, {a.cross_kv, S * 2 * KD, 2 * KD},
                                {a.cross_kv + KD, S * 2 * KD, 2 * KD}, {a.cross_o, Tn * HD, HD}, a.cross_lse, arena_);
      zero_padded_rows(o);
      add_attention_output(p.cross_out, o, x);
    }
    a.ff_xhat = arena_.allocate<T>(N * D);
    a.ff_rstd = arena_.allocate<T>(N);
    a.ff_h = arena_.allocate<T>(N * D);
    a.ff_a = arena_.allocate<T>(N * W1);
    a.ff_g = arena_.allocate<T>(N * F);
    pending_bias = feedforward_sublayer(p, x, a, pending_bias, training_ ? L.ff_dropout : 0.0,
                                        dropout_stream(3 * l + 2));
  }
  final_xhat_ = arena_.allocate<T>(N * D);
  final_rstd_ = arena_.allocate<T>(N);
  MatrixView<T> final_h = arena_.matrix<T>(N, D);
  cpu::norm_forward<Norm, T>(x, norm_weights(final_norm_), final_h, final_xhat_, final_rstd_, pending_bias);
  final_h_ = final_h.data();
  if (output == Output::logits) {
    MatrixView<T> logits = arena_.matrix<T>(N, logits_dim());
    project_logits(final_h, logits);
    logits_ = logits.data();
  }
}

template <LayerStack Layers, class Backend>
void TransformerWrapper<Layers, Backend>::backward(T alpha) {
  require(final_h_ != nullptr, "backward() needs a training forward() first (or embed(); generation keeps no "
          "activations)");
  const auto& L = config_.layers;
  const Index B = batch_, Tn = length_, N = B * Tn, D = L.dim;
  const Index H = L.heads, dh = L.dim_head, HD = H * dh, KD = kv_heads() * dh, QKV = HD + 2 * KD;
  const Index F = L.ff_mult * D, W1 = FeedForward::gated ? 2 * F : F;
  const Index S = context_length_, C = dim_context(), NS = B * S;

  MatrixView<T> dx = arena_.zeros<T>(N, D);  // gradient of the residual stream
  MatrixView<T> dh_buf = arena_.matrix<T>(N, D);
  MatrixView<T> dg = arena_.matrix<T>(N, F);
  MatrixView<T> da = FeedForward::gated ? arena_.matrix<T>(N, W1) : dg;
  MatrixView<T> dqkv = arena_.matrix<T>(N, Layers::self_attend ? QKV : 0);
  MatrixView<T> dout = arena_.matrix<T>(N, HD);
  MatrixView<T> dq_cross = arena_.matrix<T>(N, Layers::cross_attend ? HD : 0);
  MatrixView<T> dkv_cross = arena_.matrix<T>(NS, Layers::cross_attend ? 2 * KD : 0);
  if constexpr (Layers::cross_attend) context_grad_ = arena_.zeros<T>(NS, C).data();

  const MatrixView<T> final_h(final_h_, N, D);
  if (output_ == Output::logits) {  // logits = h_f W_logitsᵀ
    const MatrixView<T> dlogits(logits_, N, logits_dim());
    cpu::linear_backward_weight<T>(dlogits, final_h, params_->grad(to_logits_), alpha);
    if (to_logits_bias_.index >= 0) cpu::bias_backward<T>(dlogits, params_->grad(to_logits_bias_), alpha);
    cpu::linear_backward_input<T>(dlogits, params_->value(to_logits_), dh_buf, alpha, false);
  } else {  // the embeddings buffer holds d loss / d h_f
    dh_buf = alpha * final_h;
  }
  cpu::norm_backward<Norm, T>(dh_buf, final_xhat_, final_rstd_, norm_weights(final_norm_), dx,
                              norm_gradients(final_norm_), arena_);

  for (std::size_t li = layers_.size(); li-- > 0;) {
    const LayerParameters& p = layers_[li];
    const LayerActivations& a = activations_[li];
    // feed-forward: x += g W₂ᵀ + b₂
    MatrixView<T> g(a.ff_g, N, F), h2(a.ff_h, N, D);
    cpu::linear_backward_weight<T>(dx, g, params_->grad(p.ff_out), T(1));
    cpu::bias_backward<T>(dx, params_->grad(p.ff_out_bias), T(1));
    cpu::linear_backward_input<T>(dx, params_->value(p.ff_out), dg, T(1), false);
    if (dropout_active_ && L.ff_dropout > 0) dropout(dg, L.ff_dropout, dropout_stream(3 * li + 2));
    cpu::feedforward_activation_backward<FeedForward, T>(MatrixView<T>(a.ff_a, N, W1), dg.data(), da.data(),
                                                         params_->grad(p.ff_in_bias).data(), arena_);
    cpu::linear_backward_weight<T>(da, h2, params_->grad(p.ff_in), T(1));
    cpu::linear_backward_input<T>(da, params_->value(p.ff_in), dh_buf, T(1), false);
    cpu::norm_backward<Norm, T>(dh_buf, a.ff_xhat, a.ff_rstd, norm_weights(p.ff_norm), dx,
                                norm_gradients(p.ff_norm), arena_);

    if constexpr (Layers::cross_attend) {  // x += o' W'ₒᵀ, o' = attn(q', k', v')
      attention_output_backward(p.cross_out, MatrixView<T>(a.cross_o, N, HD), dx, dout);
      dq_cross.setZero();
      dkv_cross.setZero();
      auto problem = attention_problem(B, Tn, S, 0, context_mask_, S, false);
      if (dropout_active_ && L.attn_dropout > 0) {
        problem.dropout = L.attn_dropout;
        problem.dropout_stream = dropout_stream(3 * layers_.size() + li);
      }
      cpu::attention_backward<T>(problem, {a.cross_q, Tn * HD, HD}, {a.cross_kv, S * 2 * KD, 2 * KD},
                                 {a.cross_kv + KD, S * 2 * KD, 2 * KD}, {a.cross_o, Tn * HD, HD}, a.cross_lse,
                                 {dout.data(), Tn * HD, HD}, {dq_cross.data(), Tn * HD, HD},
                                 {dkv_cross.data(), S * 2 * KD, 2 * KD}, {dkv_cross.data() + KD, S * 2 * KD, 2 * KD},
                                 arena_);
      const MatrixView<T> context(context_, NS, C), h(a.cross_h, N, D);
      cpu::linear_backward_weight<T>(dkv_cross, context, cross_kv_grad(p), T(1));
      cpu::linear_backward_input<T>(dkv_cross, cross_kv_weight(p), MatrixView<T>(context_grad_, NS, C), T(1), true);
      cpu::linear_backward_weight<T>(dq_cross, h, params_->grad(p.cross_q), T(1));
      cpu::linear_backward_input<T>(dq_cross, params_->value(p.cross_q), dh_buf, T(1), false);
      cpu::norm_backward<Norm, T>(dh_buf, a.cross_xhat, a.cross_rstd, norm_weights(p.cross_norm), dx,
                                  norm_gradients(p.cross_norm), arena_);
    }

    if constexpr (Layers::self_attend) {  // x += o Wₒᵀ (or x += o with one head)
      attention_output_backward(p.to_out, MatrixView<T>(a.o, N, HD), dx, dout);
      dqkv.setZero();
      auto problem = attention_problem(B, Tn, Tn, 0, mask_, Tn, Layers::causal);
      if (dropout_active_ && L.attn_dropout > 0) {
        problem.dropout = L.attn_dropout;
        problem.dropout_stream = dropout_stream(3 * li + 1);
      }
      T* dq = dqkv.data();
      cpu::attention_backward<T>(problem, {a.qkv, Tn * QKV, QKV}, {a.qkv + HD, Tn * QKV, QKV},
                                 {a.qkv + HD + KD, Tn * QKV, QKV}, {a.o, Tn * HD, HD}, a.lse,
                                 {dout.data(), Tn * HD, HD}, {dq, Tn * QKV, QKV}, {dq + HD, Tn * QKV, QKV},
                                 {dq + HD + KD, Tn * QKV, QKV}, arena_);
      if constexpr (has_rotary) {
        rotary_.apply(dq, N, QKV, H, dh, Tn, 0, true);
        rotary_.apply(dq + HD, N, QKV, kv_heads(), dh, Tn, 0, true);
      }
      const MatrixView<T> h1(a.attn_h, N, D);
      cpu::linear_backward_weight<T>(dqkv, h1, qkv_grad(p), T(1));
      cpu::linear_backward_input<T>(dqkv, qkv_weight(p), dh_buf, T(1), false);
      cpu::norm_backward<Norm, T>(dh_buf, a.attn_xhat, a.attn_rstd, norm_weights(p.attn_norm), dx,
                                  norm_gradients(p.attn_norm), arena_);
    }
  }
  if (dropout_active_) dropout(dx, config_.emb_dropout, dropout_stream(0));
  if (has_sum_embeds_) sum_embeds_grad_ = dx.data();  // d loss / d (token + position + sum embeddings)
  T* dpos = nullptr;
  if constexpr (has_absolute_positions) dpos = params_->grad(pos_emb_).data();
  cpu::embedding_backward<T>(ids_, N, Tn, dx, params_->grad(token_emb_).data(), dpos, T(1.0 / std::sqrt(double(D))));
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
    require(Index(cache.context_kv.size()) == Index(layers_.size()),
            "this cache has no context: make it with make_cache(batch, context)");
  const auto& L = config_.layers;
  const Index B = tokens.batch, n = tokens.length, N = B * n, D = L.dim, V = logits_dim();
  const Index H = L.heads, dh = L.dim_head, HD = H * dh, KD = kv_heads() * dh, QKV = HD + 2 * KD;
  const Index F = L.ff_mult * D, W1 = FeedForward::gated ? 2 * F : F;
  if constexpr (has_absolute_positions) {
    require(cache.position + n <= config_.max_seq_len, "absolute positions end at max_seq_len ", config_.max_seq_len,
            ": cannot decode position ", cache.position + n - 1, " with a KV cache (use Rotary or NoPosition)");
  }
  // Sliding window: keep at most max_seq_len keys including the new ones; move the live rows to the front when the
  // end of the buffer is reached (amortised: once per max_seq_len tokens).
  if (cache.length + n > config_.max_seq_len) {
    const Index drop = cache.length + n - config_.max_seq_len;
    cache.start += drop;
    cache.length -= drop;
  }
  if (cache.start + cache.length + n > cache.capacity) {
    for (std::size_t l = 0; l < layers_.size(); ++l)
      for (Tensor<T>* t : {&cache.k[l], &cache.v[l]})
        for (Index b = 0; b < B; ++b) {
          T* base = t->data() + b * cache.capacity * KD;
          std::memmove(base, base + cache.start * KD, sizeof(T) * cache.length * KD);
        }
    cache.start = 0;
  }
  if constexpr (has_rotary) rotary_.ensure(cache.position + n);

  ++forward_count_;
  arena_.reset();
  logits_ = nullptr;  // invalidates backward(): this pass keeps no activations
  final_h_ = nullptr;
  require(cache.bf16_weights.empty() || Index(cache.bf16_weights.size()) == params_->count(),
          "cache holds bfloat16 weights of ", cache.bf16_weights.size(), " parameters, the model has ",
          params_->count());
  struct UseWeights {  // the bfloat16 copy serves this pass only, also when it throws
    const std::uint16_t*& slot;
    ~UseWeights() { slot = nullptr; }
  } use{bf16_weights_};
  bf16_weights_ = cache.bf16_weights.empty() ? nullptr : cache.bf16_weights.data();
  auto* ids = arena_.allocate<std::int32_t>(N);
  std::copy_n(tokens.data, N, ids);
  MatrixView<T> x = arena_.matrix<T>(N, D);
  const T* positions = nullptr;
  if constexpr (has_absolute_positions) positions = params_->value(pos_emb_).data();
  cpu::embedding_forward<T>(ids, N, n, cache.position, params_->value(token_emb_), positions,
                            T(1.0 / std::sqrt(double(D))), x);
  MatrixView<T> h = arena_.matrix<T>(N, D), qkv = arena_.matrix<T>(N, QKV), o = arena_.matrix<T>(N, HD);
  LayerActivations scratch{};
  scratch.ff_h = arena_.allocate<T>(N * D);
  scratch.ff_a = arena_.allocate<T>(N * W1);
  scratch.ff_g = arena_.allocate<T>(N * F);
  const T* pending_bias = nullptr;  // the last feed-forward's b₂, added by the next norm
  for (std::size_t l = 0; l < layers_.size(); ++l) {
    const LayerParameters& p = layers_[l];
    cpu::norm_forward<Norm, T>(x, norm_weights(p.attn_norm), h, nullptr, nullptr, pending_bias);
    project(h, p.to_q, QKV, qkv, false);  // [W_q; W_k; W_v] are adjacent
    if constexpr (has_rotary) {
      rotary_.apply(qkv.data(), N, QKV, H, dh, n, cache.position, false);
      rotary_.apply(qkv.data() + HD, N, QKV, kv_heads(), dh, n, cache.position, false);
    }
    const Index row0 = cache.start + cache.length;  // where the new keys go
    for (Index b = 0; b < B; ++b)
      for (Index t = 0; t < n; ++t) {
        const T* row = qkv.data() + (b * n + t) * QKV;
        std::copy_n(row + HD, KD, cache.k[l].data() + (b * cache.capacity + row0 + t) * KD);
        std::copy_n(row + HD + KD, KD, cache.v[l].data() + (b * cache.capacity + row0 + t) * KD);
      }
    const auto problem = attention_problem(B, n, cache.length + n, cache.length, nullptr, 0, true);
    const cpu::HeadsView<const T> keys{cache.k[l].data() + cache.start * KD, cache.capacity * KD, KD};
    const cpu::HeadsView<const T> values{cache.v[l].data() + cache.start * KD, cache.capacity * KD, KD};
    cpu::attention_forward<T>(problem, {qkv.data(), n * QKV, QKV}, keys, values, {o.data(), n * HD, HD}, nullptr,
                              arena_);
    add_attention_output(p.to_out, o, x);
    if constexpr (Layers::cross_attend) {  // the context's keys and values were projected by make_cache()
      const Index S = cache.context_length;
      cpu::norm_forward<Norm, T>(x, norm_weights(p.cross_norm), h, nullptr, nullptr);
      MatrixView<T> q(qkv.data(), N, HD);
      project(h, p.cross_q, HD, q, false);
      const std::uint8_t* key_mask = cache.context_mask.empty() ? nullptr : cache.context_mask.data();
      const T* kv = cache.context_kv[l].data();
      cpu::attention_forward<T>(attention_problem(B, n, S, 0, key_mask, S, false), {q.data(), n * HD, HD},
                                {kv, S * 2 * KD, 2 * KD}, {kv + KD, S * 2 * KD, 2 * KD}, {o.data(), n * HD, HD},
                                nullptr, arena_);
      add_attention_output(p.cross_out, o, x);
    }
    pending_bias = feedforward_sublayer(p, x, scratch, nullptr, 0.0, {});
  }
  cache.length += n;
  cache.position += n;
  // logits of the last new position of each sequence only
  MatrixView<T> last = arena_.matrix<T>(B, D), last_h = arena_.matrix<T>(B, D);
  for (Index b = 0; b < B; ++b) last.row(b) = x.row(b * n + n - 1);
  cpu::norm_forward<Norm, T>(last, norm_weights(final_norm_), last_h, nullptr, nullptr, pending_bias);
  MatrixView<T> out = arena_.matrix<T>(B, V);
  project_logits(last_h, out);
  return out;
}

}  // namespace xtr
