#pragma once
// Token batches: (batch, length) row-major int32 ids, owned (TokenBatch) or viewed (TokensView), and key masks.
#include <cstdint>
#include <initializer_list>
#include <vector>

#include "xtr/core/error.hpp"
#include "xtr/core/tensor.hpp"

namespace xtr {

/// A non-owning (batch, length) view of token ids.
struct TokensView {
  const std::int32_t* data = nullptr;
  Index batch = 0, length = 0;
  [[nodiscard]] std::int32_t operator()(Index b, Index t) const { return data[b * length + t]; }
  [[nodiscard]] Index size() const { return batch * length; }
};

/// A non-owning (batch, length) key mask: 1 = attend to this position, 0 = padding.
struct MaskView {
  const std::uint8_t* data = nullptr;
  Index batch = 0, length = 0;
  [[nodiscard]] bool empty() const { return data == nullptr; }
};

/// An owning (batch, length) batch of token ids.
struct TokenBatch {
  std::vector<std::int32_t> data;
  Index batch = 0, length = 0;

  TokenBatch() = default;
  TokenBatch(Index b, Index t, std::int32_t fill = 0) : data(std::size_t(b * t), fill), batch(b), length(t) {}
  /// From equal-length rows: {{1, 2, 3}, {4, 5, 6}}.
  TokenBatch(std::initializer_list<std::initializer_list<std::int32_t>> rows) {
    batch = Index(rows.size());
    for (const auto& row : rows) {
      if (length == 0) length = Index(row.size());
      require(Index(row.size()) == length, "token rows must have equal length: row ", data.size() / std::max<Index>(length, 1),
              " has ", row.size(), " tokens, the first has ", length);
      data.insert(data.end(), row.begin(), row.end());
    }
  }
  std::int32_t& operator()(Index b, Index t) { return data[std::size_t(b * length + t)]; }
  std::int32_t operator()(Index b, Index t) const { return data[std::size_t(b * length + t)]; }
  operator TokensView() const { return {data.data(), batch, length}; }
  [[nodiscard]] TokensView view() const { return *this; }
  [[nodiscard]] std::vector<std::int32_t> row(Index b) const {
    return {data.begin() + b * length, data.begin() + (b + 1) * length};
  }
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

/// An owning key mask.
struct Mask {
  std::vector<std::uint8_t> data;
  Index batch = 0, length = 0;
  Mask() = default;
  Mask(Index b, Index t, bool value = true) : data(std::size_t(b * t), value), batch(b), length(t) {}
  std::uint8_t& operator()(Index b, Index t) { return data[std::size_t(b * length + t)]; }
  operator MaskView() const { return {data.data(), batch, length}; }
};

}  // namespace xtr
