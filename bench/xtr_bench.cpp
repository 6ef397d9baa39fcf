// Benchmarks mirroring ../shared/peer/bench_xt.py (same configurations, same measurement), plus the two ceilings used
// for roofline fractions on this machine (GEMM rate, memory bandwidth). One JSON line per measurement.
//   xtr_bench --bench train_step|generate_kv|gemm|bandwidth [--config small|enwik8] [--threads N] [--steps N]
//             [--weights f32|bf16|int8|q4|auto]   (generate_kv: decode from the model's copy in that format, with the
//             weight bytes per token and their fraction of the measured DRAM bandwidth) [--bf16-weights] (per call)
//             [--activations auto|f32|int8]   (int8 / q4 weights: what they multiply; auto: int8 on AVX512-VNNI builds)
//             [--kv-cache f32|f16]   (generate_kv, decode_batch: what the KV cache keeps keys and values in)
//   xtr_bench --bench decode_batch [--config small|enwik8] [--weights …]   batch 1/8/32: prefill and decoding step
//             times with their GEMM FLOP rates
//   xtr_bench --bench quality --checkpoint F [--data D]   bpc and greedy agreement of f32, bf16, int8 and q4 weights
//             on a train_enwik8 checkpoint of the config's sizes (held-out windows of D, default enwik8-4M.gz),
//             and of the f16 KV cache with f32 and q4 × int8
//   xtr_bench --bench seq2seq_train|seq2seq_generate [--config copy|copy_b32]   (tools/bench_peer_seq2seq.py's
//             XTransformer copy model and measurement)
//   xtr_bench --bench beam_search|speculative [--config small|enwik8] [--draft-depth N]   beam search (4 beams) and
//             greedy speculative decoding (a draft of N layers, default 1), each against plain greedy decoding
//   xtr_bench --bench option_cost [--config small|enwik8] [--steps N] [--only NAME]   the cost of each x-transformers
//             option: train_step and generate_kv of the config with the option's keyword on the run-time model type
//             (AnyDecoder), against the same model without options (static and run-time types)
#include <omp.h>

#include <Eigen/Core>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "timing.hpp"
#include "xtr/xtr.hpp"

namespace {

using xtr::bench::Clock;
using xtr::bench::median;
using xtr::bench::seconds_since;
using Net = xtr::TransformerWrapper<xtr::Decoder<xtr::Rotary, xtr::LayerNorm, xtr::GELU>>;

struct BenchConfig {
  const char* name;
  xtr::Index dim, depth, heads, seq_len, batch;
};
constexpr BenchConfig configs[] = {{"small", 256, 4, 4, 256, 8}, {"enwik8", 512, 6, 8, 1024, 4}};


xtr::AutoregressiveWrapper<Net> make(const BenchConfig& c) {
  return xtr::AutoregressiveWrapper<Net>(Net({.num_tokens = 256,
                                              .max_seq_len = c.seq_len,
                                              .layers = {.dim = c.dim, .depth = c.depth, .heads = c.heads}}));
}

// forward + backward + Adam step; median of `steps` timed steps after one warm-up (the peer's protocol);
// returns tokens/s
template <class Model>
double time_train_step(Model& model, const BenchConfig& c, int steps) {
  auto opt = xtr::Adam(model.parameters(), {.lr = 1e-4});
  const xtr::TokenBatch x = xtr::bench::training_batch(c.batch, c.seq_len, 256);
  return double(c.batch * c.seq_len) / xtr::bench::median_step_seconds(model, opt, x, steps);
}

void train_step(const BenchConfig& c, int steps) {
  auto model = make(c);
  const double tokens_per_s = time_train_step(model, c, steps);
  const double med = double(c.batch * c.seq_len) / tokens_per_s;
  const double tokens = double(c.batch * c.seq_len);
  // llm.c's convention: 6·N + 6·L·C·T FLOPs per token (N = parameters, L layers, C = dim, T = seq_len)
  const double flops = tokens * (6.0 * double(model.parameters().count()) + 6.0 * c.depth * c.dim * c.seq_len);
  std::printf(
      "{\"impl\": \"xtr\", \"bench\": \"train_step\", \"config\": \"%s\", \"threads\": %d, \"median_s\": %.4f, "
      "\"tokens_per_s\": %.1f, \"gflop_per_s\": %.1f, \"steps\": %d}\n",
      c.name, omp_get_max_threads(), med, tokens / med, flops / med * 1e-9, steps);
}

// batch 1, 16-token prompt, 256 new tokens, KV cache, best of `repeats` after a warm-up of 8 tokens; returns tokens/s
// (bf16: the per-call bfloat16 rounding of Sampling::bf16_weights; a model-level copy comes from xtr::quantize)
template <class Model>
double time_generate(Model& model, int repeats, bool bf16) {
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
  return new_tokens / best;
}

// STREAM triad bandwidth (GB/s), measured where a row needs its roofline fraction
double triad_gb_per_s(int repeats = 3) {
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
  return 3.0 * 4.0 * double(n) / median(times) * 1e-9;
}

// Weight bytes one decoded token reads: every GEMM matrix in its format (scales included), one row of each embedding.
template <class Net>
double weight_bytes_per_token(const Net& net) {
  const auto& params = net.parameters();
  const auto& copy = net.decode_weights();
  double bytes = 0;
  for (std::size_t e = 0; e < params.entries().size(); ++e) {
    const auto& entry = params.entries()[e];
    if (entry.alias_of >= 0) continue;
    const bool embedding = entry.name.find("token_emb") != std::string::npos || entry.name.find("pos_emb") != std::string::npos;
    const double per = copy && copy->holds(int(e)) ? xtr::bytes_per_weight(copy->format, copy->group) : 4.0;
    bytes += embedding ? double(entry.shape.cols()) * per : double(entry.shape.numel()) * per;
  }
  return bytes;
}

// K and V bytes the attention of one decoded token reads, averaged over a 256-token generation after a 16-token
// prompt (every layer, every head, 4 bytes a value in a float cache and 2 in an f16 one: the token at step i attends
// over 16 + i + 1 keys)
double kv_bytes_per_token(const BenchConfig& c, xtr::KVFormat kv) {
  const double mean_keys = 16 + (256 + 1) / 2.0;
  return 2.0 * double(c.depth) * double(c.dim) * (kv == xtr::KVFormat::f16 ? 2.0 : 4.0) * mean_keys;
}

void generate_kv(const BenchConfig& c, int repeats, bool bf16, const std::string& weights,
                 xtr::ActivationFormat activations, xtr::KVFormat kv_format) {
  auto model = make(c);
  if (weights != "auto") xtr::quantize(model, xtr::parse_weight_format(weights), 32, activations);  // auto: the default
  xtr::use_kv_format(model, kv_format);
  const std::string acts(xtr::activation_name(model.net.decode_weights() ? model.net.decode_weights()->activations
                                                                         : xtr::ActivationFormat::f32));
  const double tokens_per_s = time_generate(model, repeats, bf16);
  const std::string name = bf16      ? "bf16-per-call"
                           : weights == "auto" ? "auto-" + std::string(xtr::format_name(model.net.weight_format()))
                                               : weights;
  const double bytes = weight_bytes_per_token(model.net) * (bf16 ? 0.5 : 1.0), kv = kv_bytes_per_token(c, kv_format);
  const double bandwidth = triad_gb_per_s();
  std::printf(
      "{\"impl\": \"xtr\", \"bench\": \"generate_kv\", \"config\": \"%s\", \"threads\": %d, \"batch\": 1, "
      "\"new_tokens\": %d, \"weights\": \"%s\", \"activations\": \"%s\", \"best_s\": %.4f, \"tokens_per_s\": %.1f, "
      "\"weight_mb_per_token\": %.2f, \"gb_per_s\": %.1f, \"triad_gb_per_s\": %.1f, \"dram_fraction\": %.2f, "
      "\"kv_cache\": \"%s\", \"kv_mb_per_token\": %.2f, \"dram_fraction_with_kv\": %.2f}\n",
      c.name, omp_get_max_threads(), 256, name.c_str(), acts.c_str(), 256 / tokens_per_s, tokens_per_s, bytes / 1e6,
      bytes * tokens_per_s / 1e9, bandwidth, bytes * tokens_per_s / 1e9 / bandwidth,
      std::string(xtr::kv_format_name(kv_format)).c_str(), kv / 1e6,
      (bytes + kv) * tokens_per_s / 1e9 / bandwidth);
}

// Batched decoding and prefill: for batch 1, 8 and 32 (16-token prompts), the prefill (generate(prompt, 1)) and one
// decoding step ((generate(prompt, 65) − prefill) / 64), best of `repeats`, with the GEMM FLOPs of each (2 · the GEMM
// weights per row: every parameter but the gathered token embedding) per second of the whole prefill or step.
void decode_batch(const BenchConfig& c, int repeats, const std::string& weights, xtr::ActivationFormat activations,
                  xtr::KVFormat kv_format) {
  auto model = make(c);
  model.eval();
  if (weights != "auto") xtr::quantize(model, xtr::parse_weight_format(weights), 32, activations);
  xtr::use_kv_format(model, kv_format);
  const std::string acts(xtr::activation_name(model.net.decode_weights() ? model.net.decode_weights()->activations
                                                                         : xtr::ActivationFormat::f32));
  const double gemm_weights = double(model.parameters().count() - 256 * c.dim);
  for (xtr::Index B : {1, 8, 32}) {
    xtr::TokenBatch prompt(B, 16);
    xtr::RandomStream rs{0, 3};
    for (std::size_t i = 0; i < prompt.data.size(); ++i) prompt.data[i] = std::int32_t(rs.below(i, 256));
    (void)model.generate(prompt, 4, {});
    double best = 1e30, best_prefill = 1e30;
    for (int r = 0; r < repeats; ++r) {
      auto t = Clock::now();
      (void)model.generate(prompt, 1, {.seed = std::uint64_t(r)});
      best_prefill = std::min(best_prefill, seconds_since(t));
      t = Clock::now();
      (void)model.generate(prompt, 65, {.seed = std::uint64_t(r)});
      best = std::min(best, seconds_since(t));
    }
    const double step = (best - best_prefill) / 64;
    std::printf("{\"impl\": \"xtr\", \"bench\": \"decode_batch\", \"config\": \"%s\", \"threads\": %d, "
                "\"weights\": \"%s\", \"activations\": \"%s\", \"kv_cache\": \"%s\", \"batch\": %ld, \"prefill_rows\": %ld, \"prefill_ms\": %.2f, "
                "\"prefill_gflop_per_s\": %.1f, \"step_ms\": %.3f, \"tokens_per_s\": %.0f, \"step_gflop_per_s\": %.1f}\n",
                c.name, omp_get_max_threads(), std::string(xtr::format_name(model.net.weight_format())).c_str(), acts.c_str(),
                std::string(xtr::kv_format_name(kv_format)).c_str(), long(B), long(B * 16),
                best_prefill * 1e3, 2 * gemm_weights * double(B * 16) / best_prefill * 1e-9, step * 1e3,
                double(B) / step, 2 * gemm_weights * double(B) / step * 1e-9);
  }
}

// Beam search as the peer times it (tools/bench_peer_generation.py): batch 1, 16-token prompt, 64 new tokens, 4 beams,
// KV cache, best of `repeats` after a warm-up; greedy generation of the same length in the same run for the ratio.
void beam_search(const BenchConfig& c, int repeats) {
  auto model = make(c);
  model.eval();
  xtr::TokenBatch prompt(1, 16);
  xtr::RandomStream rs{0, 1};
  for (std::size_t i = 0; i < prompt.data.size(); ++i) prompt.data[i] = std::int32_t(rs.below(i, 256));
  const xtr::Index new_tokens = 64, beams = 4;
  (void)model.beam_search(prompt, 8, {.beams = beams});
  double best = 1e30, best_greedy = 1e30;
  for (int r = 0; r < repeats; ++r) {
    auto t = Clock::now();
    (void)model.beam_search(prompt, new_tokens, {.beams = beams});
    best = std::min(best, seconds_since(t));
    t = Clock::now();
    (void)model.generate(prompt, new_tokens, {.temperature = 0});
    best_greedy = std::min(best_greedy, seconds_since(t));
  }
  std::printf("{\"impl\": \"xtr\", \"bench\": \"beam_search\", \"config\": \"%s\", \"threads\": %d, \"batch\": 1, "
              "\"beams\": %ld, \"new_tokens\": %ld, \"best_s\": %.4f, \"tokens_per_s\": %.1f, "
              "\"greedy_tokens_per_s\": %.1f, \"beam_vs_greedy\": %.3f}\n",
              c.name, omp_get_max_threads(), long(beams), long(new_tokens), best, double(new_tokens) / best,
              double(new_tokens) / best_greedy, best_greedy / best);
}

// Speculative decoding, greedy (the same tokens as plain decoding): batch 1, 16-token prompt, 256 new tokens, a draft
// of the same width and `draft_depth` layers proposing 4 tokens, against plain cached decoding in the same run; and
// the model as its own draft (every proposal accepted: what verification costs). Weights are random, so a separate
// draft agrees with the model about as often as chance allows: its acceptance (tokens per model forward) is printed.
void speculative(const BenchConfig& c, int repeats, xtr::Index draft_depth) {
  auto model = make(c);
  auto draft = xtr::AutoregressiveWrapper<Net>(Net({.num_tokens = 256, .max_seq_len = c.seq_len,
                                                    .layers = {.dim = c.dim, .depth = draft_depth, .heads = c.heads}}));
  model.eval();
  xtr::TokenBatch prompt(1, 16);
  xtr::RandomStream rs{0, 1};
  for (std::size_t i = 0; i < prompt.data.size(); ++i) prompt.data[i] = std::int32_t(rs.below(i, 256));
  const xtr::Index new_tokens = 256;
  auto timed = [&](const xtr::Sampling& s) {
    (void)model.generate(prompt, 8, s);
    double best = 1e30;
    const auto before = model.speculative_counts();
    for (int r = 0; r < repeats; ++r) {
      const auto t = Clock::now();
      (void)model.generate(prompt, new_tokens, s);
      best = std::min(best, seconds_since(t));
    }
    const auto after = model.speculative_counts();
    const double per_round = after.second > before.second ? double(after.first - before.first) /
                                                                double(after.second - before.second)
                                                          : 1.0;
    return std::pair{double(new_tokens) / best, per_round};
  };
  const auto plain = timed({.temperature = 0});
  xtr::Sampling with_draft{.temperature = 0};
  with_draft.draft.emplace(draft);
  const auto drafted = timed(with_draft);
  xtr::Sampling self{.temperature = 0};
  self.draft.emplace(model);
  const auto own = timed(self);
  std::printf("{\"impl\": \"xtr\", \"bench\": \"speculative\", \"config\": \"%s\", \"threads\": %d, \"batch\": 1, "
              "\"new_tokens\": %ld, \"draft_depth\": %ld, \"draft_tokens\": 4, \"tokens_per_s\": %.1f, "
              "\"plain_tokens_per_s\": %.1f, \"tokens_per_model_forward\": %.2f, \"speedup\": %.3f, "
              "\"self_draft_tokens_per_s\": %.1f, \"self_draft_tokens_per_model_forward\": %.2f}\n",
              c.name, omp_get_max_threads(), long(new_tokens), long(draft_depth), drafted.first, plain.first,
              drafted.second, drafted.first / plain.first, own.first, own.second);
}

// Each option's keywords on top of the config (the same rotary decoder as train_step's).
struct OptionKeywords {
  const char* name;
  const char* wrapper;  // TransformerWrapper keywords
  const char* layers;   // attn_layers keywords
};
constexpr OptionKeywords options[] = {
    {"none (run-time type)", "", ""},
    {"alibi_pos_bias", "", R"("alibi_pos_bias": true)"},
    {"rel_pos_bias", "", R"("rel_pos_bias": true, "rotary_pos_emb": false)"},
    {"dynamic_pos_bias", R"("use_abs_pos_emb": false)", R"("dynamic_pos_bias": true, "rotary_pos_emb": false)"},
    {"rotary_xpos", "", R"("rotary_xpos": true)"},
    {"rotary_interpolation_factor", "", R"("rotary_interpolation_factor": 2.0)"},
    {"rotary_base_rescale_factor", "", R"("rotary_base_rescale_factor": 2.0)"},
    {"use_scalenorm", "", R"("use_scalenorm": true)"},
    {"use_simple_rmsnorm", "", R"("use_simple_rmsnorm": true)"},
    {"pre_norm=False", "", R"("pre_norm": false)"},
    {"sandwich_norm", "", R"("sandwich_norm": true)"},
    {"attn_qk_norm", "", R"("attn_qk_norm": true)"},
    {"attn_num_mem_kv=4", "", R"("attn_num_mem_kv": 4)"},
    {"attn_gate_values", "", R"("attn_gate_values": true)"},
    {"attn_head_scale", "", R"("attn_head_scale": true)"},
    {"add_value_residual", "", R"("add_value_residual": true)"},
    {"ff_relu_squared", "", R"("ff_relu_squared": true)"},
    {"ff_swish", "", R"("ff_swish": true)"},
    {"ff_no_bias", "", R"("ff_no_bias": true)"},
    {"tie_embedding", R"("tie_embedding": true)", ""},
    {"post_emb_norm", R"("post_emb_norm": true)", ""},
    {"l2norm_embed", R"("l2norm_embed": true)", ""},
    {"num_memory_tokens=4", R"("num_memory_tokens": 4)", ""},
};

/// train_step and generate_kv of the config with each option (run-time model type), and the static type without
/// options: one JSON line per option with both rates and their ratios to the static type's.
void option_cost(const BenchConfig& c, int steps, const std::string& only) {
  namespace xt = xtr::x_transformers;
  auto base = make(c);
  const double base_train = time_train_step(base, c, steps), base_generate = time_generate(base, 3, false);
  std::printf("{\"impl\": \"xtr\", \"bench\": \"option_cost\", \"config\": \"%s\", \"option\": \"none (static type)\", "
              "\"train_tokens_per_s\": %.1f, \"generate_tokens_per_s\": %.1f, \"train_ratio\": 1, \"generate_ratio\": 1}\n",
              c.name, base_train, base_generate);
  for (const auto& o : options) {
    if (!only.empty() && only != o.name) continue;
    auto layers = xtr::json::parse(R"({"type": "Decoder", "rotary_pos_emb": true})");
    layers.set("dim", c.dim);
    layers.set("depth", c.depth);
    layers.set("heads", c.heads);
    const auto extra_layers = xtr::json::parse(std::string("{") + o.layers + "}");
    for (const auto& [key, value] : extra_layers.as_object()) layers.set(key, value);
    auto root = xtr::json::parse(R"({"num_tokens": 256})");
    root.set("max_seq_len", c.seq_len);
    const auto extra_wrapper = xtr::json::parse(std::string("{") + o.wrapper + "}");
    for (const auto& [key, value] : extra_wrapper.as_object()) root.set(key, value);
    root.set("attn_layers", layers);
    xt::with_model(xt::parse_description(root), [&](auto& net) {
      using Dynamic = std::decay_t<decltype(net)>;
      if constexpr (Dynamic::layers_type::causal) {
        xtr::AutoregressiveWrapper<Dynamic> model(std::move(net));
        const double train = time_train_step(model, c, steps), generate = time_generate(model, 3, false);
        std::printf("{\"impl\": \"xtr\", \"bench\": \"option_cost\", \"config\": \"%s\", \"option\": \"%s\", "
                    "\"train_tokens_per_s\": %.1f, \"generate_tokens_per_s\": %.1f, \"train_ratio\": %.3f, "
                    "\"generate_ratio\": %.3f}\n",
                    c.name, o.name, train, generate, train / base_train, generate / base_generate);
      }
    });
    std::fflush(stdout);
  }
}

// The encoder-decoder of x-transformers' enc-dec copy example: dim 128, depth 3 + 3, heads 8 (dim_head 64), 18
// tokens, source 32, target 65, tied token embedding.
using Seq2Seq = xtr::XTransformer<xtr::Encoder<>, xtr::Decoder<>>;
constexpr xtr::Index seq2seq_src = 32, seq2seq_new = 64, seq2seq_vocab = 18;

Seq2Seq make_seq2seq() {
  xtr::XTransformerConfig config;
  config.dim = 128;
  config.encoder = {.num_tokens = seq2seq_vocab, .max_seq_len = seq2seq_src, .layers = {.depth = 3, .heads = 8}};
  config.decoder = {.num_tokens = seq2seq_vocab, .max_seq_len = seq2seq_new + 1, .layers = {.depth = 3, .heads = 8}};
  config.tie_token_emb = true;
  return Seq2Seq(config);
}

// batch 32: loss = model(src, tgt, mask), backward, Adam step, zero_grad; one warm-up, median of `steps`;
// tokens_per_s = target tokens (batch · 64) per second
void seq2seq_train(int steps) {
  auto model = make_seq2seq();
  auto opt = xtr::Adam(model.parameters(), {.lr = 3e-4});
  auto batches = xtr::copy_task({.batch = 32, .src_len = seq2seq_src, .num_tokens = seq2seq_vocab}, 0);
  const auto& batch = batches.next();  // the same batch every step, as the peer
  std::vector<double> times;
  double loss_value = 0;
  for (int i = 0; i < steps + 1; ++i) {
    const auto t = Clock::now();
    auto loss = model(batch.src, batch.tgt, batch.src_mask);
    loss.backward();
    opt.step();
    opt.zero_grad();
    times.push_back(seconds_since(t));
    loss_value = loss.item();
  }
  times.erase(times.begin());
  const double med = median(times);
  std::printf(
      "{\"impl\": \"xtr\", \"bench\": \"seq2seq_train\", \"config\": \"copy\", \"threads\": %d, \"batch\": 32, "
      "\"params\": %lld, \"median_s\": %.4f, \"tokens_per_s\": %.1f, \"loss\": %.4f, \"steps\": %d}\n",
      omp_get_max_threads(), static_cast<long long>(model.parameters().count()), med, 32.0 * seq2seq_new / med,
      loss_value, steps);
}

// generate(src, [[1]], 64, mask) with the KV cache and default sampling; one warm-up, best of `repeats`;
// tokens_per_s = batch · 64 / best_s
void seq2seq_generate(xtr::Index batch_size, const char* config, int repeats) {
  auto model = make_seq2seq();
  model.eval();
  auto batches = xtr::copy_task({.batch = batch_size, .src_len = seq2seq_src, .num_tokens = seq2seq_vocab}, 1);
  const auto& batch = batches.next();
  const xtr::TokenBatch start(batch_size, 1, 1);
  model.generate(batch.src, start, seq2seq_new, batch.src_mask);
  double best = 1e30;
  for (int r = 0; r < repeats; ++r) {
    const auto t = Clock::now();
    auto out = model.generate(batch.src, start, seq2seq_new, batch.src_mask, {.seed = std::uint64_t(r)});
    best = std::min(best, seconds_since(t));
  }
  std::printf(
      "{\"impl\": \"xtr\", \"bench\": \"seq2seq_generate\", \"config\": \"%s\", \"threads\": %d, \"batch\": %lld, "
      "\"new_tokens\": %lld, \"best_s\": %.4f, \"tokens_per_s\": %.1f}\n",
      config, omp_get_max_threads(), static_cast<long long>(batch_size), static_cast<long long>(seq2seq_new), best,
      double(batch_size * seq2seq_new) / best);
}

// ceiling 1: float GEMM rate (Eigen or, with XTR_USE_BLAS, BLAS) at the model's GEMM shapes
// Quality of each weight format on a trained checkpoint of the config (train_enwik8 --save with the same sizes):
// bits per character on held-out windows (the validation part, as train_enwik8 splits it), every position's logits
// from the KV-cached path (the quantised GEMMs), and the greedy agreement with float over 1,000 tokens: float greedy
// text, then each format predicting every next token of it (teacher-forced) — the fraction whose argmax agrees.
void quality(const BenchConfig& c, const std::string& checkpoint, const std::string& data, int windows) {
  auto model = make(c);
  auto opt = xtr::Adam(model.parameters());
  (void)xtr::load_checkpoint(checkpoint, model.net, opt);
  model.eval();
  const auto [train, val] = xtr::TextDataset::load(data).split(0.9);
  const xtr::Index B = 8, L = c.seq_len, V = 256;
  xtr::BatchLoader loader(val, B, L, 1234, 9);
  std::vector<xtr::TokenBatch> batches;
  for (int w = 0; w < (windows + B - 1) / B; ++w) batches.push_back(loader.next());
  // float greedy text: 128 bytes of held-out text, then 1,000 tokens
  xtr::TokenBatch prompt(1, 128);
  std::copy_n(batches[0].data.begin(), 128, prompt.data.begin());
  xtr::quantize(model, xtr::WeightFormat::f32);
  const auto greedy = model.generate(prompt, 1000, {.temperature = 0});
  std::vector<std::int32_t> text(prompt.data);
  text.insert(text.end(), greedy.data.begin(), greedy.data.end());
  double f32_bpc = 0;
  using A = xtr::ActivationFormat;
  using W = xtr::WeightFormat;
  using K = xtr::KVFormat;
  struct Variant {
    W weights;
    A activations;
    K kv;
  };
  const Variant variants[] = {{W::f32, A::f32, K::f32},   {W::bf16, A::f32, K::f32}, {W::int8, A::f32, K::f32},
                              {W::int8, A::int8, K::f32}, {W::q4, A::f32, K::f32},   {W::q4, A::int8, K::f32},
                              {W::f32, A::f32, K::f16},   {W::q4, A::int8, K::f16}};
  for (const auto& [format, activations, kv_format] : variants) {
    xtr::quantize(model, format, 32, activations);
    xtr::use_kv_format(model, kv_format);
    double nll = 0, count = 0;
    for (const auto& batch : batches) {
      xtr::TokenBatch input(B, L);
      for (xtr::Index b = 0; b < B; ++b) std::copy_n(batch.data.begin() + b * (L + 1), L, input.data.begin() + b * L);
      auto cache = model.net.make_cache(B);
      const auto logits = model.net.forward_cached(input, cache, L);  // (B·L, V)
      for (xtr::Index b = 0; b < B; ++b)
        for (xtr::Index t = 0; t < L; ++t) {
          const float* row = logits.data() + (b * L + t) * V;
          const double m = *std::max_element(row, row + V);
          double z = 0;
          for (xtr::Index v = 0; v < V; ++v) z += std::exp(double(row[v]) - m);
          nll += m + std::log(z) - double(row[batch.data[std::size_t(b * (L + 1) + t + 1)]]);
          count += 1;
        }
    }
    const double bpc = nll / count / std::log(2.0);
    if (format == W::f32 && kv_format == K::f32) f32_bpc = bpc;
    xtr::DecodeSession<Net> session(model.net, 1, true, false);
    int agree = 0;
    for (std::size_t len = 128; len < text.size(); ++len) {
      const float* logits = session.next(text.data(), xtr::Index(text.size()), xtr::Index(len));
      agree += std::max_element(logits, logits + V) - logits == text[len];
    }
    std::printf("{\"impl\": \"xtr\", \"bench\": \"quality\", \"config\": \"%s\", \"weights\": \"%s\", "
                "\"activations\": \"%s\", \"kv_cache\": \"%s\", "
                "\"windows\": %ld, \"bpc\": %.4f, \"bpc_delta\": %.4f, \"greedy_agreement\": %.4f, "
                "\"tokens_compared\": %ld}\n",
                c.name, std::string(xtr::format_name(format)).c_str(),
                std::string(xtr::activation_name(activations)).c_str(),
                std::string(xtr::kv_format_name(kv_format)).c_str(), long(batches.size() * B), bpc, bpc - f32_bpc,
                double(agree) / double(text.size() - 128), long(text.size() - 128));
    std::fflush(stdout);
  }
}

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
  const double gb_per_s = triad_gb_per_s(repeats);
  std::printf("{\"impl\": \"xtr\", \"bench\": \"bandwidth\", \"threads\": %d, \"median_s\": %.5f, \"gb_per_s\": %.1f}\n",
              omp_get_max_threads(), 3.0 * 4.0 * double(std::size_t(32) << 20) / (gb_per_s * 1e9), gb_per_s);
}

}  // namespace

int main(int argc, char** argv) {
  std::string bench = "train_step", config = "small", only;
  int steps = -1;
  bool bf16 = false;
  std::string weights = "f32", activations = "auto", kv_cache = "f32", checkpoint, data = "../shared/data/enwik8-4M.gz";
  long draft_depth = 1;
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
    else if (arg == "--weights") weights = value();
    else if (arg == "--activations") activations = value();
    else if (arg == "--kv-cache") kv_cache = value();
    else if (arg == "--checkpoint") checkpoint = value();
    else if (arg == "--data") data = value();
    else if (arg == "--only") only = value();
    else if (arg == "--draft-depth") draft_depth = std::stol(value());
    else {
      std::fprintf(stderr,
                   "usage: xtr_bench --bench train_step|generate_kv|decode_batch|gemm|bandwidth [--config small|enwik8] "
                   "[--threads N] [--steps N] [--weights f32|bf16|int8|q4|auto] [--activations auto|f32|int8] [--bf16-weights]\n"
                   "                 [--kv-cache f32|f16]\n"
                   "       xtr_bench --bench quality --checkpoint F [--data D] [--config small|enwik8] [--steps WINDOWS]\n"
                   "       xtr_bench --bench seq2seq_train|seq2seq_generate [--config copy|copy_b32]\n"
                   "       xtr_bench --bench option_cost [--config small|enwik8] [--steps N] [--only OPTION]\n"
                   "       xtr_bench --bench beam_search|speculative [--config small|enwik8] [--steps N] "
                   "[--draft-depth N]\n");
      return 2;
    }
  }
  if (bench == "seq2seq_train" || bench == "seq2seq_generate") {
    if (config == "small") config = "copy";  // the default --config names a decoder workload
    if (config != "copy" && !(bench == "seq2seq_generate" && config == "copy_b32")) {
      std::fprintf(stderr, "xtr_bench: unknown --config '%s' for %s (copy%s)\n", config.c_str(), bench.c_str(),
                   bench == "seq2seq_generate" ? ", copy_b32" : "");
      return 2;
    }
    try {
      if (bench == "seq2seq_train") seq2seq_train(steps > 0 ? steps : 10);
      else seq2seq_generate(config == "copy" ? 1 : 32, config.c_str(), steps > 0 ? steps : 3);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "%s\n", e.what());
      return 1;
    }
    return 0;
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
    else if (bench == "generate_kv") generate_kv(*c, steps > 0 ? steps : 3, bf16, weights, xtr::parse_activation_format(activations),
                                                   xtr::parse_kv_format(kv_cache));
    else if (bench == "decode_batch") decode_batch(*c, steps > 0 ? steps : 3, weights, xtr::parse_activation_format(activations),
                                                     xtr::parse_kv_format(kv_cache));
    else if (bench == "option_cost") option_cost(*c, steps > 0 ? steps : 3, only);
    else if (bench == "beam_search") beam_search(*c, steps > 0 ? steps : 3);
    else if (bench == "speculative") speculative(*c, steps > 0 ? steps : 3, draft_depth);
    else if (bench == "gemm") gemm(steps > 0 ? steps : 5);
    else if (bench == "quality") quality(*c, checkpoint, data, steps > 0 ? steps : 64);
    else if (bench == "bandwidth") bandwidth(steps > 0 ? steps : 5);
    else {
      std::fprintf(stderr,
                   "xtr_bench: unknown --bench '%s' (train_step, generate_kv, decode_batch, gemm, bandwidth, seq2seq_train, "
                   "seq2seq_generate, option_cost, beam_search, speculative)\n",
                   bench.c_str());
      return 2;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
