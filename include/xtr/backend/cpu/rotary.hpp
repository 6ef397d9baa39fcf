#pragma once
// Rotary position embedding on the CPU, in place on the projections (N, heads·dim_head), row n at position
// pos(n) = n mod T + offset. For each head, pairs (x_{2i}, x_{2i+1}), i < r/2, rotate by angle pos·θ^(-2i/r):
//   forward:  (x, y) → (x c − y s,  y c + x s)
//   backward: the transpose rotation (angle −pos·θ^(-2i/r)), applied to the gradients in place.
// Cos/sin come from a table (positions, r/2) computed once in double.
#include <cmath>
#include <vector>

#include "xtr/backend/cpu/parallel.hpp"

namespace xtr::cpu {

template <class T>
class RotaryTable {
 public:
  RotaryTable() = default;
  RotaryTable(Index rotary_dim, double theta, Index positions) : pairs_(rotary_dim / 2), theta_(theta) {
    ensure(positions);
  }
  /// Grows the table to cover positions [0, n) (generation past max_seq_len); never shrinks.
  void ensure(Index n) {
    const Index have = Index(cos_.size()) / std::max<Index>(pairs_, 1);
    if (n <= have || pairs_ == 0) return;
    cos_.resize(n * pairs_);
    sin_.resize(n * pairs_);
    for (Index p = have; p < n; ++p)
      for (Index i = 0; i < pairs_; ++i) {
        // x-transformers: inv_freq = 1 / θ^(2i/r) in float32, angle = float32(p) · inv_freq
        const float inv_freq = float(1.0 / std::pow(theta_, double(2 * i) / double(2 * pairs_)));
        const float angle = float(p) * inv_freq;
        cos_[p * pairs_ + i] = T(std::cos(double(angle)));
        sin_[p * pairs_ + i] = T(std::sin(double(angle)));
      }
  }
  [[nodiscard]] Index pairs() const { return pairs_; }
  [[nodiscard]] Index positions() const { return Index(cos_.size()) / std::max<Index>(pairs_, 1); }

  /// Rotates the first r channels of every head of x (N, heads·dim_head); `inverse` applies the transpose.
  void apply(MatrixView<T> x, Index heads, Index dim_head, Index T_len, Index offset, bool inverse) const {
    apply(x.data(), x.rows(), x.cols(), heads, dim_head, T_len, offset, inverse);
  }
  /// The same on `rows` rows that start `row_stride` apart (the q or k columns of a fused qkv projection).
  void apply(T* x, Index rows, Index row_stride, Index heads, Index dim_head, Index T_len, Index offset,
             bool inverse) const {
    if (pairs_ == 0) return;
    const T sign = inverse ? T(-1) : T(1);
    parallel_rows(rows, heads * pairs_ * 6, [&](Index begin, Index end) {
      for (Index n = begin; n < end; ++n) {
        const Index pos = n % T_len + offset;
        const T* c = cos_.data() + pos * pairs_;
        const T* s = sin_.data() + pos * pairs_;
        for (Index h = 0; h < heads; ++h) {
          T* v = x + n * row_stride + h * dim_head;
          for (Index i = 0; i < pairs_; ++i) {
            const T a = v[2 * i], b = v[2 * i + 1], si = sign * s[i];
            v[2 * i] = a * c[i] - b * si;
            v[2 * i + 1] = b * c[i] + a * si;
          }
        }
      }
    });
  }

 private:
  Index pairs_ = 0;
  double theta_ = 10000;
  std::vector<T> cos_, sin_;
};

}  // namespace xtr::cpu
