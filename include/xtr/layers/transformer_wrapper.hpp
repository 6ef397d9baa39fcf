#pragma once
// TransformerWrapper<Layers, Backend>: token (and position) embedding → layer stack → final norm → logits, with a
// manual backward (no tape) and a KV-cached incremental forward for generation.
//
//   x = emb[tok] (+ pos)                                           (B·T, D)
//   per layer:  x += m ⊙ Wₒ attn(rot(q), rot(k), v),  [q | k | v] = W_qkv h,  h = norm₁(x)   (one GEMM: to_q, to_k
//               and to_v are adjacent in the parameter buffer, so W_qkv = [W_q; W_k; W_v] is a view; m is 0 at
//               key-padded positions and 1 elsewhere, as x-transformers masks the attention branch)
//               x += W₂ ff(W₁ h + b₁) + b₂,                    h = norm₂(x)
//   logits = W_logits norm_f(x)                                   (B·T, V)
//
// Parameters carry x-transformers' state_dict names (`attn_layers.layers.0.1.to_q.weight`, ...). Activations live in
// an arena reset at each forward, so a steady-state training step allocates nothing.
#include <cmath>
#include <cstdint>
#include <cstring>
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
};

/// What a decoder keeps between generation steps: per layer K and V of the tokens seen so far.
template <class T>
struct KVCache {
  Index batch = 0, capacity = 0;  // rows per sequence held (2 · max_seq_len: a sliding window moves rarely)
  Index start = 0, length = 0;    // live rows [start, start + length)
  Index position = 0;             // position of the next token (keeps counting past max_seq_len)
  std::vector<Tensor<T>> k, v;    // per layer (batch, capacity, kv_heads · dim_head)
  std::vector<std::uint16_t> bf16_weights;  // when set: the parameters rounded to bfloat16, same layout
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

  explicit TransformerWrapper(TransformerConfig config) : config_(validated(config)) {
    const auto& L = config_.layers;
    const Index D = L.dim, V = config_.num_tokens, HD = L.heads * L.dim_head, KD = kv_heads() * L.dim_head;
    const Index F = L.ff_mult * D, W1 = FeedForward::gated ? 2 * F : F;
    auto bound = [](Index fan_in) { return Init::uniform_bound(1.0 / std::sqrt(double(fan_in))); };
    token_emb_ = params_.add("token_emb.emb.weight", {V, D}, Init::normal_std(std::sqrt(2.0 / double(D))));
    if constexpr (has_absolute_positions)
      pos_emb_ = params_.add("pos_emb.emb.weight", {config_.max_seq_len, D}, Init::normal_std(1.0));
    const std::string gain(Norm::gain_name);
    for (Index l = 0; l < L.depth; ++l) {
      const std::string a = "attn_layers.layers." + std::to_string(2 * l) + ".";
      const std::string f = "attn_layers.layers." + std::to_string(2 * l + 1) + ".";
      LayerParameters p;
      p.attn_norm = params_.add(a + "0.0." + gain, {D}, Init::fill(0));
      p.to_q = params_.add(a + "1.to_q.weight", {HD, D}, bound(D));
      p.to_k = params_.add(a + "1.to_k.weight", {KD, D}, bound(D));
      p.to_v = params_.add(a + "1.to_v.weight", {KD, D}, bound(D));
      if (has_out_projection()) p.to_out = params_.add(a + "1.to_out.weight", {D, HD}, bound(HD));
      p.ff_norm = params_.add(f + "0.0." + gain, {D}, Init::fill(0));
      const std::string in = FeedForward::gated ? "1.ff.0.proj." : "1.ff.0.0.";
      p.ff_in = params_.add(f + in + "weight", {W1, D}, bound(D));
      p.ff_in_bias = params_.add(f + in + "bias", {W1}, bound(D));
      p.ff_out = params_.add(f + "1.ff.2.weight", {D, F}, bound(F));
      p.ff_out_bias = params_.add(f + "1.ff.2.bias", {D}, bound(F));
      layers_.push_back(p);
    }
    final_norm_ = params_.add("attn_layers.final_norm." + gain, {D}, Init::fill(0));
    for (const auto& p : layers_)  // the fused qkv projection relies on this layout
      require(params_.entry(p.to_k).offset == params_.entry(p.to_q).offset + HD * D &&
                  params_.entry(p.to_v).offset == params_.entry(p.to_k).offset + KD * D,
              "internal: to_q, to_k, to_v must be adjacent in the parameter buffer");
    to_logits_ = params_.add("to_logits.weight", {V, D}, bound(D));
    params_.allocate(config_.seed);
    if constexpr (has_rotary) rotary_ = cpu::RotaryTable<scalar>(rotary_dim(), L.rotary_theta, config_.max_seq_len);
    activations_.resize(std::size_t(L.depth));
  }

  // Copies share no state with the original (the arena is per model).
  TransformerWrapper(const TransformerWrapper& other)
      : config_(other.config_), params_(other.params_), layers_(other.layers_), token_emb_(other.token_emb_),
        pos_emb_(other.pos_emb_), final_norm_(other.final_norm_), to_logits_(other.to_logits_),
        rotary_(other.rotary_), training_(other.training_), dropout_seed_(other.dropout_seed_),
        forward_count_(other.forward_count_) {
    activations_.resize(layers_.size());
  }
  // Moves keep the arena (its blocks do not move, so saved activations stay valid).
  TransformerWrapper(TransformerWrapper&&) noexcept = default;

  [[nodiscard]] const TransformerConfig& config() const { return config_; }
  [[nodiscard]] ParameterStore<scalar>& parameters() { return params_; }
  [[nodiscard]] const ParameterStore<scalar>& parameters() const { return params_; }
  [[nodiscard]] Index num_tokens() const { return config_.num_tokens; }
  [[nodiscard]] Index max_seq_len() const { return config_.max_seq_len; }
  [[nodiscard]] Index kv_heads() const { return config_.layers.kv_heads ? config_.layers.kv_heads : config_.layers.heads; }
  /// x-transformers projects the heads' output back to dim only when heads > 1; one head of width dim is added to
  /// the residual stream as it is.
  [[nodiscard]] bool has_out_projection() const { return config_.layers.heads > 1; }
  [[nodiscard]] Index rotary_dim() const {
    return config_.layers.rotary_dim ? config_.layers.rotary_dim : config_.layers.dim_head / 2;
  }

  /// Training mode enables dropout (PyTorch's module.train() / module.eval()).
  void train(bool on = true) { training_ = on; }
  void eval() { training_ = false; }
  [[nodiscard]] bool training() const { return training_; }

  /// Forward passes so far; a backward must follow the forward it differentiates.
  [[nodiscard]] std::uint64_t forward_count() const { return forward_count_; }
  /// Dropout masks are drawn from (dropout_seed, forward pass, site): saving both resumes a run exactly.
  [[nodiscard]] std::uint64_t dropout_seed() const { return dropout_seed_; }
  void set_random_state(std::uint64_t dropout_seed, std::uint64_t forward_count) {
    dropout_seed_ = dropout_seed;
    forward_count_ = forward_count;
  }
  void set_forward_count(std::uint64_t n) { forward_count_ = n; }

  /// The activation arena (tests check that a steady-state step makes no heap allocation).
  [[nodiscard]] const Arena& activation_arena() const { return arena_; }

  /// What the model type resolved to.
  static std::string describe() {
    return "TransformerWrapper<" + Layers::describe() + ", " + std::string(Backend::name) + ">";
  }

  /// Logits (batch·length, num_tokens) for `tokens` (batch, length ≤ max_seq_len); `mask` (batch, length) marks the
  /// keys to attend to. The view stays valid until the next forward; activations are kept for backward().
  MatrixView<scalar> forward(TokensView tokens, MaskView mask = {}) {
    check_tokens(tokens, mask);
    run_forward(tokens, mask);
    return logits();
  }

  /// Logits of the last forward, writable: a loss writes d loss / d logits here before backward().
  [[nodiscard]] MatrixView<scalar> logits() { return {logits_, batch_ * length_, config_.num_tokens}; }

  /// Backward of the last forward, with the logits buffer holding d loss / d logits; parameter gradients += α · grad.
  void backward(scalar alpha);

  /// A cache for generating `batch` sequences.
  [[nodiscard]] Cache make_cache(Index batch) const
    requires(Layers::causal)
  {
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

  /// Makes forward_cached() read the matrices of a copy of the parameters rounded to bfloat16: half the bytes per
  /// decoded token (decoding is bound by reading the weights); the logits change by the rounding (relative ~1e-2).
  void round_weights_to_bf16(Cache& cache) const
    requires(Layers::causal)
  {
    const T* w = params_.values().data();
    cache.bf16_weights.resize(std::size_t(params_.count()));
    cpu::parallel_rows(params_.count(), 4, [&](Index begin, Index end) {
      for (Index i = begin; i < end; ++i) cache.bf16_weights[std::size_t(i)] = cpu::float_to_bf16(float(w[i]));
    });
  }

  /// Appends `tokens` (batch, n) to the cached sequence and returns the logits of the last new position (batch, V).
  /// Rotary and position-free stacks slide past max_seq_len (the oldest keys drop out); AbsoluteLearned cannot.
  MatrixView<scalar> forward_cached(TokensView tokens, Cache& cache)
    requires(Layers::causal);

 private:
  using T = scalar;
  struct LayerParameters {
    ParameterId attn_norm, to_q, to_k, to_v, to_out, ff_norm, ff_in, ff_in_bias, ff_out, ff_out_bias;
  };
  struct LayerActivations {
    T *attn_xhat, *attn_rstd, *attn_h, *qkv, *o, *lse;  // qkv: (N, HD + 2·KD) rows [q | k | v]
    T *ff_xhat, *ff_rstd, *ff_h, *ff_a, *ff_g;
  };

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
  /// Dropout streams: (forward pass, site); sites: 0 embeddings, 3l+1 attention, 3l+2 feed-forward of layer l.
  [[nodiscard]] RandomStream dropout_stream(std::uint64_t site) const {
    return RandomStream{dropout_seed_, 1}.fork(forward_count_).fork(site);
  }

  cpu::AttentionProblem<T> attention_problem(Index batch, Index q_len, Index k_len, Index q_offset,
                                             const std::uint8_t* key_mask, Index key_mask_stride) const {
    cpu::AttentionProblem<T> p;
    p.batch = batch;
    p.heads = config_.layers.heads;
    p.kv_heads = kv_heads();
    p.dim_head = config_.layers.dim_head;
    p.q_len = q_len;
    p.k_len = k_len;
    p.q_offset = q_offset;
    p.causal = Layers::causal;
    p.scale = T(1.0 / std::sqrt(double(config_.layers.dim_head)));
    p.key_mask = key_mask;
    p.key_mask_stride = key_mask_stride;
    return p;
  }

  void run_forward(TokensView tokens, MaskView mask);
  /// y (+)= x Wᵀ for the `rows` output rows of parameters starting at `first` (adjacent parameters form one matrix):
  /// the float weights, or their bfloat16 copy while forward_cached() decodes with one.
  void project(MatrixView<T> x, ParameterId first, Index rows, MatrixView<T> y, bool accumulate) {
    const auto& e = params_.entry(first);
    const Index cols = e.shape.cols();
    if (!bf16_weights_) {
      cpu::linear_forward<T>(x, MatrixView<T>(params_.values().data() + e.offset, rows, cols), y, accumulate);
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
  void add_attention_output(const LayerParameters& p, MatrixView<T> o, MatrixView<T> x) {
    if (has_out_projection()) {
      project(o, p.to_out, config_.layers.dim, x, /*accumulate=*/true);
    } else {
      x += o;
    }
  }
  /// [W_q; W_k; W_v] (HD + 2·KD, D): one view over three adjacent parameters, and its gradient.
  MatrixView<T> qkv_weight(const LayerParameters& p) {
    return {params_.value(p.to_q).data(), qkv_width(), config_.layers.dim};
  }
  MatrixView<T> qkv_grad(const LayerParameters& p) {
    return {params_.grad(p.to_q).data(), qkv_width(), config_.layers.dim};
  }
  [[nodiscard]] Index qkv_width() const {
    return (config_.layers.heads + 2 * kv_heads()) * config_.layers.dim_head;
  }
  /// Feed-forward sublayer: x += W₂ act(W₁ h + b₁) with h = norm(x); returns b₂, which the next norm adds to x in
  /// its own pass (residual + norm fused). Norm statistics are kept when `a` has buffers for them (training).
  const T* feedforward_sublayer(const LayerParameters& p, MatrixView<T> x, LayerActivations& a, double dropout_p,
                                RandomStream stream);

  TransformerConfig config_;
  ParameterStore<T> params_;
  std::vector<LayerParameters> layers_;
  ParameterId token_emb_, pos_emb_, final_norm_, to_logits_;
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
  bool dropout_active_ = false;
  std::vector<LayerActivations> activations_;
  T *final_xhat_ = nullptr, *final_rstd_ = nullptr;
  T* final_h_ = nullptr;  // (B·T, D)
  T* logits_ = nullptr;   // (B·T, V)
};

// ---------------------------------------------------------------------------------------------------------------------

template <LayerStack Layers, class Backend>
auto TransformerWrapper<Layers, Backend>::feedforward_sublayer(const LayerParameters& p, MatrixView<T> x,
                                                               LayerActivations& a, double dropout_p,
                                                               RandomStream stream) -> const T* {
  const Index N = x.rows(), D = x.cols(), F = config_.layers.ff_mult * D, W1 = FeedForward::gated ? 2 * F : F;
  MatrixView<T> h(a.ff_h, N, D), pre(a.ff_a, N, W1), g(a.ff_g, N, F);
  cpu::norm_forward<Norm, T>(x, params_.value(p.ff_norm).data(), h, a.ff_xhat, a.ff_rstd);
  project(h, p.ff_in, W1, pre, false);
  cpu::feedforward_activation_forward<FeedForward, T>(pre, params_.value(p.ff_in_bias).data(), g);
  dropout(g, dropout_p, stream);
  project(g, p.ff_out, D, x, /*accumulate=*/true);
  return params_.value(p.ff_out_bias).data();
}

template <LayerStack Layers, class Backend>
void TransformerWrapper<Layers, Backend>::run_forward(TokensView tokens, MaskView mask) {
  const auto& L = config_.layers;
  const Index B = tokens.batch, Tn = tokens.length, N = B * Tn, D = L.dim, V = config_.num_tokens;
  const Index H = L.heads, dh = L.dim_head, HD = H * dh, KD = kv_heads() * dh, QKV = HD + 2 * KD;
  const Index F = L.ff_mult * D, W1 = FeedForward::gated ? 2 * F : F;
  ++forward_count_;
  arena_.reset();
  batch_ = B;
  length_ = Tn;
  dropout_active_ = training_;
  ids_ = arena_.allocate<std::int32_t>(N);
  std::copy_n(tokens.data, N, ids_);
  mask_ = nullptr;
  if (!mask.empty()) {
    mask_ = arena_.allocate<std::uint8_t>(N);
    std::copy_n(mask.data, N, mask_);
  }

  MatrixView<T> x = arena_.matrix<T>(N, D);  // the residual stream
  const T* positions = nullptr;
  if constexpr (has_absolute_positions) positions = params_.value(pos_emb_).data();
  cpu::embedding_forward<T>(ids_, N, Tn, 0, params_.value(token_emb_), positions, T(1.0 / std::sqrt(double(D))), x);
  if (training_) dropout(x, config_.emb_dropout, dropout_stream(0));
  const T* pending_bias = nullptr;  // the last feed-forward's b₂, added by the next norm

  for (std::size_t l = 0; l < layers_.size(); ++l) {
    const LayerParameters& p = layers_[l];
    LayerActivations& a = activations_[l];
    a.attn_xhat = arena_.allocate<T>(N * D);
    a.attn_rstd = arena_.allocate<T>(N);
    a.attn_h = arena_.allocate<T>(N * D);
    a.qkv = arena_.allocate<T>(N * QKV);
    a.o = arena_.allocate<T>(N * HD);
    a.lse = arena_.allocate<T>(B * H * Tn);
    a.ff_xhat = arena_.allocate<T>(N * D);
    a.ff_rstd = arena_.allocate<T>(N);
    a.ff_h = arena_.allocate<T>(N * D);
    a.ff_a = arena_.allocate<T>(N * W1);
    a.ff_g = arena_.allocate<T>(N * F);

    // attention sublayer: x += Wₒ attn(q, k, v)
    MatrixView<T> h(a.attn_h, N, D), qkv(a.qkv, N, QKV), o(a.o, N, HD);
    cpu::norm_forward<Norm, T>(x, params_.value(p.attn_norm).data(), h, a.attn_xhat, a.attn_rstd, pending_bias);
    project(h, p.to_q, QKV, qkv, false);  // [W_q; W_k; W_v] are adjacent
    if constexpr (has_rotary) {
      rotary_.apply(a.qkv, N, QKV, H, dh, Tn, 0, false);
      rotary_.apply(a.qkv + HD, N, QKV, kv_heads(), dh, Tn, 0, false);
    }
    auto problem = attention_problem(B, Tn, Tn, 0, mask_, Tn);
    if (training_ && L.attn_dropout > 0) {
      problem.dropout = L.attn_dropout;
      problem.dropout_stream = dropout_stream(3 * l + 1);
    }
    cpu::attention_forward<T>(problem, {a.qkv, Tn * QKV, QKV}, {a.qkv + HD, Tn * QKV, QKV},
                              {a.qkv + HD + KD, Tn * QKV, QKV}, {a.o, Tn * HD, HD}, a.lse, arena_);
    zero_padded_rows(o);  // x-transformers: the attention branch adds nothing at padded positions
    add_attention_output(p, o, x);

    pending_bias = feedforward_sublayer(p, x, a, training_ ? L.ff_dropout : 0.0, dropout_stream(3 * l + 2));
  }
  final_xhat_ = arena_.allocate<T>(N * D);
  final_rstd_ = arena_.allocate<T>(N);
  MatrixView<T> final_h = arena_.matrix<T>(N, D), logits = arena_.matrix<T>(N, V);
  cpu::norm_forward<Norm, T>(x, params_.value(final_norm_).data(), final_h, final_xhat_, final_rstd_, pending_bias);
  project(final_h, to_logits_, V, logits, false);
  final_h_ = final_h.data();
  logits_ = logits.data();
}

template <LayerStack Layers, class Backend>
void TransformerWrapper<Layers, Backend>::backward(T alpha) {
  require(logits_ != nullptr, "backward() needs a training forward() first (generation keeps no activations)");
  const auto& L = config_.layers;
  const Index B = batch_, Tn = length_, N = B * Tn, D = L.dim;
  const Index H = L.heads, dh = L.dim_head, HD = H * dh, KD = kv_heads() * dh, QKV = HD + 2 * KD;
  const Index F = L.ff_mult * D, W1 = FeedForward::gated ? 2 * F : F;

  MatrixView<T> dx = arena_.zeros<T>(N, D);  // gradient of the residual stream
  MatrixView<T> dh_buf = arena_.matrix<T>(N, D);
  MatrixView<T> dg = arena_.matrix<T>(N, F);
  MatrixView<T> da = FeedForward::gated ? arena_.matrix<T>(N, W1) : dg;
  MatrixView<T> dqkv = arena_.matrix<T>(N, QKV);
  MatrixView<T> dout = arena_.matrix<T>(N, HD);

  // logits = h_f W_logitsᵀ
  const MatrixView<T> dlogits(logits_, N, config_.num_tokens), final_h(final_h_, N, D);
  cpu::linear_backward_weight<T>(dlogits, final_h, params_.grad(to_logits_), alpha);
  cpu::linear_backward_input<T>(dlogits, params_.value(to_logits_), dh_buf, alpha, false);
  cpu::norm_backward<Norm, T>(dh_buf, final_xhat_, final_rstd_, params_.value(final_norm_).data(), dx,
                              params_.grad(final_norm_).data(), arena_);

  for (std::size_t li = layers_.size(); li-- > 0;) {
    const LayerParameters& p = layers_[li];
    const LayerActivations& a = activations_[li];
    // feed-forward: x += g W₂ᵀ + b₂
    MatrixView<T> g(a.ff_g, N, F), h2(a.ff_h, N, D);
    cpu::linear_backward_weight<T>(dx, g, params_.grad(p.ff_out), T(1));
    cpu::bias_backward<T>(dx, params_.grad(p.ff_out_bias), T(1));
    cpu::linear_backward_input<T>(dx, params_.value(p.ff_out), dg, T(1), false);
    if (dropout_active_ && L.ff_dropout > 0) dropout(dg, L.ff_dropout, dropout_stream(3 * li + 2));
    cpu::feedforward_activation_backward<FeedForward, T>(MatrixView<T>(a.ff_a, N, W1), dg.data(), da.data(),
                                                         params_.grad(p.ff_in_bias).data(), arena_);
    cpu::linear_backward_weight<T>(da, h2, params_.grad(p.ff_in), T(1));
    cpu::linear_backward_input<T>(da, params_.value(p.ff_in), dh_buf, T(1), false);
    cpu::norm_backward<Norm, T>(dh_buf, a.ff_xhat, a.ff_rstd, params_.value(p.ff_norm).data(), dx,
                                params_.grad(p.ff_norm).data(), arena_);

    // attention: x += o Wₒᵀ (or x += o with one head)
    MatrixView<T> o(a.o, N, HD), h1(a.attn_h, N, D);
    if (has_out_projection()) {
      cpu::linear_backward_weight<T>(dx, o, params_.grad(p.to_out), T(1));  // o is 0 at padded rows
      cpu::linear_backward_input<T>(dx, params_.value(p.to_out), dout, T(1), false);
    } else {
      dout = dx;
    }
    zero_padded_rows(dout);
    const T* dattn = dout.data();
    dqkv.setZero();
    auto problem = attention_problem(B, Tn, Tn, 0, mask_, Tn);
    if (dropout_active_ && L.attn_dropout > 0) {
      problem.dropout = L.attn_dropout;
      problem.dropout_stream = dropout_stream(3 * li + 1);
    }
    T* dq = dqkv.data();
    cpu::attention_backward<T>(problem, {a.qkv, Tn * QKV, QKV}, {a.qkv + HD, Tn * QKV, QKV},
                               {a.qkv + HD + KD, Tn * QKV, QKV}, {a.o, Tn * HD, HD}, a.lse,
                               {dattn, Tn * HD, HD}, {dq, Tn * QKV, QKV}, {dq + HD, Tn * QKV, QKV},
                               {dq + HD + KD, Tn * QKV, QKV}, arena_);
    if constexpr (has_rotary) {
      rotary_.apply(dq, N, QKV, H, dh, Tn, 0, true);
      rotary_.apply(dq + HD, N, QKV, kv_heads(), dh, Tn, 0, true);
    }
    cpu::linear_backward_weight<T>(dqkv, h1, qkv_grad(p), T(1));
    cpu::linear_backward_input<T>(dqkv, qkv_weight(p), dh_buf, T(1), false);
    cpu::norm_backward<Norm, T>(dh_buf, a.attn_xhat, a.attn_rstd, params_.value(p.attn_norm).data(), dx,
                                params_.grad(p.attn_norm).data(), arena_);
  }
  if (dropout_active_) dropout(dx, config_.emb_dropout, dropout_stream(0));
  T* dpos = nullptr;
  if constexpr (has_absolute_positions) dpos = params_.grad(pos_emb_).data();
  cpu::embedding_backward<T>(ids_, N, Tn, dx, params_.grad(token_emb_).data(), dpos, T(1.0 / std::sqrt(double(D))));
}

template <LayerStack Layers, class Backend>
auto TransformerWrapper<Layers, Backend>::forward_cached(TokensView tokens, Cache& cache) -> MatrixView<T>
  requires(Layers::causal)
{
  require(cache.batch == tokens.batch, "cache holds ", cache.batch, " sequences, tokens have batch ", tokens.batch);
  require(tokens.length <= config_.max_seq_len, "appending ", tokens.length, " tokens > max_seq_len ",
          config_.max_seq_len);
  check_tokens(tokens, {});
  const auto& L = config_.layers;
  const Index B = tokens.batch, n = tokens.length, N = B * n, D = L.dim, V = config_.num_tokens;
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
  require(cache.bf16_weights.empty() || Index(cache.bf16_weights.size()) == params_.count(),
          "cache holds bfloat16 weights of ", cache.bf16_weights.size(), " parameters, the model has ", params_.count());
  struct UseWeights {  // the bfloat16 copy serves this pass only, also when it throws
    const std::uint16_t*& slot;
    ~UseWeights() { slot = nullptr; }
  } use{bf16_weights_};
  bf16_weights_ = cache.bf16_weights.empty() ? nullptr : cache.bf16_weights.data();
  auto* ids = arena_.allocate<std::int32_t>(N);
  std::copy_n(tokens.data, N, ids);
  MatrixView<T> x = arena_.matrix<T>(N, D);
  const T* positions = nullptr;
  if constexpr (has_absolute_positions) positions = params_.value(pos_emb_).data();
  cpu::embedding_forward<T>(ids, N, n, cache.position, params_.value(token_emb_), positions,
                            T(1.0 / std::sqrt(double(D))), x);
  MatrixView<T> h = arena_.matrix<T>(N, D), qkv = arena_.matrix<T>(N, QKV), o = arena_.matrix<T>(N, HD);
  LayerActivations scratch{};
  scratch.ff_h = arena_.allocate<T>(N * D);
  scratch.ff_a = arena_.allocate<T>(N * W1);
  scratch.ff_g = arena_.allocate<T>(N * F);
  const T* pending_bias = nullptr;  // the last feed-forward's b₂, added by the next norm
  for (std::size_t l = 0; l < layers_.size(); ++l) {
    const LayerParameters& p = layers_[l];
    cpu::norm_forward<Norm, T>(x, params_.value(p.attn_norm).data(), h, nullptr, nullptr, pending_bias);
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
    const auto problem = attention_problem(B, n, cache.length + n, cache.length, nullptr, 0);
    const cpu::HeadsView<const T> keys{cache.k[l].data() + cache.start * KD, cache.capacity * KD, KD};
    const cpu::HeadsView<const T> values{cache.v[l].data() + cache.start * KD, cache.capacity * KD, KD};
    cpu::attention_forward<T>(problem, {qkv.data(), n * QKV, QKV}, keys, values, {o.data(), n * HD, HD}, nullptr,
                              arena_);
    add_attention_output(p, o, x);
    pending_bias = feedforward_sublayer(p, x, scratch, 0.0, {});
  }
  cache.length += n;
  cache.position += n;
  // logits of the last new position of each sequence only
  MatrixView<T> last = arena_.matrix<T>(B, D), last_h = arena_.matrix<T>(B, D);
  for (Index b = 0; b < B; ++b) last.row(b) = x.row(b * n + n - 1);
  cpu::norm_forward<Norm, T>(last, params_.value(final_norm_).data(), last_h, nullptr, nullptr, pending_bias);
  MatrixView<T> out = arena_.matrix<T>(B, V);
  project(last_h, to_logits_, V, out, false);
  return out;
}

}  // namespace xtr
