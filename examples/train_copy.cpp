// The encoder-decoder seed workflow of x-transformers (examples/toy_tasks/enc_dec_copy.py), in C++: an XTransformer
// learns to copy a random source twice, tgt = [1, src, src]; every --generate-every steps it prints a sampled
// continuation of one fresh source with its count of incorrect tokens, and counts the wrong tokens of greedy copies
// of --eval-samples fresh sources.
//
//   train_copy --num-batches 2000 --log-jsonl copy.jsonl          (dim 128, depth 3 + 3, heads 8, 16 + 2 tokens,
//                                                                   source 32, target 65, batch 32, Adam 3e-4)
// --save PATH writes a training checkpoint at every print-out and at the end; --resume PATH continues from one (the
// same flags otherwise: the checkpoint refuses another model or configuration).
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

using Model = xtr::XTransformer<xtr::Encoder<>, xtr::Decoder<>>;

struct Options {
  long num_batches = 2000;
  long batch_size = 32;
  double learning_rate = 3e-4;
  long generate_every = 100;
  long num_tokens = 16 + 2;
  long src_len = 32;  // ENC_SEQ_LEN; the target is 2 · src_len + 1 tokens (DEC_SEQ_LEN = 65)
  long min_len = 0;   // > 0: variable-length sources in [min_len, src_len], padded and masked
  long dim = 128, depth = 3, heads = 8;
  long eval_samples = 20;
  long seed = 0;
  int threads = 0;
  std::string log_jsonl, save, resume;
};

void usage_text(std::FILE* out) {
  std::fprintf(out,
               "usage: train_copy [--num-batches N] [--batch-size N] [--learning-rate X] [--generate-every N]\n"
               "  [--num-tokens N] [--src-len N] [--min-len N (variable-length sources, 0 = fixed)]\n"
               "  [--dim N] [--depth N] [--heads N] [--eval-samples N] [--seed N] [--threads N]\n"
               "  [--log-jsonl PATH] [--save CHECKPOINT] [--resume CHECKPOINT]\n");
}

Options parse(int argc, char** argv) {
  Options o;
  const examples::CommandLine flags =
      examples::CommandLine("train_copy", "train an encoder-decoder on the copy task; flags as below", usage_text)
          .bind("--num-batches", &o.num_batches)
          .bind("--batch-size", &o.batch_size)
          .bind("--generate-every", &o.generate_every)
          .bind("--num-tokens", &o.num_tokens)
          .bind("--src-len", &o.src_len)
          .bind("--min-len", &o.min_len)
          .bind("--dim", &o.dim)
          .bind("--depth", &o.depth)
          .bind("--heads", &o.heads)
          .bind("--eval-samples", &o.eval_samples)
          .bind("--seed", &o.seed)
          .bind("--learning-rate", &o.learning_rate)
          .bind("--threads", &o.threads)
          .bind("--log-jsonl", &o.log_jsonl)
          .bind("--save", &o.save)
          .bind("--resume", &o.resume);
  flags.parse(argc, argv);
  for (auto [v, name] : {std::pair{o.num_batches, "--num-batches"}, std::pair{o.batch_size, "--batch-size"},
                         std::pair{o.generate_every, "--generate-every"}, std::pair{o.src_len, "--src-len"},
                         std::pair{o.dim, "--dim"}, std::pair{o.depth, "--depth"}, std::pair{o.heads, "--heads"}})
    if (v < 1) flags.fail(std::string(name) + " must be >= 1, got " + std::to_string(v));
  if (o.eval_samples < 0) flags.fail("--eval-samples must be >= 0, got " + std::to_string(o.eval_samples));
  for (auto [v, limit, name] : {std::tuple{o.src_len, 16384L, "--src-len"}, std::tuple{o.batch_size, 65536L, "--batch-size"},
                                std::tuple{o.dim, 65536L, "--dim"}, std::tuple{o.depth, 4096L, "--depth"},
                                std::tuple{o.heads, 4096L, "--heads"}, std::tuple{o.eval_samples, 1L << 20, "--eval-samples"}})
    if (v > limit) flags.fail(std::string(name) + " " + std::to_string(v) + " exceeds the limit " + std::to_string(limit));
  if (!(o.learning_rate > 0)) flags.fail("--learning-rate must be > 0");
  return o;
}

std::string row_text(const xtr::TokenBatch& t, xtr::Index b, xtr::Index n) {
  std::string s = "[";
  for (xtr::Index i = 0; i < n; ++i) s += (i ? " " : "") + std::to_string(t(b, i));
  return s + "]";
}

/// Wrong tokens of `generated` against the real (masked-in) positions of `src`.
std::pair<long, long> count_incorrect(const xtr::PairedBatch& batch, const xtr::TokenBatch& generated) {
  long wrong = 0, compared = 0;
  for (xtr::Index b = 0; b < batch.src.batch; ++b)
    for (xtr::Index t = 0; t < batch.src.length; ++t) {
      if (!batch.src_mask.data[std::size_t(b * batch.src.length + t)]) continue;
      ++compared;
      wrong += generated(b, t) != batch.src(b, t);
    }
  return {wrong, compared};
}

}  // namespace

int main(int argc, char** argv) try {
  const Options o = parse(argc, argv);
  if (o.threads > 0) omp_set_num_threads(o.threads);
  const xtr::Index S = o.src_len, Ttgt = 2 * S + 1;

  xtr::XTransformerConfig config;
  config.dim = o.dim;
  config.encoder = {.num_tokens = o.num_tokens, .max_seq_len = S, .layers = {.depth = o.depth, .heads = o.heads}};
  config.decoder = {.num_tokens = o.num_tokens, .max_seq_len = Ttgt, .layers = {.depth = o.depth, .heads = o.heads}};
  config.tie_token_emb = true;
  config.seed = std::uint64_t(o.seed);
  Model model(config);
  auto optimizer = xtr::Adam(model.parameters(), {.lr = o.learning_rate});

  const xtr::CopyTaskConfig task{.batch = o.batch_size, .src_len = S, .num_tokens = o.num_tokens, .min_len = o.min_len};
  auto batches = xtr::copy_task(task, std::uint64_t(o.seed), /*stream=*/0);
  auto fresh = xtr::copy_task({.batch = std::max<long>(1, o.eval_samples), .src_len = S, .num_tokens = o.num_tokens,
                               .min_len = o.min_len},
                              std::uint64_t(o.seed), /*stream=*/1);  // never trained on
  long first_step = 0;
  if (!o.resume.empty()) {
    const auto state = xtr::load_checkpoint(o.resume, model, optimizer);
    first_step = long(state.step);
    batches.seek(state.data_position);
    if (auto it = state.extra.find("fresh_position"); it != state.extra.end())
      fresh.seek(xtr::parse_count(it->second, o.resume + " metadata 'fresh_position'"));
    std::printf("resumed from %s at step %ld\n", o.resume.c_str(), first_step);
  }
  std::ofstream log;
  if (!o.log_jsonl.empty()) {
    log.open(o.log_jsonl, o.resume.empty() ? std::ios::out : std::ios::app);
    if (!log) throw xtr::Error("xtr: cannot open --log-jsonl file '" + o.log_jsonl + "'");
  }
  std::printf("%s, %lld parameters, %d threads\n", Model::describe().c_str(),
              static_cast<long long>(model.parameters().count()), omp_get_max_threads());

  const xtr::TokenBatch start(1, 1, 1);  // the prefix token
  const auto began = std::chrono::steady_clock::now();
  for (long step = first_step; step < o.num_batches; ++step) {
    model.train();
    const auto& batch = batches.next();
    auto loss = model(batch.src, batch.tgt, batch.src_mask);
    loss.backward();
    std::printf("%ld: %.6f\n", step, loss.item());
    if (!std::isfinite(loss.item())) {
      std::fprintf(stderr, "train_copy: training loss is %f at step %ld; stopping\n", loss.item(), step);
      return 1;
    }
    optimizer.step();
    optimizer.zero_grad();
    if (log) log << "{\"step\": " << step << ", \"loss\": " << loss.item() << "}\n";

    const bool last = step + 1 == o.num_batches;
    if ((step != 0 && step % o.generate_every == 0) || last) {
      model.eval();
      // x-transformers' print-out: one fresh source, sampled with the default filter
      const auto& one = fresh.next();
      xtr::TokenBatch src(1, S);
      std::copy_n(one.src.data.begin(), S, src.data.begin());
      xtr::Mask mask1(1, S);
      std::copy_n(one.src_mask.data.begin(), S, mask1.data.begin());
      const auto sample = model.generate(src, start, S, mask1, {.seed = std::uint64_t(step)});
      long wrong_one = 0;
      for (xtr::Index t = 0; t < S; ++t) wrong_one += mask1(0, t) && sample(0, t) != src(0, t);
      std::printf("input:            %s\npredicted output: %s\nincorrects: %ld\n", row_text(src, 0, S).c_str(),
                  row_text(sample, 0, S).c_str(), wrong_one);
      if (o.eval_samples > 0) {  // greedy copies of --eval-samples fresh sources, all at once
        const auto& eval = fresh.next();
        const auto greedy = model.generate(eval.src, xtr::TokenBatch(eval.src.batch, 1, 1), S, eval.src_mask,
                                           {.temperature = 0});
        const auto [wrong, compared] = count_incorrect(eval, greedy);
        std::printf("step %ld: %ld incorrect of %ld tokens over %ld fresh sources (greedy)\n", step, wrong, compared,
                    o.eval_samples);
        if (log)
          log << "{\"step\": " << step << ", \"incorrect\": " << wrong << ", \"evaluated\": " << compared
              << ", \"sources\": " << o.eval_samples << "}\n";
      }
      std::fflush(stdout);
      if (log) log.flush();
      if (!o.save.empty())
        xtr::save_checkpoint(o.save, model, optimizer,
                             {.step = step + 1,
                              .data_position = batches.position(),
                              .extra = {{"fresh_position", std::to_string(fresh.position())}}});
    }
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count();
  const long steps = std::max(1L, o.num_batches - first_step);
  std::printf("%ld steps in %.1f s (%.3f s/step)\n", o.num_batches - first_step, seconds, seconds / double(steps));
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "train_copy: %s\n", e.what());
  return 1;
}
