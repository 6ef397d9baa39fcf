#pragma once
// Pre-norms on the CPU, one pass per row. Both policies have the form h = x̂ ⊙ (c + γ) [+ β] with a per-row x̂ and
// scale r (the "rstd"), c the gain offset (1 when γ stores gain − 1) and an optional bias β; the backward then shares
// one formula:
//   LayerNorm: x̂ = (x − μ)·r,  r = 1/sqrt(σ² + ε);   dx += r·(dx̂ − mean(dx̂) − x̂·mean(dx̂ ⊙ x̂))
//   RMSNorm:   x̂ = x·r,        r = sqrt(D)/max(‖x‖, ε); dx += r·(dx̂ − x̂·mean(dx̂ ⊙ x̂))   (no projection when clamped)
// with dx̂ = dh ⊙ (c + γ), dγ += Σ_rows dh ⊙ x̂ and dβ += Σ_rows dh. Gradients add into dx: the residual stream's gradient and the
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

/// A norm's parameters: h = x̂ ⊙ (gain_offset + gain) [+ bias].
template <class T>
struct NormWeights {
  NormWeights(const T* gain, T gain_offset = T(1), const T* bias = nullptr)  // NOLINT: a bare gain converts
      : gain(gain), gain_offset(gain_offset), bias(bias) {}
  const T* gain;
  T gain_offset;  // 1: `gain` stores gain − 1 (x-transformers' norm_add_unit_offset); 0: the gain itself
  const T* bias;  // β, or null (bias-less)
};

/// Where a norm's parameter gradients add up: dγ, and dβ when the norm has a bias.
template <class T>
struct NormGradients {
  NormGradients(T* gain, T* bias = nullptr) : gain(gain), bias(bias) {}  // NOLINT: a bare dγ converts
  T* gain;
  T* bias;
};

/// h = norm(x) ⊙ (c + γ) [+ β]; keeps x̂ (N, D) and r (N) for the backward when they are non-null. With `residual_bias`,
/// the residual stream is first updated in the same pass, x += b (the feed-forward's output bias): residual + norm
/// read and write each row once.
template <class Norm, class T>
void norm_forward(MatrixView<T> x, NormWeights<T> w, MatrixView<T> h, T* xhat, T* rstd,
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
      for (Index d = 0; d < D; ++d) hr[d] = xh[d] * (w.gain_offset + w.gain[d]);
      if (w.bias)
        for (Index d = 0; d < D; ++d) hr[d] += w.bias[d];
      if (rstd) rstd[n] = r;
    }
  });
}

/// dx += ∂h/∂x ᵀ dh;  dγ += Σ_rows dh ⊙ x̂;  dβ += Σ_rows dh. Per-thread partial sums live in `arena`.
template <class Norm, class T>
void norm_backward(MatrixView<T> dh, const T* xhat, const T* rstd, NormWeights<T> w, MatrixView<T> dx,
                   NormGradients<T> grads, Arena& arena) {
  const Index N = dh.rows(), D = dh.cols();
  const int threads = max_threads();
  const Index sums = grads.bias ? 2 : 1;  // per thread: dγ, then dβ
  T* partial = arena.allocate<T>(Index(threads) * sums * D);
  std::fill_n(partial, Index(threads) * sums * D, T(0));
  const T sqrt_d = T(std::sqrt(double(D)));
  parallel_rows(N, 8 * D, [&](Index begin, Index end) {
    T* dg = partial + Index(omp_get_thread_num()) * sums * D;
    T* db = grads.bias ? dg + D : nullptr;
    for (Index n = begin; n < end; ++n) {
      const T* g = dh.data() + n * D;
      const T* xh = xhat + n * D;
      T* out = dx.data() + n * D;
      T sum_dxhat = 0, sum_dxhat_xhat = 0;
      for (Index d = 0; d < D; ++d) {
        const T dxh = g[d] * (w.gain_offset + w.gain[d]);
        sum_dxhat += dxh;
        sum_dxhat_xhat += dxh * xh[d];
        dg[d] += g[d] * xh[d];
      }
      if (db)
        for (Index d = 0; d < D; ++d) db[d] += g[d];
      const T mean_dxhat = subtracts_mean<Norm> ? sum_dxhat / T(D) : T(0);
      T mean_proj = sum_dxhat_xhat / T(D);
      if constexpr (!subtracts_mean<Norm>) {
        if (rstd[n] * T(Norm::eps) >= sqrt_d) mean_proj = 0;  // ‖x‖ was clamped to ε: h is linear in x
      }
      const T r = rstd[n];
      for (Index d = 0; d < D; ++d) out[d] += r * (g[d] * (w.gain_offset + w.gain[d]) - mean_dxhat - xh[d] * mean_proj);
    }
  });
  for (int t = 0; t < threads; ++t) {
    const T* sum = partial + Index(t) * sums * D;
    for (Index d = 0; d < D; ++d) grads.gain[d] += sum[d];
    if (grads.bias)
      for (Index d = 0; d < D; ++d) grads.bias[d] += sum[D + d];
  }
}

}  // namespace xtr::cpu
