// GPU benchmarks of the Cuda<float> backend (issue 16), JSON lines like xtr_bench's. Built where nvcc is; runs on a
// machine with a GPU (tests/cuda/device_check.sh runs it after the on-device tests).
//   cuda_bench --bench gemm [--steps N]          fp32 GEMM rate of the backend's cuBLASLt path (4096³, the MFU ceiling)
//   cuda_bench --bench train_step [--config gpt2_small|enwik8|small] [--steps N]
//              forward + backward + AdamW; tokens/s and MFU by llm.c's convention (6·N + 6·L·C·T FLOPs per token)
//              against the GEMM rate measured in the same process
//   cuda_bench --bench generate_kv [--config enwik8|small] [--steps N]   batch 1, 16-token prompt, 256 new tokens
// Bring-up numbers: every op waits for its kernels, fp32 without TF32, the first (untiled) attention backward.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "timing.hpp"
#include "xtr/backend/cuda/backend.hpp"
#include "xtr/xtr.hpp"

namespace {

using xtr::bench::Clock;
using xtr::bench::median;
using xtr::bench::seconds_since;
using Net = xtr::TransformerWrapper<xtr::Decoder<xtr::AbsoluteLearned, xtr::LayerNorm, xtr::GELU>, xtr::Cuda<float>>;

struct BenchConfig {
  const char* name;
  xtr::Index num_tokens, dim, depth, heads, seq_len, batch;
};
// gpt2_small: the GPT-2-small shape (llm.c's: vocabulary 50304, 1024 positions, batch 16)
constexpr BenchConfig configs[] = {{"small", 256, 256, 4, 4, 256, 8},
                                   {"enwik8", 256, 512, 6, 8, 1024, 4},
                                   {"gpt2_small", 50304, 768, 12, 12, 1024, 16}};


double gemm_tflops(int steps) {
  const xtr::Index n = 4096;
  const xtr::Memory& memory = xtr::Cuda<float>::memory();
  xtr::Tensor<float> a(xtr::Shape{n, n}, memory), b(xtr::Shape{n, n}, memory), c(xtr::Shape{n, n}, memory);
  std::vector<double> times;
  for (int i = 0; i < steps + 1; ++i) {
    const auto t = Clock::now();
    xtr::cuda::gemm_forward(a.data(), n, b.data(), n, c.data(), n, n, n, n, 1.0f, 0.0f, nullptr);
    xtr::cuda::finish("gemm");
    times.push_back(seconds_since(t));
  }
  times.erase(times.begin());
  return 2.0 * double(n) * double(n) * double(n) / median(times) * 1e-12;
}

xtr::AutoregressiveWrapper<Net> make(const BenchConfig& c) {
  return xtr::AutoregressiveWrapper<Net>(Net({.num_tokens = c.num_tokens,
                                              .max_seq_len = c.seq_len,
                                              .layers = {.dim = c.dim, .depth = c.depth, .heads = c.heads}}));
}

void train_step(const BenchConfig& c, int steps) {
  const double ceiling = gemm_tflops(5);
  auto model = make(c);
  xtr::AdamW<float, xtr::Cuda<float>> opt(model.parameters(), {.lr = 1e-4});
  const xtr::TokenBatch x = xtr::bench::training_batch(c.batch, c.seq_len, c.num_tokens);
  const double med = xtr::bench::median_step_seconds(model, opt, x, steps), tokens = double(c.batch * c.seq_len);
  const double flops = tokens * (6.0 * double(model.parameters().count()) + 6.0 * double(c.depth * c.dim * c.seq_len));
  std::printf("{\"impl\": \"xtr\", \"backend\": \"Cuda<float>\", \"bench\": \"train_step\", \"config\": \"%s\", "
              "\"median_s\": %.4f, \"tokens_per_s\": %.1f, \"tflop_per_s\": %.2f, \"fp32_gemm_tflop_per_s\": %.2f, "
              "\"mfu_vs_fp32_gemm\": %.3f, \"steps\": %d}\n",
              c.name, med, tokens / med, flops / med * 1e-12, ceiling, flops / med * 1e-12 / ceiling, steps);
}

void generate_kv(const BenchConfig& c, int repeats) {
  auto model = make(c);
  model.eval();
  xtr::TokenBatch prompt(1, 16);
  const xtr::RandomStream rs{0, 1};
  for (std::size_t i = 0; i < prompt.data.size(); ++i)
    prompt.data[i] = std::int32_t(rs.below(i, std::uint64_t(c.num_tokens)));
  model.generate(prompt, 8, {});
  const int new_tokens = 256;
  double best = 1e30;
  for (int r = 0; r < repeats; ++r) {
    const auto t = Clock::now();
    model.generate(prompt, new_tokens, {.seed = std::uint64_t(r)});
    best = std::min(best, seconds_since(t));
  }
  std::printf("{\"impl\": \"xtr\", \"backend\": \"Cuda<float>\", \"bench\": \"generate_kv\", \"config\": \"%s\", "
              "\"tokens_per_s\": %.1f, \"repeats\": %d}\n",
              c.name, new_tokens / best, repeats);
}

}  // namespace

int main(int argc, char** argv) {
  std::string bench = "train_step", config = "enwik8";
  int steps = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (i + 1 >= argc) {
      std::fprintf(stderr, "cuda_bench: %s needs a value\n", arg.c_str());
      return 2;
    }
    const std::string value = argv[++i];
    if (arg == "--bench") bench = value;
    else if (arg == "--config") config = value;
    else if (arg == "--steps") steps = std::stoi(value);
    else {
      std::fprintf(stderr, "cuda_bench: unknown option %s (--bench, --config, --steps)\n", arg.c_str());
      return 2;
    }
  }
  const BenchConfig* c = nullptr;
  for (const auto& candidate : configs)
    if (config == candidate.name) c = &candidate;
  try {
    if (!c) throw xtr::Error("xtr: unknown --config '" + config + "' (small, enwik8, gpt2_small)");
    if (bench == "gemm") {
      std::printf("{\"impl\": \"xtr\", \"backend\": \"Cuda<float>\", \"bench\": \"gemm\", \"shape\": \"4096^3\", "
                  "\"tflop_per_s\": %.2f}\n",
                  gemm_tflops(steps > 0 ? steps : 10));
    } else if (bench == "train_step") {
      train_step(*c, steps > 0 ? steps : 3);
    } else if (bench == "generate_kv") {
      generate_kv(*c, steps > 0 ? steps : 3);
    } else {
      throw xtr::Error("xtr: unknown --bench '" + bench + "' (gemm, train_step, generate_kv)");
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cuda_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
