// Smallest real use of an installed xtr: a rotary decoder, one Adam step on a next-token loss, a 4-token generate.
#include <cmath>
#include <cstdio>

#include <xtr/xtr.hpp>

int main() {
  using Net = xtr::TransformerWrapper<xtr::Decoder<xtr::Rotary>>;
  xtr::AutoregressiveWrapper model(
      Net({.num_tokens = 16, .max_seq_len = 8, .layers = {.dim = 16, .depth = 1, .heads = 2, .dim_head = 8}}));

  const xtr::TokenBatch batch{{1, 2, 3, 4, 5, 6, 7, 8, 9}, {9, 8, 7, 6, 5, 4, 3, 2, 1}};  // (2, seq_len + 1)
  auto optimizer = xtr::Adam(model.parameters(), {.lr = 1e-3});
  model.train();
  auto loss = model(batch);
  loss.backward();
  optimizer.step();
  optimizer.zero_grad();
  if (!std::isfinite(loss.item())) {
    std::printf("FAIL: loss %f\n", loss.item());
    return 1;
  }

  const xtr::TokenBatch prompt{{1, 2, 3}};
  const auto generated = model.generate(prompt, 4, {.temperature = 0});
  if (generated.batch != 1 || generated.length != 4) {
    std::printf("FAIL: generated shape (%ld, %ld), expected (1, 4)\n", long(generated.batch), long(generated.length));
    return 1;
  }
  for (auto token : generated.data)
    if (token < 0 || token >= 16) {
      std::printf("FAIL: generated token %d outside [0, 16)\n", int(token));
      return 1;
    }
  std::printf("loss %.4f, generated", loss.item());
  for (auto token : generated.data) std::printf(" %d", int(token));
  std::printf("\nOK\n");
  return 0;
}
