#pragma once
// Threading for the CPU backend: OpenMP over independent rows or (batch, head) tasks. Eigen's own GEMMs use the same
// OpenMP pool and do not nest inside these regions.
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <utility>

#include "xtr/core/tensor.hpp"

namespace xtr::cpu {

/// Threads a parallel region will use.
inline int max_threads() { return omp_get_max_threads(); }

/// Below this many elementary operations a parallel region costs more than it saves (waking a thread, and on a
/// loaded machine waiting for one the OS has parked), so the work runs on the calling thread.
inline constexpr Index parallel_work_threshold = Index{1} << 16;

/// Whether `work` elementary operations over `units` independent pieces are worth a parallel region: at least two
/// pieces, enough work, more than one thread, and not already inside a region.
inline bool worth_threads(Index units, Index work) {
  return units >= 2 && work >= parallel_work_threshold && max_threads() > 1 && !omp_in_parallel();
}

/// Inside a parallel region: the calling thread's contiguous share [begin, end) of [0, n).
inline std::pair<Index, Index> thread_share(Index n) {
  const Index threads = omp_get_num_threads(), id = omp_get_thread_num();
  const Index chunk = (n + threads - 1) / threads;
  const Index begin = std::min(n, id * chunk);
  return {begin, std::min(n, begin + chunk)};
}

/// Inside a parallel region: first(begin, end) on the calling thread's share of [0, n_first), then a barrier, so that
/// every thread sees what all of them made (none when n_first is 0: the same on every thread, so all of them reach
/// the barrier or none).
template <class First>
void share_then_wait(Index n_first, First& first) {
  const auto [b, e] = thread_share(n_first);
  if (b < e) first(b, e);
  if (n_first > 0) {
#pragma omp barrier
  }
}

/// Calls f(begin, end) over [0, n) split into contiguous chunks, one per thread, when n · work_per_row is worth it.
template <class F>
void parallel_rows(Index n, Index work_per_row, F&& f) {
  if (!worth_threads(n, n * work_per_row)) {
    f(Index{0}, n);
    return;
  }
#pragma omp parallel
  {
    const auto [begin, end] = thread_share(n);
    if (begin < end) f(begin, end);
  }
}

/// Calls f(begin, end) on the blocks [0, block), [block, 2·block), … of [0, n), handed to the threads as each asks for
/// its next (a thread slowed by the machine takes fewer), after first(b, e) has run on every thread's share [b, e) of
/// [0, n_first) and every thread has finished it: a job whose input the threads make together, in one parallel
/// region. Serially (small work, one thread, inside a parallel region): first(0, n_first), then the blocks in order.
template <class First, class F>
void parallel_blocks_after(Index n_first, First&& first, Index n, Index block, Index work_per_row, F&& f) {
  const Index blocks = (n + block - 1) / block;
  if (!worth_threads(blocks, n * work_per_row)) {
    first(Index{0}, n_first);
    for (Index i = 0; i < blocks; ++i) f(i * block, std::min(n, (i + 1) * block));
    return;
  }
#pragma omp parallel
  {
    share_then_wait(n_first, first);
#pragma omp for schedule(dynamic, 1)
    for (Index i = 0; i < blocks; ++i) f(i * block, std::min(n, (i + 1) * block));
  }
}

/// As parallel_blocks_after, but each thread claims its next block before it runs the current one, and
/// f(begin, end, next_begin, next_end) learns which ([n, n) when it has none): a kernel that streams its blocks from
/// memory prefetches the start of its next block while it finishes the current one (omp's dynamic schedule hides
/// which block a thread takes next). Still dynamic: a thread the machine slows holds at most one block besides the
/// one it runs. Serially: every block in order, each told the one after it.
template <class First, class F>
void parallel_blocks_ahead(Index n_first, First&& first, Index n, Index block, Index work_per_row, F&& f) {
  const Index blocks = (n + block - 1) / block;
  const auto run = [&](Index i, Index next) {
    f(i * block, std::min(n, (i + 1) * block), std::min(n, next * block), std::min(n, (next + 1) * block));
  };
  if (!worth_threads(blocks, n * work_per_row)) {
    first(Index{0}, n_first);
    for (Index i = 0; i < blocks; ++i) run(i, i + 1);
    return;
  }
  std::atomic<Index> claimed{0};
#pragma omp parallel
  {
    share_then_wait(n_first, first);
    for (Index i = claimed.fetch_add(1, std::memory_order_relaxed); i < blocks;) {
      const Index next = claimed.fetch_add(1, std::memory_order_relaxed);
      run(i, next);
      i = next;
    }
  }
}

/// Calls f(task, thread) for every task in [0, n), dynamically scheduled (attention: (batch, head) pairs), in
/// parallel when n · work_per_task is worth it.
template <class F>
void parallel_tasks(Index n, Index work_per_task, F&& f) {
  const bool parallel = worth_threads(n, n * work_per_task);
#pragma omp parallel for schedule(dynamic, 1) if (parallel)
  for (Index task = 0; task < n; ++task) f(task, omp_get_thread_num());
}

}  // namespace xtr::cpu
