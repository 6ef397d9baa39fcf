// Data-parallel training step under mpirun (built with MPI): per-rank batch fixed (weak scaling, as DDP is used), the
// training step timed with the gradient all-reduce overlapped with backward and, in the same run, without overlap
// (every bucket after backward), so the all-reduce time and the part of it hidden behind backward are measured.
//
//   mpirun -np 1 data_parallel_bench --config small|enwik8 [--steps N] [--bucket-mib X]
//   mpirun -np 2 data_parallel_bench --config small|enwik8 …        (tools/bench_distributed.sh runs both)
//
// One JSON line (rank 0): tokens/s over all ranks, step/backward medians, exposed all-reduce time with and without
// overlap, hidden fraction, and the all-reduce bandwidth (algorithm and ring "bus" bandwidth, as nccl-tests reports).
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
    xtr::clip_grad_norm(model.parameters(), 0.5);
    opt.step();
    opt.zero_grad();
    const double s = std::chrono::duration<double>(Clock::now() - t).count();
    if (i == 0) continue;
    step.push_back(comm.max(s));
    backward.push_back(comm.max(dp.stats().backward_seconds));
    exposed.push_back(comm.max(dp.stats().exposed_seconds));
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
  double bucket_mib = 25;
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
    const int R = comm.size();
    const double tokens = double(R) * double(c->batch * c->seq_len);
    const double hidden = R > 1 && off.exposed > 0 ? std::max(0.0, 1.0 - on.exposed / off.exposed) : 0.0;
    const double algbw = R > 1 && off.exposed > 0 ? bytes / off.exposed / 1e9 : 0.0;
    if (comm.is_root())
      std::printf("{\"impl\": \"xtr\", \"bench\": \"data_parallel\", \"config\": \"%s\", \"ranks\": %d, "
                  "\"threads_per_rank\": %d, \"batch_per_rank\": %ld, \"gradient_mb\": %.1f, \"buckets\": %d, "
                  "\"buckets_started_during_backward\": %d, \"step_s\": %.4f, \"tokens_per_s\": %.1f, "
                  "\"backward_s\": %.4f, \"exposed_allreduce_s\": %.4f, \"step_s_no_overlap\": %.4f, "
                  "\"allreduce_s_no_overlap\": %.4f, \"hidden_fraction\": %.3f, \"allreduce_algbw_gb_s\": %.2f, "
                  "\"allreduce_busbw_gb_s\": %.2f, \"steps\": %d}\n",
                  c->name, R, omp_get_max_threads(), long(c->batch), bytes / 1e6, on.buckets, on.started, on.step,
                  tokens / on.step, on.backward, on.exposed, off.step, off.exposed, hidden, algbw,
                  algbw * (R > 1 ? 2.0 * (R - 1) / R : 0.0), steps);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "data_parallel_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
