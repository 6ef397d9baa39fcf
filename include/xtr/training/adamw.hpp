#pragma once
// AdamW (Loshchilov & Hutter): decoupled weight decay; with weight_decay = 0 it is Adam (PyTorch's defaults).
//   m ← β₁ m + (1 − β₁) g;   v ← β₂ v + (1 − β₂) g²;   m̂ = m / (1 − β₁ᵗ);   v̂ = v / (1 − β₂ᵗ)
//   θ ← θ (1 − lr · λ) − lr · m̂ / (sqrt(v̂) + ε)
// One loop over the flat parameter buffer; state is kept in double-free T, step count in the optimiser.
#include <cmath>
#include <cstdint>

#include "xtr/backend/cpu/backend.hpp"
#include "xtr/backend/ops.hpp"
#include "xtr/core/parameters.hpp"

namespace xtr {

struct AdamWOptions {
  double lr = 1e-3;
  double beta1 = 0.9, beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 1e-2;  // PyTorch AdamW's default; 0 gives Adam
};

template <class T, class Backend = Cpu<T>>
class AdamW {
 public:
  /// The options' rules (the constructor's, and load_checkpoint's for options read from a file).
  static AdamWOptions validated(const AdamWOptions& options) {
    require(std::isfinite(options.lr) && options.lr >= 0, "learning rate must be >= 0, got ", options.lr);
    require(options.beta1 >= 0 && options.beta1 < 1, "beta1 must be in [0, 1), got ", options.beta1);
    require(options.beta2 >= 0 && options.beta2 < 1, "beta2 must be in [0, 1), got ", options.beta2);
    require(std::isfinite(options.eps) && options.eps >= 0, "eps must be >= 0, got ", options.eps);
    require(std::isfinite(options.weight_decay) && options.weight_decay >= 0, "weight_decay must be >= 0, got ",
            options.weight_decay);
    return options;
  }
  /// The most steps an optimizer counts (2^53: beyond, the bias corrections no longer change in double).
  static constexpr std::int64_t kMaxSteps = std::int64_t(1) << 53;

  /// The moments live where the parameters do (the store's Memory), zero.
  AdamW(ParameterStore<T>& params, AdamWOptions options = {})
      : params_(&params), options_(validated(options)), exp_avg_(Shape{params.count()}, params.memory()),
        exp_avg_sq_(Shape{params.count()}, params.memory()) {}

  /// One update from the current gradients.
  void step() {
    require(step_ < kMaxSteps, "the optimizer has counted 2^53 steps");
    ++step_;
    const double lr = options_.lr, b1 = options_.beta1, b2 = options_.beta2;
    const T bias1 = T(1 - std::pow(b1, double(step_))), bias2_sqrt = T(std::sqrt(1 - std::pow(b2, double(step_))));
    using K = kernel<Backend, ops::AdamWUpdate>;
    const typename K::Coefficients c{.step_size = T(lr) / bias1, .decay = T(1 - lr * options_.weight_decay),
                                     .eps = T(options_.eps), .beta1 = T(b1), .beta2 = T(b2),
                                     .one_minus_beta1 = T(1 - b1), .one_minus_beta2 = T(1 - b2),
                                     .bias2_sqrt = bias2_sqrt};
    K::step(params_->values().data(), params_->grads().data(), exp_avg_.data(), exp_avg_sq_.data(), params_->count(), c);
  }
  /// Gradients ← 0, by the backend (where they live).
  void zero_grad() {
    kernel<Backend, ops::Fill>::run(View<T>(params_->grads().data(), 1, params_->count()), T(0));
  }

  [[nodiscard]] std::int64_t steps() const { return step_; }
  void set_steps(std::int64_t s) {
    require(s >= 0 && s <= kMaxSteps, "optimizer steps must be in [0, 2^53 = ", kMaxSteps, "], got ", s);
    step_ = s;
  }
  [[nodiscard]] AdamWOptions& options() { return options_; }
  [[nodiscard]] Tensor<T>& exp_avg() { return exp_avg_; }
  [[nodiscard]] Tensor<T>& exp_avg_sq() { return exp_avg_sq_; }

 private:
  ParameterStore<T>* params_;
  AdamWOptions options_;
  std::int64_t step_ = 0;
  Tensor<T> exp_avg_, exp_avg_sq_;
};

/// Adam = AdamW without weight decay (torch.optim.Adam, as x-transformers' training scripts use).
template <class T, class Backend = Cpu<T>>
AdamW<T, Backend> Adam(ParameterStore<T>& params, AdamWOptions options = {.weight_decay = 0}) {
  options.weight_decay = 0;
  return AdamW<T, Backend>(params, options);
}

/// Scales all gradients so that their global L2 norm is at most max_norm (torch.nn.utils.clip_grad_norm_);
/// returns the norm before clipping.
template <class T>
double clip_grad_norm(ParameterStore<T>& params, double max_norm) {
  require(max_norm > 0, "max_norm must be > 0, got ", max_norm);
  T* g = params.grads().data();
  const Index n = params.count();
  double sq = 0;
#pragma omp parallel for reduction(+ : sq) schedule(static)
  for (Index i = 0; i < n; ++i) sq += double(g[i]) * double(g[i]);
  const double norm = std::sqrt(sq);
  const double coef = max_norm / (norm + 1e-6);
  if (coef < 1) {
    const T c = T(coef);
#pragma omp parallel for schedule(static)
    for (Index i = 0; i < n; ++i) g[i] *= c;
  }
  return norm;
}

}  // namespace xtr
