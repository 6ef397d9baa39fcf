#pragma once
// Norms on the CPU, one pass per row. Every norm policy has the form h = x̂ ⊙ (c + γ) [+ β] with a per-row x̂ and
// scale r (the "rstd"), c the gain offset (1 when γ stores gain − 1), γ per channel, one scalar (ScaleNorm) or absent
// (SimpleRMSNorm: h = x̂), and an optional bias β; the backward then shares one formula:
//   mean-subtracting (LayerNorm): x̂ = (x − μ)·r,  r = 1/sqrt(σ² + ε);    dx += r·(dx̂ − mean(dx̂) − x̂·mean(dx̂ ⊙ x̂))
//   L2 (RMSNorm, ScaleNorm, SimpleRMSNorm): x̂ = x·r,  r = sqrt(D)/max(‖x‖, ε);  dx += r·(dx̂ − x̂·mean(dx̂ ⊙ x̂))
//                                                                                 (no projection when clamped)
// with dx̂ = dh ⊙ (c + γ), dγ += Σ_rows dh ⊙ x̂ (a scalar γ: Σ over everything) and dβ += Σ_rows dh. Gradients add
// into dx: the residual stream's gradient and the norm's contribution meet in the same pass.
#include <cmath>
#include <type_traits>
#include <vector>

#include "xtr/backend/cpu/parallel.hpp"
#include "xtr/backend/ops.hpp"
#include "xtr/core/arena.hpp"
#include "xtr/policies/layer_norm.hpp"
#include "xtr/policies/rms_norm.hpp"

namespace xtr::cpu {

template <class Norm>
inline constexpr bool subtracts_mean = Norm::subtracts_mean;

template <class T>
using NormWeights = ops::NormWeights<T>;
template <class T>
using NormGradients = ops::NormGradients<T>;

namespace detail {
/// The multiplier of x̂ at channel d: c + γ_d, c + γ, or 1 (also for a null gain).
template <class Norm, class T>
T gain_at(const NormWeights<T>& w, Index d) {
  if constexpr (Norm::gain == NormGain::channel) return w.gain ? w.gain_offset + w.gain[d] : T(1);
  else if constexpr (Norm::gain == NormGain::scalar) return w.gain ? w.gain_offset + w.gain[0] : T(1);
  else return T(1);
}
/// sqrt(D) for the RMS-style norms, 1 for a plain L2 normalisation.
template <class Norm>
double root_dim(Index D) {
  return Norm::root_dim ? std::sqrt(double(D)) : 1.0;
}
/// Σ (x_d − c)^p over a row for p = 1 or 2, in double, in 16 independent partial sums added pairwise at the end: one
/// dependent chain of D double additions (about 4 cycles each) was most of a 512-wide norm's time, and a decoding step
/// runs two norms per layer on its critical path between parallel regions.
template <int P, class T>
double centred_power_sum(const T* x, Index D, double c) {
  constexpr int lanes = 16;
  double part[lanes] = {};
  Index d = 0;
  for (; d + lanes <= D; d += lanes)
    for (int l = 0; l < lanes; ++l) {
      const double v = double(x[d + l]) - c;
      part[l] += P == 1 ? v : v * v;
    }
  for (int l = 0; d < D; ++d, ++l) {
    const double v = double(x[d]) - c;
    part[l] += P == 1 ? v : v * v;
  }
  for (int width = lanes / 2; width >= 1; width /= 2)
    for (int l = 0; l < width; ++l) part[l] += part[l + width];
  return part[0];
}
}  // namespace detail

/// h (+)= norm(x [+ residual]) ⊙ (c + γ) [+ β], rows of x, residual and h `ld` apart; keeps x̂ (N, D) and r (N)
/// for the backward when they are non-null. h may be x (in place); with `accumulate`, h += instead of h = (a sandwich
/// norm adding into the residual stream). `residual` (N, D) is added to x first (a post-norm's residual + branch).
template <class Norm, class T>
void norm_rows(const T* x, const T* residual, Index N, Index D, Index ld, NormWeights<T> w, T* h, bool accumulate,
               T* xhat, T* rstd) {
  parallel_rows(N, 6 * D, [&](Index begin, Index end) {
    std::vector<T> sum_row(residual ? std::size_t(D) : 0);
    for (Index n = begin; n < end; ++n) {
      const T* xr = x + n * ld;
      if (residual) {
        for (Index d = 0; d < D; ++d) sum_row[std::size_t(d)] = xr[d] + residual[n * ld + d];
        xr = sum_row.data();
      }
      T* hr = h + n * ld;
      T* xh = xhat ? xhat + n * D : (accumulate || residual ? nullptr : hr);  // without a save buffer: in place in h
      double mean = 0;
      if constexpr (subtracts_mean<Norm>) mean = detail::centred_power_sum<1>(xr, D, 0.0) / double(D);
      const double sq = detail::centred_power_sum<2>(xr, D, mean);
      T r;
      if constexpr (subtracts_mean<Norm>) {
        r = T(1.0 / std::sqrt(sq / double(D) + Norm::eps));
      } else {
        r = T(detail::root_dim<Norm>(D) / std::max(std::sqrt(sq), Norm::eps));
      }
      const T m = T(mean);
      if (xh) {
        for (Index d = 0; d < D; ++d) xh[d] = (xr[d] - m) * r;
        for (Index d = 0; d < D; ++d) {
          const T v = xh[d] * detail::gain_at<Norm>(w, d) + (w.bias ? w.bias[d] : T(0));
          hr[d] = accumulate ? hr[d] + v : v;
        }
      } else {  // accumulate or residual without a save buffer: one expression per entry
        for (Index d = 0; d < D; ++d) {
          const T v = (xr[d] - m) * r * detail::gain_at<Norm>(w, d) + (w.bias ? w.bias[d] : T(0));
          hr[d] = accumulate ? hr[d] + v : v;
        }
      }
      if (rstd) rstd[n] = r;
    }
  });
}

/// h = norm(x) ⊙ (c + γ) [+ β]; keeps x̂ (N, D) and r (N) for the backward when they are non-null. With `residual_bias`,
/// the residual stream is first updated in the same pass, x += b.
template <class Norm, class T>
void norm_forward(MatrixView<T> x, NormWeights<T> w, MatrixView<T> h, T* xhat, T* rstd,
                  const T* residual_bias = nullptr) {
  const Index D = x.cols();
  if (residual_bias)
    parallel_rows(x.rows(), D, [&](Index begin, Index end) {
      for (Index n = begin; n < end; ++n)
        for (Index d = 0; d < D; ++d) x.data()[n * D + d] += residual_bias[d];
    });
  norm_rows<Norm, T>(x.data(), nullptr, x.rows(), D, D, w, h.data(), false, xhat, rstd);
}

/// dx += ∂h/∂x ᵀ dh (rows of dh `ld_dh` apart, of dx `ld_dx` apart);  dγ += Σ_rows dh ⊙ x̂;  dβ += Σ_rows dh.
/// Per-thread partial sums live in `arena`.
template <class Norm, class T>
void norm_backward_rows(const T* dh, Index ld_dh, const T* xhat, const T* rstd, NormWeights<T> w, T* dx, Index ld_dx,
                        Index N, Index D, NormGradients<T> grads, Arena& arena) {
  const int threads = max_threads();
  const bool gain_grad = Norm::gain != NormGain::none && grads.gain != nullptr;
  const Index gain_sums = !gain_grad ? 0 : Norm::gain == NormGain::channel ? D : 1;
  const Index sums = gain_sums + (grads.bias ? D : 0);  // per thread: dγ, then dβ
  T* partial = arena.allocate<T>(Index(threads) * std::max<Index>(sums, 1));
  std::fill_n(partial, Index(threads) * std::max<Index>(sums, 1), T(0));
  const T root = T(detail::root_dim<Norm>(D));
  parallel_rows(N, 8 * D, [&](Index begin, Index end) {
    T* dg = partial + Index(omp_get_thread_num()) * sums;
    T* db = grads.bias ? dg + gain_sums : nullptr;
    for (Index n = begin; n < end; ++n) {
      const T* g = dh + n * ld_dh;
      const T* xh = xhat + n * D;
      T* out = dx + n * ld_dx;
      T sum_dxhat = 0, sum_dxhat_xhat = 0;
      for (Index d = 0; d < D; ++d) {
        const T dxh = g[d] * detail::gain_at<Norm>(w, d);
        sum_dxhat += dxh;
        sum_dxhat_xhat += dxh * xh[d];
      }
      if (gain_grad) {
        if constexpr (Norm::gain == NormGain::channel)
          for (Index d = 0; d < D; ++d) dg[d] += g[d] * xh[d];
        if constexpr (Norm::gain == NormGain::scalar)
          for (Index d = 0; d < D; ++d) dg[0] += g[d] * xh[d];
      }
      if (db)
        for (Index d = 0; d < D; ++d) db[d] += g[d];
      const T mean_dxhat = subtracts_mean<Norm> ? sum_dxhat / T(D) : T(0);
      // x̂ has mean square 1 (LayerNorm, RMS norms) or norm 1 (L2): the projection divides by D or by 1
      T mean_proj = sum_dxhat_xhat / (Norm::root_dim || subtracts_mean<Norm> ? T(D) : T(1));
      if constexpr (!subtracts_mean<Norm>) {
        if (rstd[n] * T(Norm::eps) >= root) mean_proj = 0;  // ‖x‖ was clamped to ε: h is linear in x
      }
      const T r = rstd[n];
      for (Index d = 0; d < D; ++d) out[d] += r * (g[d] * detail::gain_at<Norm>(w, d) - mean_dxhat - xh[d] * mean_proj);
    }
  });
  for (int t = 0; t < threads; ++t) {
    const T* sum = partial + Index(t) * sums;
    for (Index d = 0; d < gain_sums; ++d) grads.gain[d] += sum[d];
    if (grads.bias)
      for (Index d = 0; d < D; ++d) grads.bias[d] += sum[gain_sums + d];
  }
}

/// dx += ∂h/∂x ᵀ dh;  dγ += Σ_rows dh ⊙ x̂;  dβ += Σ_rows dh. Per-thread partial sums live in `arena`.
template <class Norm, class T>
void norm_backward(MatrixView<T> dh, const T* xhat, const T* rstd, NormWeights<T> w, MatrixView<T> dx,
                   NormGradients<T> grads, Arena& arena) {
  norm_backward_rows<Norm, T>(dh.data(), dh.cols(), xhat, rstd, w, dx.data(), dx.cols(), dh.rows(), dh.cols(), grads,
                              arena);
}

}  // namespace xtr::cpu
