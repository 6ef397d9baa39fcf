#pragma once
// Linear layers as GEMMs on row-major (rows = tokens) matrices, PyTorch weight layout W: (out, in).
//   forward:        Y (+)= X Wᵀ                       (N, out)
//   input grad:     dX (+)= α dY W                    (N, in)
//   weight grad:    dW += α dYᵀ X                     (out, in)
//   bias grad:      db += α Σ_rows dY                 (out)
// Eigen evaluates each product as one GEMM (with EIGEN_USE_BLAS: the BLAS sgemm/dgemm), accumulating in place.
#include <Eigen/Core>

#include "xtr/backend/cpu/parallel.hpp"
#include "xtr/core/tensor.hpp"

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

}  // namespace xtr::cpu
