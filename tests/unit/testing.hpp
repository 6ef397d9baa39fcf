#pragma once
// Test helpers: finite-difference gradient checks (central differences in double; a failure needs both the relative
// and the absolute error over threshold; the worst entry is reported) and random inputs.
#include <catch2/catch.hpp>
#include <omp.h>

#include <cmath>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "xtr/core/rng.hpp"
#include "xtr/core/tokens.hpp"

namespace xtr::testing {

/// Makes the enclosed loop single-threaded: finite-difference and generation loops call kernels thousands of times on
/// tiny inputs, where OpenMP wake-ups would dominate (and crawl on a loaded machine). The threaded paths stay covered
/// by the analytic passes and the reference comparisons, which run with the default thread count.
class SerialOpenMP {
 public:
  SerialOpenMP() : saved_(omp_get_max_threads()) { omp_set_num_threads(1); }
  ~SerialOpenMP() { omp_set_num_threads(saved_); }
  SerialOpenMP(const SerialOpenMP&) = delete;
  SerialOpenMP& operator=(const SerialOpenMP&) = delete;

 private:
  int saved_;
};

/// Tolerances per dtype.
template <class T>
struct Tolerance;
template <>
struct Tolerance<double> {
  static constexpr double rel = 1e-5, abs = 1e-8, fd_step = 1e-6;
};
template <>
struct Tolerance<float> {
  static constexpr double rel = 1e-4, abs = 1e-5;
};

struct GradientReport {
  double worst_rel = 0, worst_abs = 0;
  std::string worst_where;
  int failures = 0;
  int checked = 0;
};

/// Compares analytic[i] with (f(x + h e_i) − f(x − h e_i)) / 2h for every i in `indices` of `x`.
inline GradientReport check_gradient(std::vector<double*> x, const std::vector<double>& analytic,
                                     const std::function<double()>& f, const std::string& what,
                                     double rel_tol = Tolerance<double>::rel, double abs_tol = 1e-7) {
  GradientReport r;
  const double h = Tolerance<double>::fd_step;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double saved = *x[i];
    *x[i] = saved + h;
    const double up = f();
    *x[i] = saved - h;
    const double down = f();
    *x[i] = saved;
    const double numeric = (up - down) / (2 * h);
    const double abs_err = std::abs(numeric - analytic[i]);
    const double rel_err = abs_err / std::max(std::abs(numeric), std::abs(analytic[i]) + 1e-30);
    ++r.checked;
    if (abs_err > abs_tol && rel_err > rel_tol) ++r.failures;
    if (abs_err > abs_tol && rel_err > r.worst_rel) {
      r.worst_rel = rel_err;
      r.worst_abs = abs_err;
      std::ostringstream where;
      where << what << "[" << i << "]: analytic " << analytic[i] << " numeric " << numeric;
      r.worst_where = where.str();
    }
  }
  return r;
}

/// check_gradient over about `per_parameter` entries of every parameter of `store` (aliases skipped), whose gradients
/// a backward of `loss` has just accumulated (from zero); stops at the first parameter that fails.
template <class Store, class F>
void require_parameter_gradients(Store& store, const F& loss, Index per_parameter) {
  for (const auto& e : store.entries()) {
    if (e.alias_of >= 0) continue;
    std::vector<double*> x;
    std::vector<double> analytic;
    const Index n = e.shape.numel(), stride = std::max<Index>(1, n / per_parameter);
    for (Index i = 0; i < n; i += stride) {
      x.push_back(store.values().data() + e.offset + i);
      analytic.push_back(store.grads()[e.offset + i]);
    }
    const auto report = check_gradient(x, analytic, loss, e.name);
    INFO("worst: " << report.worst_where << " (rel " << report.worst_rel << ", abs " << report.worst_abs << ", "
                   << report.checked << " checked)");
    REQUIRE(report.failures == 0);
  }
}

/// A batch of uniform random token ids in [0, num_tokens).
inline TokenBatch random_tokens(Index batch, Index length, Index num_tokens, std::uint64_t seed) {
  TokenBatch t(batch, length);
  RandomStream rs{seed, 7};
  for (Index i = 0; i < batch * length; ++i) t.data[i] = std::int32_t(rs.below(std::uint64_t(i), std::uint64_t(num_tokens)));
  return t;
}

inline std::vector<double> random_values(Index n, std::uint64_t seed, double scale = 1.0) {
  std::vector<double> v(static_cast<std::size_t>(n));
  RandomStream rs{seed, 11};
  for (Index i = 0; i < n; ++i) v[i] = scale * rs.normal(std::uint64_t(i));
  return v;
}

}  // namespace xtr::testing

#define XTR_REQUIRE_GRADIENT(report)                                                          \
  do {                                                                                        \
    const auto& xtr_report_ = (report);                                                       \
    INFO("worst: " << xtr_report_.worst_where << " (rel " << xtr_report_.worst_rel << ", abs " \
                   << xtr_report_.worst_abs << ", " << xtr_report_.checked << " checked)");    \
    REQUIRE(xtr_report_.failures == 0);                                                       \
  } while (0)
