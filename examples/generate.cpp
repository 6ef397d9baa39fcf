// Generates text from a `train_enwik8 --save` checkpoint, streaming the new bytes to stdout as they are produced:
//   generate --checkpoint C --prompt TEXT --length N [--temperature T --top-k K --top-p P --min-p M --seed S
//            --beams B --amateur C2 --alpha A --beta B --draft C3 --draft-tokens K --no-cache --json --threads N
//            --weights auto|f32|bf16|int8|q4 --activations auto|f32|int8 --kv-cache f32|f16]
// Sampling by default (x-transformers' defaults: temperature 1, top-k keeping 10% of the vocabulary); --temperature 0
// is greedy; --beams B runs beam search (the best beam is printed at the end); --amateur C2 contrastive decoding
// against a second checkpoint (α --alpha, β --beta); --draft C3 speculative decoding with a small draft checkpoint
// proposing --draft-tokens tokens per step. With --json nothing is streamed: one JSON object is printed instead,
//   {"tokens": [new token ids], "text": "the new text", "tokens_per_s": new tokens per second}
// (bytes that are not valid UTF-8 appear in "text" as U+FFFD). --weights: what the KV-cached decoding reads (auto: the
// model's default, bf16 when the float weights exceed the last-level cache; int8 and q4 quantise per group of 32).
// --activations (int8 and q4 weights): what the weights multiply; auto is int8 per chunk of 32 values where the build
// has the integer kernel (AVX512-VNNI), float elsewhere. --kv-cache f16 keeps the cached keys and values (of the model,
// and of --amateur and --draft) in half precision: half the bytes each step's attention reads.
#include <omp.h>

#include <chrono>
#include <limits>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "command_line.hpp"
#include "xtr/io/safetensors.hpp"
#include "xtr/training/checkpoint.hpp"
#include "xtr/xtr.hpp"

namespace {

// the model train_enwik8 trains and saves
using Net = xtr::TransformerWrapper<xtr::Decoder<xtr::Rotary, xtr::LayerNorm, xtr::GELU>>;
using Model = xtr::AutoregressiveWrapper<Net>;

struct Options {
  std::string checkpoint, prompt, amateur, draft, weights = "auto", activations = "auto",
              kv_cache = "f32";
  static constexpr long unset = std::numeric_limits<long>::min();
  long length = 256, seed = -1, top_k = -1, beams = unset, draft_tokens = 4;
  double temperature = 1.0, top_p = 0, min_p = 0, alpha = 0.1, beta = 0.5;
  int threads = 0;
  bool no_cache = false, json = false;
  bool sampled_beams = false;  // --beams with --temperature, --top-k, --top-p or --min-p: stochastic beams
};

void usage_text(std::FILE* out) {
  std::fprintf(out,
               "usage: generate --checkpoint C --prompt TEXT [--length N (256)] [--temperature T (1)] [--top-k K]\n"
               "  [--top-p P] [--min-p M] [--seed S] [--beams B] [--amateur C2 [--alpha A (0.1)] [--beta B (0.5)]]\n"
               "  [--draft C3 [--draft-tokens K (4)]] [--no-cache] [--json] [--threads N]\n"
               "  [--weights auto|f32|bf16|int8|q4 (auto)] [--activations auto|f32|int8 (auto)] [--kv-cache f32|f16 (f32)]\n"
               "With --beams the best beam is printed at the end; --temperature, --top-k, --top-p or --min-p with it\n"
               "make the beams stochastic (x-transformers' beam_search(stochastic=True)).\n");
}

Options parse(int argc, char** argv) {
  Options o;
  const examples::CommandLine flags =
      examples::CommandLine("generate", "generate text from a train_enwik8 checkpoint", usage_text)
          .bind("--checkpoint", &o.checkpoint)
          .bind("--prompt", &o.prompt)
          .bind("--length", &o.length)
          .bind("--temperature", &o.temperature)
          .bind("--top-k", &o.top_k)
          .bind("--top-p", &o.top_p)
          .bind("--min-p", &o.min_p)
          .bind("--seed", &o.seed)
          .bind("--beams", &o.beams)
          .bind("--amateur", &o.amateur)
          .bind("--alpha", &o.alpha)
          .bind("--weights", &o.weights)
          .bind("--activations", &o.activations)
          .bind("--kv-cache", &o.kv_cache)
          .bind("--beta", &o.beta)
          .bind("--draft", &o.draft)
          .bind("--draft-tokens", &o.draft_tokens)
          .bind("--threads", &o.threads)
          .bind_switch("--no-cache", &o.no_cache)
          .bind_switch("--json", &o.json);
  flags.parse(argc, argv);
  if (o.checkpoint.empty()) flags.fail("--checkpoint is required");
  if (o.prompt.empty()) flags.fail("--prompt is required (at least one byte)");
  if (o.length < 0) flags.fail("--length must be >= 0, got " + std::to_string(o.length));
  if (!(o.temperature >= 0)) flags.fail("--temperature must be >= 0, got " + std::to_string(o.temperature));
  if (o.top_k < -1) flags.fail("--top-k must be >= 0, got " + std::to_string(o.top_k));
  if (!(o.top_p >= 0 && o.top_p <= 1)) flags.fail("--top-p must be in [0, 1], got " + std::to_string(o.top_p));
  if (!(o.min_p >= 0 && o.min_p <= 1)) flags.fail("--min-p must be in [0, 1], got " + std::to_string(o.min_p));
  if (o.seed < -1) flags.fail("--seed must be >= 0, got " + std::to_string(o.seed));
  if (o.beams != Options::unset && o.beams < 1) flags.fail("--beams must be >= 1, got " + std::to_string(o.beams));
  if (o.draft_tokens < 1) flags.fail("--draft-tokens must be >= 1, got " + std::to_string(o.draft_tokens));
  if (o.threads < 0) flags.fail("--threads must be >= 1, got " + std::to_string(o.threads));
  if (o.beams != Options::unset && (!o.amateur.empty() || !o.draft.empty()))
    flags.fail("--beams cannot be combined with --amateur or --draft");
  if (!o.amateur.empty() && !o.draft.empty()) flags.fail("--amateur and --draft cannot be combined");
  o.sampled_beams = o.beams != Options::unset && (flags.given("--temperature") || flags.given("--top-k") ||
                                                  flags.given("--top-p") || flags.given("--min-p"));
  if (o.weights != "auto" && o.weights != "f32" && o.weights != "bf16" && o.weights != "int8" && o.weights != "q4")
    flags.fail("--weights must be auto, f32, bf16, int8 or q4, got '" + o.weights + "'");
  if (!xtr::find_activation_format(o.activations))
    flags.fail("--activations must be auto, f32 or int8, got '" + o.activations + "'");
  if (o.activations != "auto" && (o.weights == "auto" || o.weights == "f32" || o.weights == "bf16"))
    flags.fail("--activations " + o.activations + " needs --weights int8 or q4 (float and bf16 weights multiply float activations)");
  if (o.kv_cache != "f32" && o.kv_cache != "f16") flags.fail("--kv-cache must be f32 or f16, got '" + o.kv_cache + "'");
  if (o.kv_cache == "f16" && o.no_cache) flags.fail("--kv-cache f16 needs the KV cache: drop --no-cache");
  return o;
}

/// The model a train_enwik8 checkpoint holds: its type and configuration from the metadata, then the weights.
Model load_model(const std::string& path) {
  const auto file = xtr::safetensors::read(path);
  const std::string what = "checkpoint '" + path + "'";
  const auto model_it = file.metadata.find("xtr.model"), config_it = file.metadata.find("xtr.config");
  xtr::require(model_it != file.metadata.end() && config_it != file.metadata.end(), what,
               " has no 'xtr.model' / 'xtr.config' metadata (not a train_enwik8 --save checkpoint?)");
  xtr::require(model_it->second == Net::describe(), what, " holds a ", model_it->second, ", generate reads ",
               Net::describe(), " (train_enwik8's model)");
  Net net(xtr::transformer_config_from_json(xtr::json::parse(config_it->second)));
  xtr::load_state_dict(net.parameters(), file, xtr::StateDictOptions{.prefix = "", .ignore = {"optimizer."}}, what);
  return Model(std::move(net));
}

/// The bytes as JSON string content: valid UTF-8 kept, other bytes as U+FFFD.
std::string json_text(const std::vector<std::int32_t>& tokens) {
  std::string bytes;
  for (auto t : tokens) bytes += char(t);
  std::string valid;
  for (std::size_t i = 0; i < bytes.size();) {
    const auto c = static_cast<unsigned char>(bytes[i]);
    const std::size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    bool ok = n > 0 && i + n <= bytes.size();
    for (std::size_t k = 1; ok && k < n; ++k) ok = (static_cast<unsigned char>(bytes[i + k]) >> 6) == 2;
    if (ok) {
      valid.append(bytes, i, n);
      i += n;
    } else {
      valid += "\xEF\xBF\xBD";
      i += 1;
    }
  }
  return xtr::json::Value(valid).dump();
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  if (o.threads > 0) omp_set_num_threads(o.threads);
  try {
    Model model = load_model(o.checkpoint);
    if (o.weights != "auto")
      xtr::quantize(model, xtr::parse_weight_format(o.weights), xtr::WeightCopy::kDefaultGroup,
                    xtr::parse_activation_format(o.activations));
    const xtr::Index context = model.max_seq_len();
    xtr::require(xtr::Index(o.prompt.size()) <= context, "--prompt has ", o.prompt.size(),
                 " bytes, more than the model's context (max_seq_len ", context, ")");
    xtr::TokenBatch prompt(1, xtr::Index(o.prompt.size()));
    for (std::size_t i = 0; i < o.prompt.size(); ++i) prompt.data[i] = static_cast<unsigned char>(o.prompt[i]);
    std::optional<Model> amateur, draft;
    if (!o.amateur.empty()) amateur.emplace(load_model(o.amateur));
    if (!o.draft.empty()) draft.emplace(load_model(o.draft));
    const xtr::KVFormat kv = xtr::parse_kv_format(o.kv_cache);
    for (Model* m : {&model, amateur ? &*amateur : nullptr, draft ? &*draft : nullptr})
      if (m) xtr::use_kv_format(*m, kv);

    std::vector<std::int32_t> tokens;
    const auto started = std::chrono::steady_clock::now();
    if (o.beams != Options::unset) {
      // x-transformers' beam_search(stochastic=True, temperature, filter_logits_fn) when a sampling flag is given
      xtr::BeamSearchOptions b{.beams = o.beams,
                               .stochastic = o.sampled_beams,
                               .temperature = o.temperature,
                               .top_k = std::max(0L, o.top_k),
                               .top_p = o.top_p,
                               .min_p = o.min_p,
                               .cache_kv = !o.no_cache};
      if (o.seed >= 0) b.seed = std::uint64_t(o.seed);
      tokens = model.beam_search(prompt, o.length, b).tokens.row(0);
      if (!o.json) {
        std::fwrite(std::string(tokens.begin(), tokens.end()).data(), 1, tokens.size(), stdout);
        std::fputc('\n', stdout);
      }
    } else {
      xtr::Sampling s{.temperature = o.temperature, .top_k = o.top_k, .top_p = o.top_p, .min_p = o.min_p,
                      .cache_kv = !o.no_cache};
      if (o.seed >= 0) s.seed = std::uint64_t(o.seed);
      if (amateur) s.amateurs.emplace_back(*amateur, o.alpha, o.beta);
      if (draft) {
        s.draft.emplace(*draft);
        s.draft_tokens = o.draft_tokens;
      }
      if (!o.json)
        s.on_tokens = [](xtr::Index, std::span<const std::int32_t> new_tokens) {
          for (auto t : new_tokens) std::fputc(t, stdout);
          std::fflush(stdout);
          return true;
        };
      tokens = model.generate(prompt, o.length, s).row(0);
      if (!o.json) std::fputc('\n', stdout);
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    if (o.json) {
      std::string list;
      for (auto t : tokens) list += (list.empty() ? "" : ", ") + std::to_string(t);
      std::printf("{\"tokens\": [%s], \"text\": %s, \"tokens_per_s\": %.1f}\n", list.c_str(), json_text(tokens).c_str(),
                  seconds > 0 ? double(tokens.size()) / seconds : 0.0);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "generate: %s\n", e.what());
    return 1;
  }
  return 0;
}
