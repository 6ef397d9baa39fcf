// Every generation strategy of docs/generation.md, runnable: the snippets of that page in one program, on a small
// byte-level model trained for a few seconds on a text file (Debian's fortunes by default, or the first argument), so
// that the output is text rather than noise. CI builds and runs it (ctest example.strategies).
//   strategies [TEXT_FILE] [--steps N]
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "xtr/xtr.hpp"

namespace {

using Net = xtr::TransformerWrapper<xtr::Decoder<xtr::Rotary, xtr::RMSNorm, xtr::SwiGLU>>;

void show(const char* what, const xtr::TokenBatch& out) {
  for (xtr::Index b = 0; b < out.batch; ++b) {
    std::string text;
    for (const std::int32_t t : out.row(b)) text += (t >= 32 && t < 127) ? char(t) : t == '\n' ? '|' : '.';
    std::printf("%-26s row %ld: \"%s\"\n", b == 0 ? what : "", long(b), text.c_str());
  }
}

template <class Model>
void train(Model& model, const xtr::TextDataset& text, int steps, double lr) {
  auto optimizer = xtr::Adam(model.parameters(), {.lr = lr});
  xtr::BatchLoader loader(text, 8, 64, 0);
  model.train();
  double loss = 0;
  for (int step = 0; step < steps; ++step) {
    auto l = model(loader.next());
    l.backward();
    xtr::clip_grad_norm(model.parameters(), 0.5);
    optimizer.step();
    optimizer.zero_grad();
    loss = l.item();
  }
  model.eval();
  std::printf("trained %d steps, last loss %.3f\n", steps, loss);
}

}  // namespace

int main(int argc, char** argv) {
  std::string path = "/usr/share/games/fortunes";
  int steps = 300;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--steps" && i + 1 < argc) {
      steps = std::atoi(argv[++i]);
      if (steps < 0) {
        std::fprintf(stderr, "strategies: --steps must be >= 0, got %s\n", argv[i]);
        return 2;
      }
    } else {
      path = a;
    }
  }
  try {
    if (!std::filesystem::exists(path)) {
      std::printf("skipped: no text at %s (apt-get install fortunes, or name a text file)\n", path.c_str());
      return 0;
    }
    const auto text = xtr::TextDataset::load(path);

    // The page's model, smaller so that the program runs in seconds.
    xtr::AutoregressiveWrapper model(Net({.num_tokens = 256, .max_seq_len = 128,
                                          .layers = {.dim = 64, .depth = 2, .heads = 4, .dim_head = 16}}));
    train(model, text, steps, 3e-3);
    const xtr::TokenBatch prompts = {{84, 104, 101, 32, 115}, {89, 111, 117, 32, 119}};  // "The s", "You w"

    // Sampling: greedy, temperature, top-k, top-p, min-p, eos
    show("greedy", model.generate(prompts, 40, {.temperature = 0}));
    show("temperature 0.8, top-k 40", model.generate(prompts, 40, {.temperature = 0.8, .top_k = 40, .seed = 1}));
    show("top-p 0.9", model.generate(prompts, 40, {.temperature = 1.0, .top_k = 0, .top_p = 0.9, .seed = 2}));
    show("min-p 0.1", model.generate(prompts, 40, {.min_p = 0.1, .seed = 3}));
    show("eos = ' '", model.generate(prompts, 40, {.temperature = 0, .eos_token = 32}));
    const auto cached = model.generate(prompts, 40, {.temperature = 0});
    const auto recomputed = model.generate(prompts, 40, {.temperature = 0, .cache_kv = false});
    std::printf("greedy with the KV cache %s greedy without it\n", cached.data == recomputed.data ? "==" : "!=");
    if (cached.data != recomputed.data) return 1;

    // Weights in fewer bytes
    xtr::quantize(model, xtr::WeightFormat::int8);
    show("int8 weights, greedy", model.generate(prompts, 40, {.temperature = 0}));
    std::printf("decoding reads: %s\n", model.net.decoding().c_str());
    xtr::quantize(model, xtr::WeightFormat::f32);

    // Ragged prompts
    const std::vector<std::vector<std::int32_t>> ragged = {{84, 104, 101, 32, 115}, {65}, {73, 32}};
    show("ragged prompts", model.generate(ragged, 30, {.temperature = 0}));
    xtr::Sampling lens{.temperature = 0};
    lens.prompt_lens = {5, 1};
    show("prompt_lens {5, 1}", model.generate(prompts, 30, lens));

    // Beam search
    xtr::BeamSearchResult r = model.beam_search(prompts, 20, {.beams = 4});
    show("beam search, best", r.tokens);
    for (std::size_t j = 0; j < r.beams.size(); ++j)
      std::printf("  beam %zu of prompt 0: score %.3f\n", j, r.scores[j][0]);
    show("beams with eos", model.beam_search(prompts, 30, {.beams = 4, .eos_token = 32, .length_penalty = 1.0}).tokens);
    show("stochastic beams",
         model.beam_search(prompts, 20, {.beams = 4, .stochastic = true, .temperature = 0.7, .seed = 3}).tokens);

    // Contrastive decoding against a smaller, less trained amateur
    xtr::AutoregressiveWrapper small(Net({.num_tokens = 256, .max_seq_len = 128,
                                          .layers = {.dim = 32, .depth = 1, .heads = 2, .dim_head = 16}}));
    train(small, text, steps / 3, 3e-3);
    xtr::Sampling contrastive{.temperature = 0};
    contrastive.amateurs.emplace_back(small, /*alpha=*/0.1, /*beta=*/0.5);
    show("contrastive", model.generate(prompts, 40, contrastive));

    // mask_prob: the forgetful causal mask (training objective)
    xtr::AutoregressiveWrapper masked(Net({.num_tokens = 256, .max_seq_len = 128,
                                           .layers = {.dim = 64, .depth = 2, .heads = 4, .dim_head = 16}}),
                                      {.mask_prob = 0.15});
    train(masked, text, steps / 3, 3e-3);

    // Speculative decoding with the small model as the draft: identical greedy output
    xtr::Sampling speculative{.temperature = 0};
    speculative.draft.emplace(small);
    speculative.draft_tokens = 4;
    const auto drafted = model.generate(prompts, 40, speculative);
    const auto [tokens, forwards] = model.speculative_counts();
    show("speculative (draft 4)", drafted);
    std::printf("speculative: %.2f tokens per model forward; %s plain greedy\n",
                forwards > 0 ? double(tokens) / double(forwards) : 0.0, drafted.data == cached.data ? "==" : "!=");
    if (drafted.data != cached.data) return 1;

    // Streaming and stop conditions
    xtr::Sampling stream{.temperature = 0.8, .top_p = 0.9, .seed = 4};
    std::printf("%-26s ", "streamed (stop at \". \")");
    stream.on_tokens = [](xtr::Index row, std::span<const std::int32_t> new_tokens) {
      if (row == 0)
        for (const auto t : new_tokens) std::putchar(t >= 32 && t < 127 ? t : '.');
      return true;
    };
    stream.stop_sequences = {{'.', ' '}};
    (void)model.generate(prompts, 60, stream);
    std::printf("\n");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "strategies: %s\n", e.what());
    return 1;
  }
  return 0;
}
