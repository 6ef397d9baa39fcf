#pragma once
// The view that crosses the backend seam: (rows, cols) row-major with a leading dimension (row stride) `ld`, over
// memory the backend owns. No arithmetic: layers describe work with views, kernels do the work.
#include <concepts>
#include <cstdint>
#include <type_traits>

namespace xtr {

using Index = std::int64_t;

template <class T>
struct View {
  T* data = nullptr;
  Index rows = 0, cols = 0, ld = 0;

  View() = default;
  View(T* data, Index rows, Index cols) : data(data), rows(rows), cols(cols), ld(cols) {}
  View(T* data, Index rows, Index cols, Index ld) : data(data), rows(rows), cols(cols), ld(ld) {}
  /// A view of T converts to a view of const T.
  template <class U>
    requires(std::is_same_v<const U, T> && !std::is_same_v<U, T>)
  View(const View<U>& v) : data(v.data), rows(v.rows), cols(v.cols), ld(v.ld) {}  // NOLINT: implicit by design
  /// From anything with data(), rows() and cols() (an Eigen map, a host matrix): contiguous rows.
  template <class M>
    requires requires(const M& m) {
      { m.data() } -> std::convertible_to<T*>;
      m.rows();
      m.cols();
    }
  View(const M& m) : data(m.data()), rows(Index(m.rows())), cols(Index(m.cols())), ld(Index(m.cols())) {}  // NOLINT

  [[nodiscard]] T* row(Index r) const { return data + r * ld; }
  [[nodiscard]] T& operator()(Index r, Index c) const { return data[r * ld + c]; }
  [[nodiscard]] bool empty() const { return data == nullptr || rows == 0 || cols == 0; }
  [[nodiscard]] bool contiguous() const { return ld == cols; }
  [[nodiscard]] Index size() const { return rows * cols; }
  /// Rows [begin, begin + count).
  [[nodiscard]] View middle_rows(Index begin, Index count) const { return {row(begin), count, cols, ld}; }
  /// Columns [begin, begin + count) of every row.
  [[nodiscard]] View middle_cols(Index begin, Index count) const { return {data + begin, rows, count, ld}; }
};

template <class T>
using ConstView = View<const T>;

}  // namespace xtr
