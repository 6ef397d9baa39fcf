#pragma once
// Sequence-to-sequence batches (src, tgt, src_mask) for encoder-decoder training, as x-transformers' enc-dec example
// feeds them: src (B, S) ids, src_mask (B, S) with 1 = real token, tgt (B, T) ids.
// Example b of batch i is written from its own stream RandomStream{seed, stream}.fork(i).fork(b), so batch i is a pure
// function of (seed, stream, i): batches are reproducible, and seek(i) resumes exactly where a run stopped.
// copy_task is x-transformers' README example: src ~ U[2, num_tokens)^S, src_mask = 1, tgt = [1, src, src] (T = 2S+1).
// With min_len >= 1 each example has its own length L ~ U[min_len, S]: src = [ids(L), 0...], src_mask = [1 (L), 0...],
// tgt = [1, src[:L], src[:L], target_pad...].
#include <cstdint>
#include <functional>
#include <limits>
#include <span>
#include <utility>

#include "xtr/core/error.hpp"
#include "xtr/core/rng.hpp"
#include "xtr/core/tensor.hpp"
#include "xtr/core/tokens.hpp"

namespace xtr {

/// One encoder-decoder batch: src (B, S), tgt (B, T), src_mask (B, S) with 1 = attend, 0 = padding.
struct PairedBatch {
  TokenBatch src;
  TokenBatch tgt;
  Mask src_mask;
};

/// Endless PairedBatches of `batch` examples, each written by an example function from its own random stream.
class PairedBatchGenerator {
 public:
  /// Writes one example from `rng` (draw from it by index: rng.below(j, n), rng.uniform(j), ...). The spans hold
  /// src_len, src_len and tgt_len entries and arrive filled with src = 0, src_mask = 1, tgt = 0, so a batch never
  /// depends on what the reused storage held before. It must depend on nothing but its arguments.
  using Example = std::function<void(const RandomStream& rng, std::span<std::int32_t> src,
                                     std::span<std::uint8_t> src_mask, std::span<std::int32_t> tgt)>;

  PairedBatchGenerator(Index batch, Index src_len, Index tgt_len, Example example, std::uint64_t seed,
                       std::uint64_t stream = 0)
      : batch_size_(batch), src_len_(src_len), tgt_len_(tgt_len), example_(std::move(example)), rng_{seed, stream} {
    require(batch >= 1, "batch size ", batch, " must be at least 1");
    require(src_len >= 1, "src_len ", src_len, " must be at least 1");
    require(tgt_len >= 1, "tgt_len ", tgt_len, " must be at least 1");
    require(static_cast<bool>(example_), "the example function of a PairedBatchGenerator is empty");
  }

  /// Batch position(), then advance. The reference stays valid (and is overwritten) until the next call; after the
  /// first call no allocation.
  const PairedBatch& next() {
    fill(position_++, buffer_);
    return buffer_;
  }
  /// Batch position() into `out` (reusing its capacity), then advance.
  void next(PairedBatch& out) { fill(position_++, out); }
  /// Batch i into `out` (reusing its capacity). Does not move the position.
  void fill(std::uint64_t i, PairedBatch& out) const {
    const auto S = static_cast<std::size_t>(src_len_), T = static_cast<std::size_t>(tgt_len_);
    reshape(out.src, src_len_, 0);
    reshape(out.tgt, tgt_len_, 0);
    out.src_mask.data.assign(static_cast<std::size_t>(batch_size_) * S, 1);
    out.src_mask.batch = batch_size_;
    out.src_mask.length = src_len_;
    const RandomStream batch_rng = rng_.fork(i);
    for (Index b = 0; b < batch_size_; ++b) {
      const auto row = static_cast<std::size_t>(b);
      example_(batch_rng.fork(static_cast<std::uint64_t>(b)), std::span(out.src.data).subspan(row * S, S),
               std::span(out.src_mask.data).subspan(row * S, S), std::span(out.tgt.data).subspan(row * T, T));
    }
  }
  /// The stream example b of batch i is drawn from.
  [[nodiscard]] RandomStream example_rng(std::uint64_t i, Index b) const {
    return rng_.fork(i).fork(static_cast<std::uint64_t>(b));
  }

  /// The index of the batch next() returns; save it with a checkpoint and seek() to it on resume.
  [[nodiscard]] std::uint64_t position() const { return position_; }
  void seek(std::uint64_t i) { position_ = i; }

  [[nodiscard]] Index batch_size() const { return batch_size_; }
  [[nodiscard]] Index src_len() const { return src_len_; }
  [[nodiscard]] Index tgt_len() const { return tgt_len_; }
  [[nodiscard]] const RandomStream& rng() const { return rng_; }

 private:
  void reshape(TokenBatch& tokens, Index length, std::int32_t fill) const {
    tokens.data.assign(static_cast<std::size_t>(batch_size_ * length), fill);
    tokens.batch = batch_size_;
    tokens.length = length;
  }

  Index batch_size_;
  Index src_len_;
  Index tgt_len_;
  Example example_;
  RandomStream rng_;
  std::uint64_t position_ = 0;
  PairedBatch buffer_;
};

/// x-transformers' README copy task (BATCH_SIZE 32, ENC_SEQ_LEN 32, NUM_TOKENS 16 + 2). Id 0 pads src, id 1 is the
/// tgt prefix, ids [2, num_tokens) are the payload. min_len = 0: every example has src_len tokens; 1 <= min_len <=
/// src_len: lengths uniform in [min_len, src_len]. target_pad fills tgt past 2L + 1; the default -100 is the
/// AutoregressiveWrapper's ignore_index, so the loss skips it and the decoder input sees pad_value there.
struct CopyTaskConfig {
  Index batch = 32;
  Index src_len = 32;
  Index num_tokens = 18;
  Index min_len = 0;
  std::int32_t target_pad = -100;
};

/// The copy task as a generator of (B, src_len) src / src_mask and (B, 2 src_len + 1) tgt. In example (i, b) draw 0
/// gives L (variable length only) and draw 1 + t gives src token t.
[[nodiscard]] inline PairedBatchGenerator copy_task(const CopyTaskConfig& config, std::uint64_t seed,
                                                    std::uint64_t stream = 0) {
  require(config.batch >= 1, "copy task batch ", config.batch, " must be at least 1");
  require(config.src_len >= 1, "copy task src_len ", config.src_len, " must be at least 1");
  require(config.num_tokens >= 3, "copy task num_tokens ", config.num_tokens,
          " must be at least 3 (id 0 pads, id 1 is the prefix, ids from 2 are copied)");
  require(config.num_tokens <= Index{std::numeric_limits<std::int32_t>::max()} + 1, "copy task num_tokens ",
          config.num_tokens, " exceeds 2^31 = ", Index{std::numeric_limits<std::int32_t>::max()} + 1,
          " (ids are int32)");
  require(config.min_len >= 0, "copy task min_len ", config.min_len,
          " must be at least 0 (0 = every example has src_len tokens)");
  require(config.min_len <= config.src_len, "copy task min_len ", config.min_len, " exceeds src_len ",
          config.src_len);
  const auto S = static_cast<std::size_t>(config.src_len);
  const auto payload = static_cast<std::uint64_t>(config.num_tokens - 2);
  const auto spread = static_cast<std::uint64_t>(config.src_len - config.min_len + 1);
  const bool variable = config.min_len > 0;
  const auto min_len = static_cast<std::size_t>(config.min_len);
  const std::int32_t target_pad = config.target_pad;
  auto example = [=](const RandomStream& rng, std::span<std::int32_t> src, std::span<std::uint8_t> src_mask,
                     std::span<std::int32_t> tgt) {
    const std::size_t L = variable ? min_len + static_cast<std::size_t>(rng.below(0, spread)) : S;
    tgt[0] = 1;
    for (std::size_t t = 0; t < L; ++t) {
      const auto id = static_cast<std::int32_t>(2 + rng.below(1 + t, payload));
      src[t] = id;
      tgt[1 + t] = id;
      tgt[1 + L + t] = id;
    }
    for (std::size_t t = L; t < S; ++t) src_mask[t] = 0;  // src past L stays 0 (padding)
    for (std::size_t t = 2 * L + 1; t < tgt.size(); ++t) tgt[t] = target_pad;
  };
  return PairedBatchGenerator(config.batch, config.src_len, 2 * config.src_len + 1, std::move(example), seed, stream);
}

}  // namespace xtr
