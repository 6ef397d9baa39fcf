// The README's usage example, built by CI so that it keeps compiling: quickstart [DATA] trains briefly and samples.
#include <cstdio>

#include <xtr/xtr.hpp>

using Net = xtr::TransformerWrapper<xtr::Decoder<xtr::Rotary, xtr::LayerNorm, xtr::GELU>>;

int main(int argc, char** argv) {
  xtr::AutoregressiveWrapper model(Net({.num_tokens = 256, .max_seq_len = 128,
                                        .layers = {.dim = 128, .depth = 2, .heads = 4}}));
  auto optimizer = xtr::Adam(model.parameters(), {.lr = 1e-3});
  auto [train, val] = xtr::TextDataset::load(argc > 1 ? argv[1] : "/usr/share/games/fortunes").split(0.9);
  xtr::BatchLoader loader(train, /*batch_size=*/8, /*seq_len=*/128, /*seed=*/0);
  for (int step = 0; step < 100; ++step) {
    auto loss = model(loader.next());  // (8, 129) tokens: the shift happens inside
    loss.backward();
    xtr::clip_grad_norm(model.parameters(), 0.5);
    optimizer.step();
    optimizer.zero_grad();
  }
  auto text = model.generate(xtr::TokenBatch{{'T', 'h', 'e'}}, 100, {.temperature = 0.8, .top_p = 0.9});
  for (auto token : text.row(0)) std::putchar(token);
  std::putchar('\n');
}
