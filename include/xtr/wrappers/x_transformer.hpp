#pragma once
// XTransformer<EncoderStack, DecoderStack>: the encoder-decoder of x-transformers.
//   c    = encoder.embed(src, src_mask)                                  (B·S, dim): final-normed, no logits
//   loss = CE(decoder(tgt[:, :-1], context = c, context_mask = src_mask), tgt[:, 1:])    (the shift happens inside)
//   generate(src, start, n, src_mask): encode once; the decoder's cache projects the context's keys and values once
//   and its own keys and values once per step.
// The decoder stack gets CrossAttend added (as x-transformers sets cross_attend=True). Encoder and decoder keep
// their parameters in one store under x-transformers' names (`encoder.…`, `decoder.net.…`); tie_token_emb makes
// `decoder.net.token_emb.emb.weight` a second name of `encoder.token_emb.emb.weight`, so gradients of both uses add.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "xtr/layers/transformer_wrapper.hpp"
#include "xtr/wrappers/autoregressive_wrapper.hpp"
#include "xtr/wrappers/loss.hpp"

namespace xtr {

/// x-transformers' XTransformer keywords: `dim` and the wrapper-level ones here; `enc_*` keywords go to `encoder`,
/// `dec_*` to `decoder` (their layers.dim stays 0: it is `dim`).
struct XTransformerConfig {
  Index dim = 0;                   // shared model width (required)
  TransformerConfig encoder{};     // enc_num_tokens, enc_max_seq_len, enc_emb_dropout, enc_depth, enc_heads, ...
  TransformerConfig decoder{};     // dec_num_tokens, dec_max_seq_len, dec_emb_dropout, dec_depth, dec_heads, ...
  bool tie_token_emb = false;      // one token embedding for encoder and decoder (equal vocabularies)
  std::int32_t ignore_index = -100;
  std::int32_t pad_value = 0;
  double cross_attn_tokens_dropout = 0;  // training: fraction of source tokens hidden from cross-attention
  std::uint64_t seed = 0;          // parameters, dropout and sampling streams (the parts' seeds derive from it)
  bool encoder_to_logits = false;  // the encoder keeps a to_logits it never uses (x-transformers before 1.35.2 has
                                   // `encoder.to_logits.*` in its state dicts); false: embeddings only
};

/// x-transformers' dropout_seq as a key mask (batch, length) written to `kept`: per row keep
/// min(⌈real · (1 − p)⌉, max(1, ⌊(1 − p) · length⌋)) of the real tokens (without a mask: max(1, ⌊(1 − p) · length⌋)),
/// those with the largest uniform(b · length + j) from `stream`; the rest are hidden from cross-attention.
inline MaskView drop_context_tokens(Index batch, Index length, MaskView mask, double p, const RandomStream& stream,
                                    std::vector<std::uint8_t>& kept) {
  require(p >= 0 && p < 1, "context token dropout must be in [0, 1), got ", p);
  const double keep = 1 - p;
  const Index most = std::max<Index>(1, Index(keep * double(length)));
  kept.assign(std::size_t(batch * length), 0);
  std::vector<Index> order(static_cast<std::size_t>(length));
  for (Index b = 0; b < batch; ++b) {
    const std::uint8_t* real = mask.empty() ? nullptr : mask.data + b * length;
    auto is_real = [&](Index j) { return !real || real[j] != 0; };
    Index count = 0;
    for (Index j = 0; j < length; ++j) count += is_real(j);
    const Index keep_count = real ? std::min(most, Index(std::ceil(double(count) * keep))) : most;
    std::iota(order.begin(), order.end(), Index(0));
    auto key = [&](Index j) { return is_real(j) ? stream.uniform(std::uint64_t(b * length + j)) : -1.0f; };
    std::partial_sort(order.begin(), order.begin() + keep_count, order.end(),
                      [&](Index i, Index j) { return key(i) > key(j); });
    for (Index r = 0; r < keep_count; ++r) kept[std::size_t(b * length + order[std::size_t(r)])] = 1;
  }
  return {kept.data(), batch, length};
}

template <LayerStack EncoderLayers, LayerStack DecoderLayers, class Backend = Cpu<float>>
class XTransformer {
  static_assert(!EncoderLayers::causal && EncoderLayers::self_attend && !EncoderLayers::cross_attend,
                "xtr: XTransformer's encoder must be an Encoder<...> (bidirectional, without CrossAttend)");
  static_assert(DecoderLayers::causal, "xtr: XTransformer's decoder must be a Decoder<...> (causal)");

 public:
  using scalar = typename Backend::scalar;
  using EncoderNet = TransformerWrapper<EncoderLayers, Backend>;
  using DecoderNet = TransformerWrapper<typename detail::with_cross_attention<DecoderLayers>::type, Backend>;

 private:
  XTransformerConfig config_;
  std::unique_ptr<ParameterStore<scalar>> store_;  // both parts' parameters; its address survives moves

 public:
  EncoderNet encoder;                            // return_only_embed
  AutoregressiveWrapper<DecoderNet> decoder;     // decoder.net cross-attends to the encoder's output

  explicit XTransformer(XTransformerConfig config)
      : config_(validated(config)), store_(std::make_unique<ParameterStore<scalar>>(memory_of<Backend>())),
        encoder(config_.encoder, *store_, "encoder."),
        decoder(DecoderNet(config_.decoder, *store_, "decoder.net.",
                           config_.tie_token_emb ? std::optional(encoder.token_embedding()) : std::nullopt),
                AutoregressiveOptions{config_.ignore_index, config_.pad_value}) {
    store_->allocate(config_.seed);
  }
  /// A deep copy: its own parameters, optimiser-independent.
  XTransformer(const XTransformer& other)
      : config_(other.config_), store_(std::make_unique<ParameterStore<scalar>>(*other.store_)),
        encoder(other.encoder), decoder(other.decoder), training_(other.training_) {
    encoder.rebind_parameters(*store_);
    decoder.net.rebind_parameters(*store_);
  }
  XTransformer(XTransformer&&) noexcept = default;

  [[nodiscard]] const XTransformerConfig& config() const { return config_; }
  [[nodiscard]] ParameterStore<scalar>& parameters() { return *store_; }
  [[nodiscard]] const ParameterStore<scalar>& parameters() const { return *store_; }

  void train(bool on = true) {
    training_ = on;
    encoder.train(on);
    decoder.train(on);
  }
  void eval() { train(false); }
  [[nodiscard]] bool training() const { return training_; }

  /// The encoder's random state, then the decoder's (checkpoints; token dropout follows the encoder's count).
  [[nodiscard]] std::vector<std::uint64_t> random_state() const {
    auto state = encoder.random_state();
    const auto decoding = decoder.random_state();
    state.insert(state.end(), decoding.begin(), decoding.end());
    return state;
  }
  void set_random_state(std::span<const std::uint64_t> state) {
    require(state.size() == 5, "an XTransformer has a random state of 5 counters, got ", state.size());
    encoder.set_random_state(state.first(2));
    decoder.set_random_state(state.subspan(2));
  }

  static std::string describe() {
    return "XTransformer<" + EncoderLayers::describe() + ", " + DecoderNet::layers_type::describe() + ", " +
           std::string(Backend::name) + ">";
  }

  /// Mean next-token cross-entropy of `tgt` (batch, target length; the shift happens inside: targets equal to
  /// ignore_index do not count) given `src` (batch, source length) and its key mask `src_mask` (1 = real token).
  Loss operator()(TokensView src, TokensView tgt, MaskView src_mask = {}) {
    check_pair(src, tgt.batch, "tgt", src_mask);
    require(tgt.length - 1 <= decoder.max_seq_len(), "target length ", tgt.length, " needs ", tgt.length - 1,
            " decoder positions > decoder max_seq_len ", decoder.max_seq_len(), " (the shift drops one)");
    auto encoded = encoder.embed(src, src_mask);
    ContextView<scalar> context{encoded.data(), src.batch, src.length, config_.dim, src_mask};
    if (training_ && config_.cross_attn_tokens_dropout > 0) {
      const RandomStream stream = RandomStream{encoder.dropout_seed(), 5}.fork(encoder.forward_count());
      context.mask = drop_context_tokens(src.batch, src.length, src_mask, config_.cross_attn_tokens_dropout, stream,
                                         dropped_mask_);
    }
    const Loss loss = decoder(tgt, {}, context);
    encoded_ = encoded.data();
    return Loss(loss.item(), this, &XTransformer::backward_of, decoder.net.forward_count());
  }

  /// `length` new tokens per row after `start_tokens` (batch, start length), cross-attending to the encoding of `src`
  /// (x-transformers' generate(seq_in, seq_out_start, seq_len, mask)). Encoder and decoder run in eval mode.
  TokenBatch generate(TokensView src, TokensView start_tokens, Index length, MaskView src_mask = {},
                      const Sampling& sampling = {}) {
    return with_encoding(src, start_tokens, src_mask, [&](ContextView<scalar> context) {
      return decoder.generate(start_tokens, length, sampling, context);
    });
  }

  /// Beam search for `length` new tokens per row after `start_tokens`, cross-attending to the encoding of `src` (the
  /// encoder runs once; each layer's context keys and values are projected once and repeated to the beams).
  BeamSearchResult beam_search(TokensView src, TokensView start_tokens, Index length, MaskView src_mask = {},
                               const BeamSearchOptions& options = {}) {
    return with_encoding(src, start_tokens, src_mask, [&](ContextView<scalar> context) {
      return decoder.beam_search(start_tokens, length, options, context);
    });
  }

 private:
  /// f(the encoding of src as the decoder's context), both parts in eval mode; the caller's mode comes back even on an
  /// exception.
  template <class F>
  auto with_encoding(TokensView src, TokensView start_tokens, MaskView src_mask, F&& f) {
    check_pair(src, start_tokens.batch, "start_tokens", src_mask);
    struct RestoreMode {
      XTransformer& model;
      bool was_training;
      ~RestoreMode() { model.train(was_training); }
    } restore{*this, training_};
    eval();
    auto encoded = encoder.embed(src, src_mask);
    encoded_ = nullptr;
    return f(ContextView<scalar>{encoded.data(), src.batch, src.length, config_.dim, src_mask});
  }

  static XTransformerConfig validated(XTransformerConfig c) {
    require(c.dim > 0, "dim must be > 0, got ", c.dim);
    for (auto [part, name] : {std::pair{&c.encoder, "encoder"}, std::pair{&c.decoder, "decoder"}}) {
      require(part->layers.dim == 0 || part->layers.dim == c.dim, name, ".layers.dim ", part->layers.dim,
              " differs from dim ", c.dim, " (an XTransformer has one width: leave it 0)");
      part->layers.dim = c.dim;
    }
    require(c.decoder.layers.dim_context == 0 || c.decoder.layers.dim_context == c.dim,
            "decoder.layers.dim_context ", c.decoder.layers.dim_context, " differs from dim ", c.dim,
            " (the decoder attends to the encoder's output)");
    require(!c.tie_token_emb || c.encoder.num_tokens == c.decoder.num_tokens,
            "tie_token_emb needs one vocabulary: encoder.num_tokens ", c.encoder.num_tokens,
            " != decoder.num_tokens ", c.decoder.num_tokens);
    require(c.cross_attn_tokens_dropout >= 0 && c.cross_attn_tokens_dropout < 1,
            "cross_attn_tokens_dropout must be in [0, 1), got ", c.cross_attn_tokens_dropout);
    c.encoder.return_only_embed = !c.encoder_to_logits;
    c.decoder.return_only_embed = false;
    c.encoder.seed = RandomStream{c.seed, 4}.bits64(0);
    c.decoder.seed = RandomStream{c.seed, 4}.bits64(1);
    return c;
  }

  void check_pair(TokensView src, Index other_batch, const char* other, MaskView src_mask) const {
    require(src.data != nullptr && src.batch > 0 && src.length > 0, "empty source batch (", src.batch, ", ",
            src.length, ")");
    require(other_batch == src.batch, other, " batch ", other_batch, " does not match src batch ", src.batch);
    require(src.length <= encoder.max_seq_len(), "source length ", src.length, " > encoder max_seq_len ",
            encoder.max_seq_len());
    if (!src_mask.empty())
      require(src_mask.batch == src.batch && src_mask.length == src.length, "src_mask shape (", src_mask.batch,
              ", ", src_mask.length, ") does not match src (", src.batch, ", ", src.length, ")");
  }

  static void backward_of(void* self, double scale, std::uint64_t forward_id) {
    auto& me = *static_cast<XTransformer*>(self);
    claim_backward(forward_id == me.decoder.net.forward_count() && me.encoded_ != nullptr, forward_id,
                   me.last_backward_);
    me.decoder.net.backward(scalar(scale));
    // d loss / d encoder output = d loss / d context
    me.encoder.backward(ConstView<scalar>(me.decoder.net.context_gradient()), scalar(1));
  }

  bool training_ = true;
  scalar* encoded_ = nullptr;  // the encoder's output of the last training forward
  std::uint64_t last_backward_ = 0;
  std::vector<std::uint8_t> dropped_mask_;
};

}  // namespace xtr
