#pragma once
// Pre-norms on the CPU, one pass per row. Both policies have the form h = x̂ ⊙ (1 + γ) with a per-row x̂ and scale
// r (the "rstd"); the backward then shares one formula:
//   LayerNorm: x̂ = (x − μ)·r,  r = 1/sqrt(σ² + ε);   dx += r·(dx̂ − mean(dx̂) − x̂·mean(dx̂ ⊙ x̂))
//   RMSNorm:   x̂ = x·r,        r = sqrt(D)/max(‖x‖, ε); dx += r·(dx̂ − x̂·mean(dx̂ ⊙ x̂))   (no projection when clamped)
// with dx̂ = dh ⊙ (1 + γ) and dγ += Σ_rows dh ⊙ x̂. Gradients add into dx: the residual stream's gradient and the
// norm's contribution meet in the same pass.
#include <cmath>
#include <type_traits>

#include "xtr/backend/cpu/parallel.hpp"
#include "xtr/core/arena.hpp"
#include "xtr/policies/layer_norm.hpp"
#include "xtr/policies/rms_norm.hpp"

namespace xtr::cpu {

template <class Norm>
inline constexpr bool subtracts_mean = std::is_same_v<Norm, LayerNorm>;

/// h = norm(x) ⊙ (1 + γ); keeps x̂ (N, D) and r (N) for the backward when they are non-null. With `residual_bias`,
/// the residual stream is first updated in the same pass, x += b (the feed-forward's output bias): residual + norm
/// read and write each row once.
template <class Norm, class T>
void norm_forward(MatrixView<T> x, const T* gamma, MatrixView<T> h, T* xhat, T* rstd,
                  const T* residual_bias = nullptr) {
  const Index D = x.cols();
  parallel_rows(x.rows(), 6 * D, [&](Index begin, Index end) {
    for (Index n = begin; n < end; ++n) {
      T* xr = x.data() + n * D;
      T* hr = h.data() + n * D;
      if (residual_bias)
        for (Index d = 0; d < D; ++d) xr[d] += residual_bias[d];
      T* xh = xhat ? xhat + n * D : hr;  // without a save buffer, normalise in place in h
      double mean = 0, sq = 0;
      if constexpr (subtracts_mean<Norm>) {
        for (Index d = 0; d < D; ++d) mean += xr[d];
        mean /= double(D);
      }
      for (Index d = 0; d < D; ++d) {
        const double c = double(xr[d]) - mean;
        sq += c * c;
      }
      T r;
      if constexpr (subtracts_mean<Norm>) {
        r = T(1.0 / std::sqrt(sq / double(D) + Norm::eps));
      } else {
        r = T(std::sqrt(double(D)) / std::max(std::sqrt(sq), Norm::eps));
      }
      const T m = T(mean);
      for (Index d = 0; d < D; ++d) xh[d] = (xr[d] - m) * r;
      for (Index d = 0; d < D; ++d) hr[d] = xh[d] * (T(1) + gamma[d]);
      if (rstd) rstd[n] = r;
    }
  });
}

/// dx += ∂h/∂x ᵀ dh;  dγ += Σ_rows dh ⊙ x̂. Per-thread partial dγ sums live in `arena`.
template <class Norm, class T>
void norm_backward(MatrixView<T> dh, const T* xhat, const T* rstd, const T* gamma, MatrixView<T> dx, T* dgamma,
                   Arena& arena) {
  const Index N = dh.rows(), D = dh.cols();
  const int threads = max_threads();
  T* partial = arena.allocate<T>(Index(threads) * D);
  std::fill_n(partial, Index(threads) * D, T(0));
  const T sqrt_d = T(std::sqrt(double(D)));
  parallel_rows(N, 8 * D, [&](Index begin, Index end) {
    T* dg = partial + Index(omp_get_thread_num()) * D;
    for (Index n = begin; n < end; ++n) {
      const T* g = dh.data() + n * D;
      const T* xh = xhat + n * D;
      T* out = dx.data() + n * D;
      T sum_dxhat = 0, sum_dxhat_xhat = 0;
      for (Index d = 0; d < D; ++d) {
        const T dxh = g[d] * (T(1) + gamma[d]);
        sum_dxhat += dxh;
        sum_dxhat_xhat += dxh * xh[d];
        dg[d] += g[d] * xh[d];
      }
      const T mean_dxhat = subtracts_mean<Norm> ? sum_dxhat / T(D) : T(0);
      T mean_proj = sum_dxhat_xhat / T(D);
      if constexpr (!subtracts_mean<Norm>) {
        if (rstd[n] * T(Norm::eps) >= sqrt_d) mean_proj = 0;  // ‖x‖ was clamped to ε: h is linear in x
      }
      const T r = rstd[n];
      for (Index d = 0; d < D; ++d) out[d] += r * (g[d] * (T(1) + gamma[d]) - mean_dxhat - xh[d] * mean_proj);
    }
  });
  for (int t = 0; t < threads; ++t)
    for (Index d = 0; d < D; ++d) dgamma[d] += partial[Index(t) * D + d];
}

}  // namespace xtr::cpu
