#pragma once
// Timing shared by the benchmark programs (xtr_bench, cuda_bench): a steady clock, medians, and the training-step
// protocol of ../shared/peer/bench_xt.py (one warm-up step, then the median of the timed ones).
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <vector>

#include "xtr/core/rng.hpp"
#include "xtr/core/tokens.hpp"

namespace xtr::bench {

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

/// (batch, length + 1) tokens below `vocabulary` from a fixed stream: the input (and, shifted, the target) of a step.
inline TokenBatch training_batch(Index batch, Index length, Index vocabulary) {
  TokenBatch x(batch, length + 1);
  const RandomStream rs{0, 0};
  for (std::size_t i = 0; i < x.data.size(); ++i) x.data[i] = std::int32_t(rs.below(i, std::uint64_t(vocabulary)));
  return x;
}

/// Median seconds of `steps` training steps (forward, backward, optimizer step, zero_grad) after one warm-up step.
template <class Model, class Optimizer>
double median_step_seconds(Model& model, Optimizer& optimizer, const TokenBatch& x, int steps) {
  std::vector<double> times;
  for (int i = 0; i < steps + 1; ++i) {
    const auto t = Clock::now();
    auto loss = model(x);
    loss.backward();
    optimizer.step();
    optimizer.zero_grad();
    times.push_back(seconds_since(t));
  }
  times.erase(times.begin());
  return median(times);
}

}  // namespace xtr::bench
