// Benchmarks mirroring ../shared/peer/bench_xt.py (same configurations, same measurement), plus the two ceilings used
// for roofline fractions on this machine (GEMM rate, memory bandwidth). One JSON line per measurement.
//   xtr_bench --bench train_step|generate_kv|gemm|bandwidth [--config small|enwik8] [--threads N] [--steps N]
//             [--bf16-weights]   (generate_kv: decode from bfloat16 weights)
#include <omp.h>

#include <Eigen/Core>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "xtr/xtr.hpp"

namespace {

using Clock = std::chrono::steady_clock;
using Net = xtr::TransformerWrapper<xtr::Decoder<xtr::Rotary, xtr::LayerNorm, xtr::GELU>>;

struct BenchConfig {
  const char* name;
  xtr::Index dim, depth, heads, seq_len, batch;
};
constexpr BenchConfig configs[] = {{"small", 256, 4, 4, 256, 8}, {"enwik8", 512, 6, 8, 1024, 4}};

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }
double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

xtr::AutoregressiveWrapper<Net> make(const BenchConfig& c) {
  return xtr::AutoregressiveWrapper<Net>(Net({.num_tokens = 256,
                                              .max_seq_len = c.seq_len,
                                              .layers = {.dim = c.dim, .depth = c.depth, .heads = c.heads}}));
}

// forward + backward + Adam step; median of `steps` timed steps after one warm-up (the peer's protocol)
void train_step(const BenchConfig& c, int steps) {
  auto model = make(c);
  auto opt = xtr::Adam(model.parameters(), {.lr = 1e-4});
  xtr::TokenBatch x(c.batch, c.seq_len + 1);
  xtr::RandomStream rs{0, 0};
  for (std::size_t i = 0; i < x.data.size(); ++i) x.data[i] = std::int32_t(rs.below(i, 256));
  std::vector<double> times;
  for (int i = 0; i < steps + 1; ++i) {
    const auto t = Clock::now();
    auto loss = model(x);
    loss.backward();
    opt.step();
    opt.zero_grad();
    times.push_back(seconds_since(t));
  }
  times.erase(times.begin());
  const double med = median(times);
  const double tokens = double(c.batch * c.seq_len);
  // llm.c's convention: 6·N + 6·L·C·T FLOPs per token (N = parameters, L layers, C = dim, T = seq_len)
  const double flops = tokens * (6.0 * double(model.parameters().count()) + 6.0 * c.depth * c.dim * c.seq_len);
  std::printf(
      "{\"impl\": \"xtr\", \"bench\": \"train_step\", \"config\": \"%s\", \"threads\": %d, \"median_s\": %.4f, "
      "\"tokens_per_s\": %.1f, \"gflop_per_s\": %.1f, \"steps\": %d}\n",
      c.name, omp_get_max_threads(), med, tokens / med, flops / med * 1e-9, steps);
}

// batch 1, 16-token prompt, 256 new tokens, KV cache, best of 3 after a warm-up of 8 tokens
void generate_kv(const BenchConfig& c, int repeats, bool bf16) {
  auto model = make(c);
  model.eval();
  xtr::TokenBatch prompt(1, 16);
  xtr::RandomStream rs{0, 1};
  for (std::size_t i = 0; i < prompt.data.size(); ++i) prompt.data[i] = std::int32_t(rs.below(i, 256));
  model.generate(prompt, 8, {.bf16_weights = bf16});
  const int new_tokens = 256;
  double best = 1e30;
  for (int r = 0; r < repeats; ++r) {
    const auto t = Clock::now();
    auto out = model.generate(prompt, new_tokens, {.bf16_weights = bf16, .seed = std::uint64_t(r)});
    best = std::min(best, seconds_since(t));
  }
  std::printf(
      "{\"impl\": \"xtr\", \"bench\": \"generate_kv\", \"config\": \"%s\", \"threads\": %d, \"batch\": 1, "
      "\"new_tokens\": %d, \"weights\": \"%s\", \"best_s\": %.4f, \"tokens_per_s\": %.1f}\n",
      c.name, omp_get_max_threads(), new_tokens, bf16 ? "bf16" : "f32", best, new_tokens / best);
}

// ceiling 1: float GEMM rate (Eigen or, with XTR_USE_BLAS, BLAS) at the model's GEMM shapes
void gemm(int repeats) {
  const xtr::Index shapes[][3] = {{2048, 1024, 256}, {2048, 256, 1024}, {4096, 2048, 512}, {4096, 512, 2048}};
  for (const auto& s : shapes) {
    xtr::RowMatrix<float> a = xtr::RowMatrix<float>::Random(s[0], s[2]), b = xtr::RowMatrix<float>::Random(s[1], s[2]);
    xtr::RowMatrix<float> c(s[0], s[1]);
    c.noalias() = a * b.transpose();
    std::vector<double> times;
    for (int r = 0; r < repeats; ++r) {
      const auto t = Clock::now();
      c.noalias() = a * b.transpose();
      times.push_back(seconds_since(t));
    }
    const double med = median(times);
    std::printf(
        "{\"impl\": \"xtr\", \"bench\": \"gemm\", \"m\": %ld, \"n\": %ld, \"k\": %ld, \"threads\": %d, "
        "\"median_s\": %.5f, \"gflop_per_s\": %.1f}\n",
        long(s[0]), long(s[1]), long(s[2]), omp_get_max_threads(), med, 2.0 * s[0] * s[1] * s[2] / med * 1e-9);
  }
}

// ceiling 2: memory bandwidth, STREAM triad a = b + s·c over 3 × 128 MiB (bytes moved: 3 per element)
void bandwidth(int repeats) {
  const std::size_t n = std::size_t(32) << 20;
  std::vector<float> a(n, 1.f), b(n, 2.f), c(n, 3.f);
  std::vector<double> times;
  for (int r = 0; r < repeats + 1; ++r) {
    const auto t = Clock::now();
#pragma omp parallel for schedule(static)
    for (std::size_t i = 0; i < n; ++i) a[i] = b[i] + 0.5f * c[i];
    times.push_back(seconds_since(t));
  }
  times.erase(times.begin());
  const double med = median(times);
  std::printf("{\"impl\": \"xtr\", \"bench\": \"bandwidth\", \"threads\": %d, \"median_s\": %.5f, \"gb_per_s\": %.1f}\n",
              omp_get_max_threads(), med, 3.0 * 4.0 * double(n) / med * 1e-9);
}

}  // namespace

int main(int argc, char** argv) {
  std::string bench = "train_step", config = "small";
  int steps = -1;
  bool bf16 = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "xtr_bench: %s needs a value\n", arg.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (arg == "--bench") bench = value();
    else if (arg == "--config") config = value();
    else if (arg == "--threads") omp_set_num_threads(std::stoi(value()));
    else if (arg == "--steps") steps = std::stoi(value());
    else if (arg == "--bf16-weights") bf16 = true;
    else {
      std::fprintf(stderr,
                   "usage: xtr_bench --bench train_step|generate_kv|gemm|bandwidth [--config small|enwik8] "
                   "[--threads N] [--steps N] [--bf16-weights]\n");
      return 2;
    }
  }
  const BenchConfig* c = nullptr;
  for (const auto& k : configs)
    if (config == k.name) c = &k;
  if (!c) {
    std::fprintf(stderr, "xtr_bench: unknown --config '%s' (small, enwik8)\n", config.c_str());
    return 2;
  }
  try {
    if (bench == "train_step") train_step(*c, steps > 0 ? steps : (config == "small" ? 5 : 2));
    else if (bench == "generate_kv") generate_kv(*c, steps > 0 ? steps : 3, bf16);
    else if (bench == "gemm") gemm(steps > 0 ? steps : 5);
    else if (bench == "bandwidth") bandwidth(steps > 0 ? steps : 5);
    else {
      std::fprintf(stderr, "xtr_bench: unknown --bench '%s' (train_step, generate_kv, gemm, bandwidth)\n", bench.c_str());
      return 2;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
