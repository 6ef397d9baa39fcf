#pragma once
// DecodeSession<Net>: the next-token logits of a batch of growing sequences, from a causal TransformerWrapper, with
// the KV cache (or recomputing the last max_seq_len tokens when the cache cannot go on: absolute positions or memory
// tokens past max_seq_len). Every generation strategy (sampling, beam search, contrastive decoding) drives one session
// per model; beam search also repeats and reorders its rows. Ragged prompts arrive left-padded: each sequence's
// padding is hidden and its positions count from its first real token, so every row decodes as it would alone.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <type_traits>
#include <vector>

#include "xtr/core/error.hpp"
#include "xtr/core/tokens.hpp"

namespace xtr {

template <class Net>
class DecodeSession {
 public:
  using T = typename Net::scalar;
  using Context = ContextView<T>;
  static constexpr bool cross_attends = Net::layers_type::cross_attend;

  /// A session over `batch` sequences; `context` (cross-attending nets only) has `batch` rows. With bf16_weights the
  /// cached steps read a bfloat16 copy of the weights. `seq_start` (empty, or one per sequence): left padding — the
  /// position of each sequence's first real token in the histories next() reads. `rows`: the tokens per sequence the
  /// caller expects (prompt and new ones; 0: unknown), the KV cache's first size (make_cache).
  DecodeSession(Net& net, Index batch, bool cache_kv, bool bf16_weights, Context context = {},
                std::span<const Index> seq_start = {}, Index rows = 0)
      : net_(net), batch_(batch), use_cache_(cache_kv), context_(context) {
    if (std::any_of(seq_start.begin(), seq_start.end(), [](Index s) { return s != 0; }))
      starts_.assign(seq_start.begin(), seq_start.end());
    require(!bf16_weights || cache_kv, "bf16_weights applies to KV-cached decoding; set cache_kv = true");
    if constexpr (cross_attends) {
      require(!context.empty(), "the decoder cross-attends (CrossAttend): pass the context to attend to");
      require(context.batch == batch, "context batch ", context.batch, " does not match the batch ", batch);
    } else {
      require(context.empty(), "a context was given, but the decoder does not cross-attend: use Decoder<..., "
              "CrossAttend>");
    }
    if (use_cache_) {
      if constexpr (cross_attends) {
        cache_ = net_.make_cache(batch, context, rows);
      } else {
        cache_ = net_.make_cache(batch, rows);
      }
      if (bf16_weights) net_.round_weights_to_bf16(cache_);
      cache_.seq_start = starts_;
    }
  }

  [[nodiscard]] Index batch() const { return batch_; }
  [[nodiscard]] bool cached() const { return use_cache_; }

  /// Logits (batch, num_tokens) of the position after the `length` tokens of each row of `history` (rows `ld` apart);
  /// the tokens after those of the previous call are the new ones. Valid until the net's next forward.
  const T* next(const std::int32_t* history, Index ld, Index length) { return next_all(history, ld, length, 1); }

  /// Logits (batch · outputs, num_tokens) of the last `outputs` positions of `length` (each sequence's rows
  /// consecutive); at least `outputs` tokens must be new.
  const T* next_all(const std::int32_t* history, Index ld, Index length, Index outputs) {
    const Index L = net_.max_seq_len(), B = batch_;
    require(length > seen_ && outputs >= 1 && outputs <= length - seen_ && outputs <= L, "next(): ", length,
            " tokens, the session has seen ", seen_, ", ", outputs, " outputs asked");
    if (use_cache_) {
      const Index n = seen_ == 0 ? std::min(length, L) : length - seen_;
      if (net_.can_decode(cache_, n) && n <= L) {
        window_.resize(std::size_t(B * n));
        for (Index b = 0; b < B; ++b) std::copy_n(history + b * ld + length - n, n, window_.data() + b * n);
        seen_ = length;
        return net_.forward_cached({window_.data(), B, n}, cache_, outputs).data();
      }
      use_cache_ = false;  // see forward_cached: from here on, recompute
      cache_ = {};
    }
    seen_ = length;
    const Index w = std::min(length, L);
    window_.resize(std::size_t(B * w));
    for (Index b = 0; b < B; ++b) std::copy_n(history + b * ld + length - w, w, window_.data() + b * w);
    const T* all = nullptr;
    bool padded = false;  // the window's own left padding: what of each sequence's padding it still holds
    window_starts_.resize(starts_.size());
    for (std::size_t b = 0; b < starts_.size(); ++b) {
      window_starts_[b] = std::max<Index>(starts_[b] - (length - w), 0);
      padded = padded || window_starts_[b] > 0;
    }
    if (padded) {
      all = net_.forward_left_padded({window_.data(), B, w}, window_starts_, context_).data();
    } else if constexpr (cross_attends) {
      all = net_.forward({window_.data(), B, w}, {}, context_).data();
    } else {
      all = net_.forward({window_.data(), B, w}, {}).data();
    }
    const Index V = net_.logits_dim();
    last_.resize(std::size_t(B * outputs * V));
    for (Index b = 0; b < B; ++b) std::copy_n(all + (b * w + w - outputs) * V, outputs * V, last_.data() + b * outputs * V);
    return last_.data();
  }

  /// Forgets the last n tokens seen (speculative decoding's rejected drafts); exact while every sequence has stayed
  /// within max_seq_len.
  void rewind(Index n) {
    require(n >= 0 && n <= seen_, "rewind: ", n, " tokens, the session has seen ", seen_);
    if (use_cache_) net_.rewind(cache_, n);
    seen_ -= n;
  }
  [[nodiscard]] Index seen() const { return seen_; }

  /// Row b becomes rows [b · times, (b + 1) · times) (the cache, and the context a recomputing step reads).
  void repeat_rows(Index times) {
    if (use_cache_) cache_.repeat_rows(times);
    if constexpr (cross_attends) {
      const Index S = context_.length, D = context_.dim;
      std::vector<T> values(std::size_t(batch_ * times * S * D));
      std::vector<std::uint8_t> mask(context_.mask.empty() ? 0 : std::size_t(batch_ * times * S));
      for (Index b = 0; b < batch_; ++b)
        for (Index i = 0; i < times; ++i) {
          std::copy_n(context_.data + b * S * D, S * D, values.data() + (b * times + i) * S * D);
          if (!mask.empty()) std::copy_n(context_.mask.data + b * S, S, mask.data() + (b * times + i) * S);
        }
      context_values_ = std::move(values);
      context_mask_ = std::move(mask);
      context_.data = context_values_.data();
      context_.batch = batch_ * times;
      if (!context_mask_.empty()) context_.mask = {context_mask_.data(), batch_ * times, S};
    }
    if (!starts_.empty()) {
      std::vector<Index> starts(std::size_t(batch_ * times));
      for (Index r = 0; r < batch_ * times; ++r) starts[std::size_t(r)] = starts_[std::size_t(r / times)];
      starts_ = std::move(starts);
    }
    batch_ *= times;
  }

  /// Row r continues row parent[r], parents within groups of `group` rows (the beams of one prompt).
  void reorder_rows(std::span<const Index> parent, Index group) {
    if (use_cache_) cache_.reorder_rows(parent, group, scratch_);
    if (!starts_.empty()) {
      const std::vector<Index> starts = starts_;
      for (std::size_t r = 0; r < parent.size(); ++r) starts_[r] = starts[std::size_t(parent[r])];
    }
  }

 private:
  Net& net_;  // forward passes change its activation arena, not its parameters
  Index batch_ = 0;
  bool use_cache_ = true;
  typename Net::Cache cache_{};
  Index seen_ = 0;
  Context context_{};
  std::vector<T> context_values_;
  std::vector<std::uint8_t> context_mask_;
  std::vector<std::int32_t> window_;
  std::vector<T> last_;
  std::vector<std::byte> scratch_;  // reorder_rows' copies
  std::vector<Index> starts_, window_starts_;
};

}  // namespace xtr

namespace xtr {

/// Any causal decoder-only model behind one interface, for the models a generation strategy drives besides the one
/// it belongs to (contrastive decoding's amateurs, speculative decoding's draft): a TransformerWrapper<Decoder<...>>
/// or an AutoregressiveWrapper (its net), of any scalar type. Holds a reference: the model must outlive it.
class DecoderHandle {
 public:
  /// A decoding session: logits converted to double.
  struct Session {
    virtual ~Session() = default;
    virtual const double* next(const std::int32_t* history, Index ld, Index length, Index outputs = 1) = 0;
    virtual void rewind(Index n) = 0;
    virtual void restore_mode() = 0;
  };

  template <class Model>
  explicit DecoderHandle(Model& model) {
    auto& net = network(model);
    using Net = std::remove_reference_t<decltype(net)>;
    static_assert(!Net::layers_type::cross_attend, "xtr: this model must be decoder-only (no CrossAttend)");
    static_assert(Net::layers_type::causal, "xtr: this model needs a causal stack (a Decoder)");
    num_tokens_ = net.logits_dim();
    max_seq_len_ = net.max_seq_len();
    Net* p = &net;
    open_ = [p](Index batch, bool cache_kv, std::span<const Index> seq_start) -> std::unique_ptr<Session> {
      return std::make_unique<Typed<Net>>(*p, batch, cache_kv, seq_start);
    };
  }

  [[nodiscard]] Index num_tokens() const { return num_tokens_; }
  [[nodiscard]] Index max_seq_len() const { return max_seq_len_; }
  /// A session over `batch` sequences, left-padded up to seq_start (the model in eval mode until restore_mode()).
  [[nodiscard]] std::unique_ptr<Session> open(Index batch, bool cache_kv, std::span<const Index> seq_start = {}) const {
    return open_(batch, cache_kv, seq_start);
  }

 private:
  template <class Model>
  static auto& network(Model& model) {
    if constexpr (requires { model.net.max_seq_len(); }) {
      return model.net;
    } else {
      return model;
    }
  }

  template <class Net>
  struct Typed final : Session {
    Typed(Net& net, Index batch, bool cache_kv, std::span<const Index> seq_start)
        : net(net), was_training(net.training()), decode((net.eval(), net), batch, cache_kv, false, {}, seq_start) {}
    const double* next(const std::int32_t* history, Index ld, Index length, Index outputs) override {
      const auto* logits = decode.next_all(history, ld, length, outputs);
      const Index n = decode.batch() * outputs * net.logits_dim();
      values.assign(logits, logits + n);
      return values.data();
    }
    void rewind(Index n) override { decode.rewind(n); }
    void restore_mode() override { net.train(was_training); }
    Net& net;
    bool was_training;
    DecodeSession<Net> decode;
    std::vector<double> values;
  };

  Index num_tokens_ = 0, max_seq_len_ = 0;
  std::function<std::unique_ptr<Session>(Index, bool, std::span<const Index>)> open_;
};

/// Sessions opened for one generate() call; each model's train/eval mode comes back when they go.
struct OpenSessions {
  std::vector<std::unique_ptr<DecoderHandle::Session>> sessions;
  OpenSessions() = default;
  OpenSessions(const OpenSessions&) = delete;
  OpenSessions& operator=(const OpenSessions&) = delete;
  ~OpenSessions() {
    for (auto& s : sessions) s->restore_mode();
  }
};

}  // namespace xtr
