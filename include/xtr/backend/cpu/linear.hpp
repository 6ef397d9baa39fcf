#pragma once
// Linear layers as GEMMs on row-major (rows = tokens) matrices, PyTorch weight layout W: (out, in).
//   forward:        Y (+)= X Wᵀ                       (N, out)
//   input grad:     dX (+)= α dY W                    (N, in)
//   weight grad:    dW += α dYᵀ X                     (out, in)
//   bias grad:      db += α Σ_rows dY                 (out)
// Eigen evaluates each product as one GEMM (with EIGEN_USE_BLAS: the BLAS sgemm/dgemm), accumulating in place.
#include <Eigen/Core>

#include <cstdint>

#include "xtr/backend/cpu/parallel.hpp"
#include "xtr/core/tensor.hpp"
#include "xtr/core/weight_format.hpp"

namespace xtr::cpu {

template <class T, class X, class W, class Y>
void linear_forward(const X& x, const W& w, Y&& y, bool accumulate = false) {
  // A few rows (decoding): a matrix-vector product bound by reading W; Eigen's GEMV is single-threaded, so split
  // the output features (rows of W) over the threads, each streaming its share of the weights.
  if (x.rows() <= 8) {
    parallel_rows(w.rows(), 2 * x.rows() * w.cols(), [&](Index begin, Index end) {
      auto part = y.middleCols(begin, end - begin);
      if (accumulate) {
        part.noalias() += x * w.middleRows(begin, end - begin).transpose();
      } else {
        part.noalias() = x * w.middleRows(begin, end - begin).transpose();
      }
    });
    return;
  }
  if (accumulate) {
    y.noalias() += x * w.transpose();
  } else {
    y.noalias() = x * w.transpose();
  }
}

template <class T, class DY, class W, class DX>
void linear_backward_input(const DY& dy, const W& w, DX&& dx, T alpha, bool accumulate) {
  if (accumulate) {
    dx.noalias() += alpha * dy * w;
  } else {
    dx.noalias() = alpha * dy * w;
  }
}

template <class T, class DY, class X, class DW>
void linear_backward_weight(const DY& dy, const X& x, DW&& dw, T alpha) {
  dw.noalias() += alpha * dy.transpose() * x;
}

template <class T, class DY, class DB>
void bias_backward(const DY& dy, DB&& db, T alpha) {
  db += alpha * dy.colwise().sum();
}

/// bfloat16 ↔ float: a bfloat16 is the upper 16 bits of a float (rounded to nearest even on the way down;
/// core/weight_format.hpp holds the conversions).
inline float bf16_to_float(std::uint16_t h) { return xtr::detail::bf16_bits_to_float(h); }
inline std::uint16_t float_to_bf16(float f) { return xtr::detail::float_to_bf16_bits(f); }

/// Y (+)= X Wᵀ with W (out, in) stored as bfloat16 (decoding: half the bytes per token). A few rows: each thread
/// streams its share of W's rows once, widening to float in registers and accumulating in float.
template <class T, class Y>
void linear_forward_bf16(MatrixView<T> x, const std::uint16_t* w, Index out, Index in, Y&& y, bool accumulate) {
  parallel_rows(out, 2 * x.rows() * in, [&](Index begin, Index end) {
    for (Index j = begin; j < end; ++j) {
      const std::uint16_t* wj = w + j * in;
      for (Index r = 0; r < x.rows(); ++r) {
        const T* xr = x.data() + r * in;
        float lanes[16] = {};
        Index i = 0;
        for (; i + 16 <= in; i += 16)
          for (int k = 0; k < 16; ++k) lanes[k] += bf16_to_float(wj[i + k]) * float(xr[i + k]);
        float sum = 0;
        for (float lane : lanes) sum += lane;
        for (; i < in; ++i) sum += bf16_to_float(wj[i]) * float(xr[i]);
        y(r, j) = accumulate ? y(r, j) + T(sum) : T(sum);
      }
    }
  });
}

}  // namespace xtr::cpu
