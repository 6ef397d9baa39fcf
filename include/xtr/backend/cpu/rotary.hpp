#pragma once
// Rotary position embedding on the CPU, in place on the projections (N, heads·dim_head), row n at position
// pos(n) = n mod T + offset. For each head, pairs (x_{2i}, x_{2i+1}), i < r/2, rotate by angle a = angle(pos, i)
// (ops::RotarySpec: pos·θ^(-2i/r) / interpolation_factor) and, with xpos, scale by s = xpos_scale(pos, i) (q) or 1/s (k):
//   forward:  (x, y) → ((x c − y s_n) σ,  (y c + x s_n) σ)      c = cos a, s_n = sin a, σ the xpos scale (1 without)
//   backward: the transpose: (dx, dy) → ((dx c + dy s_n) σ, (dy c − dx s_n) σ), applied to the gradients in place.
// Cos/sin (times σ) come from tables (positions, r/2) computed once in double from the float angles.
#include <cmath>
#include <vector>

#include "xtr/backend/cpu/parallel.hpp"
#include "xtr/backend/ops.hpp"

namespace xtr::cpu {

template <class T>
class RotaryTable {
 public:
  RotaryTable() = default;
  RotaryTable(Index rotary_dim, double theta, Index positions)
      : RotaryTable(ops::RotarySpec{.dim = rotary_dim, .theta = theta}, positions) {}
  RotaryTable(const ops::RotarySpec& spec, Index positions) : spec_(spec), pairs_(spec.dim / 2) { ensure(positions); }
  /// Grows the table to cover positions [0, n) (generation past max_seq_len); never shrinks.
  void ensure(Index n) {
    const Index have = positions();
    if (n <= have || pairs_ == 0) return;
    const bool xpos = spec_.xpos_scale_base != 0;
    for (auto* t : {&cos_, &sin_}) t->resize(n * pairs_);
    if (xpos)
      for (auto* t : {&kcos_, &ksin_}) t->resize(n * pairs_);
    for (Index p = have; p < n; ++p)
      for (Index i = 0; i < pairs_; ++i) {
        const double angle = double(spec_.angle(p, i)), c = std::cos(angle), s = std::sin(angle);
        const double scale = spec_.xpos_scale(p, i);
        cos_[p * pairs_ + i] = T(c * scale);
        sin_[p * pairs_ + i] = T(s * scale);
        if (xpos) {
          kcos_[p * pairs_ + i] = T(c / scale);
          ksin_[p * pairs_ + i] = T(s / scale);
        }
      }
  }
  [[nodiscard]] Index pairs() const { return pairs_; }
  [[nodiscard]] Index positions() const { return Index(cos_.size()) / std::max<Index>(pairs_, 1); }
  [[nodiscard]] const ops::RotarySpec& spec() const { return spec_; }
  /// The (positions, pairs) tables apply() reads for q (key = false) or k: cos · σ and sin · σ (another backend copies
  /// them to its memory).
  [[nodiscard]] const T* cos_data(bool key) const { return key && !kcos_.empty() ? kcos_.data() : cos_.data(); }
  [[nodiscard]] const T* sin_data(bool key) const { return key && !ksin_.empty() ? ksin_.data() : sin_.data(); }

  /// Rotates the first r channels of every head of x (N, heads·dim_head); `inverse` applies the transpose.
  void apply(MatrixView<T> x, Index heads, Index dim_head, Index T_len, Index offset, bool inverse) const {
    apply(x.data(), x.rows(), x.cols(), heads, dim_head, T_len, offset, inverse);
  }
  /// The same on `rows` rows that start `row_stride` apart (the q or k columns of a fused qkv projection); `key`
  /// selects the keys' xpos scale (its inverse).
  void apply(T* x, Index rows, Index row_stride, Index heads, Index dim_head, Index T_len, Index offset, bool inverse,
             bool key = false) const {
    if (pairs_ == 0) return;
    const T* cos_table = cos_data(key);
    const T* sin_table = sin_data(key);
    const T sign = inverse ? T(-1) : T(1);
    parallel_rows(rows, heads * pairs_ * 6, [&](Index begin, Index end) {
      for (Index n = begin; n < end; ++n) {
        const Index pos = n % T_len + offset;
        const T* c = cos_table + pos * pairs_;
        const T* s = sin_table + pos * pairs_;
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
  ops::RotarySpec spec_;
  Index pairs_ = 0;
  std::vector<T> cos_, sin_;    // q (and k without xpos)
  std::vector<T> kcos_, ksin_;  // k with xpos
};

}  // namespace xtr::cpu
