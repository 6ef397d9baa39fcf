#pragma once
// Masked-token training data: windows of exactly max_seq_len bytes (no shift: NonAutoregressiveWrapper masks inside),
// random positions from a counter-based stream as BatchLoader's, from data that must not contain the mask token.
#include <algorithm>
#include <cstdint>

#include "xtr/core/error.hpp"
#include "xtr/data/text_dataset.hpp"

namespace xtr {

/// Training windows of exactly `max_seq_len` tokens (no shift) from byte data that must not contain `mask_id`.
class MaskedTokenBatches {
 public:
  MaskedTokenBatches(TextDataset data, Index batch_size, Index max_seq_len, std::int32_t mask_id, std::uint64_t seed,
                     std::uint64_t stream = 0)
      : loader_(checked(std::move(data), mask_id), batch_size, window_shift(max_seq_len), seed, stream) {}
  /// The next (batch, max_seq_len) window batch.
  const TokenBatch& next() { return loader_.next(); }
  [[nodiscard]] std::uint64_t position() const { return loader_.position(); }
  void seek(std::uint64_t k) { loader_.seek(k); }

 private:
  static Index window_shift(Index max_seq_len) {  // BatchLoader's rows are seq_len + 1 tokens
    require(max_seq_len >= 2, "max_seq_len must be >= 2, got ", max_seq_len);
    return max_seq_len - 1;
  }
  static TextDataset checked(TextDataset data, std::int32_t mask_id) {
    if (mask_id >= 0 && mask_id < 256) {
      const auto bytes = data.bytes();
      const auto it = std::find(bytes.begin(), bytes.end(), std::uint8_t(mask_id));
      require(it == bytes.end(), "the data contains mask_id ", mask_id, " at byte ", it - bytes.begin(),
              ": byte-level data needs a mask_id outside 0..255 (e.g. 256 with num_tokens 257)");
    }
    return data;
  }
  BatchLoader loader_;
};

}  // namespace xtr
