// The non-autoregressive workflow of x-transformers (NonAutoregressiveWrapper, MaskGIT-style), in C++: a bidirectional
// byte-level transformer learns to fill in masked bytes of windows of exactly --seq-len bytes, then writes whole
// windows in --steps parallel refinement steps. Prints the loss, and every --generate-every steps a sample.
//
//   train_nar --data ../shared/data/tinyshakespeare.txt --num-batches 2000 --log-jsonl nar.jsonl
// --save PATH writes a training checkpoint at every sample and at the end; --resume PATH continues from one.
#include <omp.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>
#include <tuple>

#include "command_line.hpp"
#include "xtr/xtr.hpp"

namespace {

using Net = xtr::TransformerWrapper<xtr::Encoder<xtr::Rotary, xtr::LayerNorm, xtr::GELU>>;
using Model = xtr::NonAutoregressiveWrapper<Net>;
constexpr std::int32_t mask_id = 256;  // bytes are 0..255

struct Options {
  long num_batches = 2000, batch_size = 16, seq_len = 64, generate_every = 250, steps = 18;
  long dim = 256, depth = 4, heads = 4, seed = 0;
  long self_cond = 0;  // 1: self-conditioning (x-transformers' self_cond=True)
  double learning_rate = 3e-4;
  int threads = 0;
  std::string data = "/usr/share/games/fortunes", log_jsonl, save, resume;
};

void usage_text(std::FILE* out) {
  std::fprintf(out,
               "usage: train_nar [--data PATH (file, .gz, .zip or directory; default /usr/share/games/fortunes)]\n"
               "  [--num-batches N] [--batch-size N] [--seq-len N] [--learning-rate X] [--generate-every N]\n"
               "  [--steps N (refinement steps)] [--dim N] [--depth N] [--heads N] [--seed N] [--threads N]\n"
               "  [--self-cond 0|1] [--log-jsonl PATH] [--save CHECKPOINT] [--resume CHECKPOINT]\n");
}

Options parse(int argc, char** argv) {
  Options o;
  const examples::CommandLine flags =
      examples::CommandLine("train_nar", "train a masked-token (non-autoregressive) byte model; flags as below",
                            usage_text)
          .bind("--num-batches", &o.num_batches)
          .bind("--batch-size", &o.batch_size)
          .bind("--seq-len", &o.seq_len)
          .bind("--generate-every", &o.generate_every)
          .bind("--steps", &o.steps)
          .bind("--dim", &o.dim)
          .bind("--depth", &o.depth)
          .bind("--heads", &o.heads)
          .bind("--seed", &o.seed)
          .bind("--self-cond", &o.self_cond)
          .bind("--learning-rate", &o.learning_rate)
          .bind("--threads", &o.threads)
          .bind("--data", &o.data)
          .bind("--log-jsonl", &o.log_jsonl)
          .bind("--save", &o.save)
          .bind("--resume", &o.resume);
  flags.parse(argc, argv);
  for (auto [v, name] : {std::pair{o.num_batches, "--num-batches"}, std::pair{o.batch_size, "--batch-size"},
                         std::pair{o.generate_every, "--generate-every"}, std::pair{o.dim, "--dim"},
                         std::pair{o.depth, "--depth"}, std::pair{o.heads, "--heads"}})
    if (v < 1) flags.fail(std::string(name) + " must be >= 1, got " + std::to_string(v));
  if (!(o.learning_rate > 0)) flags.fail("--learning-rate must be > 0");
  for (auto [v, limit, name] : {std::tuple{o.seq_len, 16384L, "--seq-len"}, std::tuple{o.batch_size, 65536L, "--batch-size"},
                                std::tuple{o.dim, 65536L, "--dim"}, std::tuple{o.depth, 4096L, "--depth"},
                                std::tuple{o.heads, 4096L, "--heads"}, std::tuple{o.steps, 100000L, "--steps"}})
    if (v > limit) flags.fail(std::string(name) + " " + std::to_string(v) + " exceeds the limit " + std::to_string(limit));
  return o;
}

/// Bytes as printable text: control bytes other than newline and tab become '.'.
std::string printable(const xtr::TokenBatch& t, xtr::Index b) {
  std::string s;
  for (xtr::Index j = 0; j < t.length; ++j) {
    const int c = t(b, j);
    s += (c == '\n' || c == '\t' || (c >= 32 && c < 127)) ? char(c) : '.';
  }
  return s;
}

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\', out += c;
    else if (c == '\n') out += "\\n";
    else if (c == '\t') out += "\\t";
    else out += c;
  }
  return out + "\"";
}

}  // namespace

int main(int argc, char** argv) try {
  const Options o = parse(argc, argv);
  if (o.threads > 0) omp_set_num_threads(o.threads);
  const auto [train_data, val_data] = xtr::TextDataset::load(o.data).split(0.9);
  xtr::MaskedTokenBatches batches(train_data, o.batch_size, o.seq_len, mask_id, std::uint64_t(o.seed), 1);
  Model model(xtr::TransformerConfig{.num_tokens = 257,
                                     .max_seq_len = o.seq_len,
                                     .layers = {.dim = o.dim, .depth = o.depth, .heads = o.heads},
                                     .seed = std::uint64_t(o.seed)},
              {.mask_id = mask_id, .steps = o.steps, .self_cond = o.self_cond != 0});
  auto optimizer = xtr::Adam(model.parameters(), {.lr = o.learning_rate});
  long first_step = 0;
  if (!o.resume.empty()) {
    const auto state = xtr::load_checkpoint(o.resume, model, optimizer);
    first_step = long(state.step);
    batches.seek(state.data_position);
    std::printf("resumed from %s at step %ld\n", o.resume.c_str(), first_step);
  }
  std::ofstream log;
  if (!o.log_jsonl.empty()) {
    log.open(o.log_jsonl, o.resume.empty() ? std::ios::out : std::ios::app);
    if (!log) throw xtr::Error("xtr: cannot open --log-jsonl file '" + o.log_jsonl + "'");
  }
  std::printf("model: %s, %lld parameters, %d threads; %lld training bytes\n", Net::describe().c_str(),
              static_cast<long long>(model.parameters().count()), omp_get_max_threads(),
              static_cast<long long>(train_data.size()));
  const auto began = std::chrono::steady_clock::now();
  for (long step = first_step; step < o.num_batches; ++step) {
    model.train();
    auto loss = model(batches.next());
    if (!std::isfinite(loss.item())) {
      std::fprintf(stderr, "train_nar: training loss is %f at step %ld; stopping\n", loss.item(), step);
      return 1;
    }
    loss.backward();
    xtr::clip_grad_norm(model.parameters(), 0.5);
    optimizer.step();
    optimizer.zero_grad();
    std::printf("%ld: %.4f\n", step, loss.item());
    if (log) log << "{\"step\": " << step << ", \"loss\": " << loss.item() << "}\n";
    if ((step + 1) % o.generate_every == 0 || step + 1 == o.num_batches) {
      const auto sample = model.generate(1, {.seed = std::uint64_t(step)});
      const std::string text = printable(sample, 0);
      std::printf("%s\nsample (%ld steps): %s\n%s\n", std::string(60, '*').c_str(), o.steps, text.c_str(),
                  std::string(60, '-').c_str());
      if (log) log << "{\"step\": " << step << ", \"sample\": " << json_string(text) << "}\n";
      std::fflush(stdout);
      if (log) log.flush();
      if (!o.save.empty())
        xtr::save_checkpoint(o.save, model, optimizer, {.step = step + 1, .data_position = batches.position()});
    }
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count();
  const long steps = std::max(1L, o.num_batches - first_step);
  std::printf("%ld steps in %.1f s (%.3f s/step)\n", o.num_batches - first_step, seconds, seconds / double(steps));
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "train_nar: %s\n", e.what());
  return 1;
}
