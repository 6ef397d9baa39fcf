#pragma once
// Softmax cross-entropy fused with its gradient, one pass per row of logits (N, V):
//   loss  = (1/M) Σ_{n: y_n ≠ ignore} (logsumexp(z_n) − z_n[y_n]),  M = #non-ignored targets
//   dz_n  = α (softmax(z_n) − onehot(y_n)) / M  (0 for ignored rows), written to `dlogits` (which may be the logits)
// No probability tensor is kept. Returns the loss (mean over M; 0 when M = 0, as a defined value).
#include <cmath>
#include <cstdint>
#include <limits>

#include "xtr/backend/cpu/parallel.hpp"

namespace xtr::cpu {

template <class T>
double cross_entropy(const T* logits, Index N, Index V, const std::int32_t* targets, std::int32_t ignore_index,
                     T* dlogits, T alpha = T(1)) {
  Index count = 0;
  for (Index n = 0; n < N; ++n) count += targets[n] != ignore_index;
  const T inv_count = count > 0 ? T(double(alpha) / double(count)) : T(0);
  double total = 0;
#pragma omp parallel for reduction(+ : total) schedule(static) if (N > 64)
  for (Index n = 0; n < N; ++n) {
    Eigen::Map<const Eigen::Array<T, 1, Eigen::Dynamic>> z(logits + n * V, V);
    const std::int32_t y = targets[n];
    if (y == ignore_index) {
      if (dlogits) Eigen::Map<Eigen::Array<T, 1, Eigen::Dynamic>>(dlogits + n * V, V).setZero();
      continue;
    }
    const T m = z.maxCoeff();
    const T sum = (z - m).exp().sum();
    const T lse = m + std::log(sum);
    total += double(lse - z[y]);
    if (dlogits) {
      Eigen::Map<Eigen::Array<T, 1, Eigen::Dynamic>> dz(dlogits + n * V, V);
      dz = (z - lse).exp() * inv_count;
      dz[y] -= inv_count;
    }
  }
  return count > 0 ? total / double(count) : 0.0;
}

/// The loss, and with `write_gradient` dz over the logits (the form the golden tests use with a custom loss).
template <class T>
double cross_entropy_forward_backward(MatrixView<T> logits, const std::int32_t* targets, std::int32_t ignore_index,
                                      bool write_gradient) {
  return cross_entropy<T>(logits.data(), logits.rows(), logits.cols(), targets, ignore_index,
                          write_gradient ? logits.data() : nullptr);
}

}  // namespace xtr::cpu
