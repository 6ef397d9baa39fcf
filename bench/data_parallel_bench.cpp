// Data-parallel training step under mpirun (built with MPI): per-rank batch fixed (weak scaling, as DDP is used), the
// training step timed with the gradient all-reduce overlapped with backward and, in the same run, without overlap
// (every bucket after backward), so the all-reduce time and the part of it hidden behind backward are measured.
//
//   mpirun -np 1 data_parallel_bench --config small|enwik8 [--steps N] [--bucket-mib X]
//   mpirun -np 2 data_parallel_bench --config small|enwik8 …        (tools/bench_distributed.sh runs both)
//
// One JSON line (rank 0): tokens/s over all ranks, step/backward medians, exposed all-reduce time with and without
// overlap (the wait of the rank that finished backward last: the others' waits include the ranks' skew), hidden
// fraction, and the all-reduce of the gradient
// buffer alone with its bandwidth (algorithm and ring "bus" bandwidth, as nccl-tests reports).
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "xtr/distributed.hpp"
#include "xtr/xtr.hpp"

namespace {

using Net = xtr::TransformerWrapper<xtr::Decoder<xtr::Rotary, xtr::LayerNorm, xtr::GELU>>;
using Model = xtr::AutoregressiveWrapper<Net>;
using Clock = std::chrono::steady_clock;

struct BenchConfig {
  const char* name;
  xtr::Index dim, depth, heads, seq_len, batch;  // batch per rank
};
constexpr BenchConfig configs[] = {{"small", 256, 4, 4, 256, 8}, {"enwik8", 512, 6, 8, 1024, 4}};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Phase {
  double step = 0, backward = 0, exposed = 0;
  int buckets = 0, started = 0;
};

Phase run(const xtr::distributed::Communicator& comm, const BenchConfig& c, int steps, bool overlap, double bucket_mib) {
  Model model(Net({.num_tokens = 256, .max_seq_len = c.seq_len,
                   .layers = {.dim = c.dim, .depth = c.depth, .heads = c.heads}}));
  xtr::distributed::DataParallel dp(comm, model, c.batch, {.bucket_mib = bucket_mib, .overlap = overlap});
  auto opt = xtr::Adam(model.parameters(), {.lr = 1e-4});
  xtr::TokenBatch x(c.batch, c.seq_len + 1);
  xtr::RandomStream rs{0, std::uint64_t(comm.rank())};
  for (std::size_t i = 0; i < x.data.size(); ++i) x.data[i] = std::int32_t(rs.below(i, 256));
  std::vector<double> step, backward, exposed;
  Phase p;
  for (int i = 0; i < steps + 1; ++i) {  // one warm-up
    comm.barrier();
    const auto t = Clock::now();
    dp.backward(model(x), true);
    const auto t_backward_end = Clock::now() - std::chrono::duration_cast<Clock::duration>(
                                                   std::chrono::duration<double>(dp.stats().exposed_seconds));
    xtr::clip_grad_norm(model.parameters(), 0.5);
    opt.step();
    opt.zero_grad();
    const double s = std::chrono::duration<double>(Clock::now() - t).count();
    if (i == 0) continue;
    step.push_back(comm.max(s));
    backward.push_back(comm.max(dp.stats().backward_seconds));
    // the exposed all-reduce is what the rank that finished backward last waited: earlier ranks also wait for it
    const double finished = std::chrono::duration<double>(t_backward_end - t).count();
    const double last = comm.max(finished);
    exposed.push_back(comm.max(finished == last ? dp.stats().exposed_seconds : 0.0));
    p.buckets = dp.stats().buckets;
    p.started = dp.stats().started_during_backward;
  }
  p.step = median(step);
  p.backward = median(backward);
  p.exposed = median(exposed);
  return p;
}

}  // namespace

int main(int argc, char** argv) {
  auto comm = xtr::distributed::Communicator::from_environment();
  std::string config = "small";
  int steps = 0;
  double bucket_mib = 4;  // the default of DataParallelOptions
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--config")) config = argv[i + 1];
    else if (!std::strcmp(argv[i], "--steps")) steps = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--bucket-mib")) bucket_mib = std::atof(argv[i + 1]);
  }
  const BenchConfig* c = nullptr;
  for (const auto& k : configs)
    if (config == k.name) c = &k;
  if (!c) {
    std::fprintf(stderr, "data_parallel_bench: unknown --config '%s' (small, enwik8)\n", config.c_str());
    return 2;
  }
  if (steps <= 0) steps = config == "small" ? 6 : 3;
  try {
    const Phase on = run(comm, *c, steps, true, bucket_mib);
    const Phase off = run(comm, *c, steps, false, bucket_mib);
    Model probe(Net({.num_tokens = 256, .max_seq_len = c->seq_len,
                     .layers = {.dim = c->dim, .depth = c->depth, .heads = c->heads}}));
    const double bytes = double(probe.parameters().count()) * sizeof(float);
    // the all-reduce alone: every rank ready (barrier), then the gradient buffer in 25 MiB pieces, median of 5
    std::vector<double> pure;
    for (int r = 0; r < 6; ++r) {
      std::vector<double> g(std::size_t(probe.parameters().count()), 1.0);
      comm.barrier();
      const auto t = Clock::now();
      float* data = probe.parameters().grads().data();
#if defined(XTR_WITH_MPI)
      if (comm.uses_mpi()) {
        std::vector<MPI_Request> requests;
        const xtr::Index n = probe.parameters().count(), piece = (xtr::Index(25) << 20) / 4;
        for (xtr::Index at = 0; at < n; at += piece) {
          requests.emplace_back();
          MPI_Iallreduce(MPI_IN_PLACE, data + at, int(std::min(piece, n - at)), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD,
                         &requests.back());
        }
        comm.wait_all(requests, "all-reduce bench");
      }
#endif
      (void)data;
      if (r > 0) pure.push_back(comm.max(std::chrono::duration<double>(Clock::now() - t).count()));
    }
    const double allreduce_s = median(pure);
    const int R = comm.size();
    const double tokens = double(R) * double(c->batch * c->seq_len);
    const double hidden = R > 1 && off.exposed > 0 ? std::max(0.0, 1.0 - on.exposed / off.exposed) : 0.0;
    const double algbw = R > 1 && allreduce_s > 0 ? bytes / allreduce_s / 1e9 : 0.0;
    if (comm.is_root())
      std::printf("{\"impl\": \"xtr\", \"bench\": \"data_parallel\", \"config\": \"%s\", \"ranks\": %d, "
                  "\"threads_per_rank\": %d, \"batch_per_rank\": %ld, \"gradient_mb\": %.1f, \"buckets\": %d, "
                  "\"buckets_started_during_backward\": %d, \"step_s\": %.4f, \"tokens_per_s\": %.1f, "
                  "\"backward_s\": %.4f, \"exposed_allreduce_s\": %.4f, \"step_s_no_overlap\": %.4f, "
                  "\"allreduce_s_no_overlap\": %.4f, \"allreduce_alone_s\": %.4f, \"hidden_fraction\": %.3f, \"allreduce_algbw_gb_s\": %.2f, "
                  "\"allreduce_busbw_gb_s\": %.2f, \"steps\": %d}\n",
                  c->name, R, omp_get_max_threads(), long(c->batch), bytes / 1e6, on.buckets, on.started, on.step,
                  tokens / on.step, on.backward, on.exposed, off.step, off.exposed, allreduce_s, hidden, algbw,
                  algbw * (R > 1 ? 2.0 * (R - 1) / R : 0.0), steps);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "data_parallel_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
