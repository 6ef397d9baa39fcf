#pragma once
// Threading for the CPU backend: OpenMP over independent rows or (batch, head) tasks. Eigen's own GEMMs use the same
// OpenMP pool and do not nest inside these regions.
#include <omp.h>

#include <algorithm>

#include "xtr/core/tensor.hpp"

namespace xtr::cpu {

/// Threads a parallel region will use.
inline int max_threads() { return omp_get_max_threads(); }

/// Calls f(begin, end) over [0, n) split into contiguous chunks, one per thread; serial below `grain` items.
template <class F>
void parallel_rows(Index n, F&& f, Index grain = 16) {
  if (n < 2 * grain || max_threads() == 1 || omp_in_parallel()) {
    f(Index{0}, n);
    return;
  }
#pragma omp parallel
  {
    const Index threads = omp_get_num_threads(), id = omp_get_thread_num();
    const Index chunk = (n + threads - 1) / threads;
    const Index begin = std::min(n, id * chunk), end = std::min(n, begin + chunk);
    if (begin < end) f(begin, end);
  }
}

/// Calls f(task, thread) for every task in [0, n), dynamically scheduled (attention: tasks are (batch, head) pairs).
template <class F>
void parallel_tasks(Index n, F&& f) {
#pragma omp parallel for schedule(dynamic, 1) if (n > 1 && !omp_in_parallel())
  for (Index task = 0; task < n; ++task) f(task, omp_get_thread_num());
}

}  // namespace xtr::cpu
