// Finite-difference gradient checks in double of whole models (every parameter) for each policy, and of the
// autoregressive loss.
#include <catch2/catch.hpp>

#include "testing.hpp"
#include "xtr/xtr.hpp"

namespace test_model_gradients {  // this file's names (the test executable may compile the files as one unit)

using namespace xtr;
using xtr::testing::check_gradient;

namespace {

TransformerConfig tiny(double dropout = 0) {
  return {.num_tokens = 11,
          .max_seq_len = 9,
          .emb_dropout = dropout,
          .layers = {.dim = 8, .depth = 2, .heads = 2, .dim_head = 4, .attn_dropout = dropout, .ff_dropout = dropout},
          .seed = 3};
}

/// loss = Σ logits ⊙ R for a fixed random R; checks d loss / d θ for every parameter θ.
template <class Net>
void check_network(Net& net, const TokenBatch& tokens, MaskView mask = {}) {
  const Index V = net.num_tokens();
  const auto R = xtr::testing::random_values(tokens.batch * tokens.length * V, 5);
  const std::uint64_t fixed = 41;  // same dropout masks in every forward
  auto loss = [&]() {
    net.set_forward_count(fixed);
    auto logits = net.forward(tokens, mask);
    double s = 0;
    for (Index i = 0; i < logits.size(); ++i) s += logits.data()[i] * R[i];
    return s;
  };
  net.parameters().zero_grad();
  net.set_forward_count(fixed);
  auto logits = net.forward(tokens, mask);
  for (Index i = 0; i < logits.size(); ++i) logits.data()[i] = R[i];
  net.backward(1.0);
  auto& store = net.parameters();
  for (const auto& e : store.entries()) {
    std::vector<double*> x;
    std::vector<double> analytic;
    const Index n = e.shape.numel(), stride = std::max<Index>(1, n / 40);  // up to ~40 entries per tensor
    for (Index i = 0; i < n; i += stride) {
      x.push_back(store.values().data() + e.offset + i);
      analytic.push_back(store.grads()[e.offset + i]);
    }
    XTR_REQUIRE_GRADIENT(check_gradient(x, analytic, loss, e.name));
  }
}

}  // namespace

TEMPLATE_TEST_CASE("whole-model gradients match finite differences", "[gradient][model]",
                   (Decoder<Rotary, LayerNorm, GELU>), (Decoder<AbsoluteLearned, RMSNorm, SwiGLU>),
                   (Decoder<NoPosition, LayerNorm, GEGLU>), (Encoder<Rotary, RMSNorm, GELU>),
                   (Encoder<AbsoluteLearned, LayerNorm, SwiGLU>)) {
  TransformerWrapper<TestType, Cpu<double>> net(tiny());
  const auto tokens = xtr::testing::random_tokens(2, 7, 11, 1);
  SECTION("no mask") { check_network(net, tokens); }
  SECTION("key padding mask") {
    Mask mask(2, 7);
    mask(0, 5) = mask(0, 6) = 0;
    mask(1, 0) = 0;
    check_network(net, tokens, mask);
  }
}

TEST_CASE("whole-model gradients with grouped-query attention and partial rotary", "[gradient][model]") {
  auto config = tiny();
  config.layers.heads = 4;
  config.layers.kv_heads = 2;
  config.layers.rotary_dim = 2;
  TransformerWrapper<Decoder<Rotary, LayerNorm, GEGLU>, Cpu<double>> net(config);
  check_network(net, xtr::testing::random_tokens(2, 9, 11, 2));
}

TEST_CASE("whole-model gradients with dropout on embeddings, attention and feed-forward", "[gradient][model]") {
  TransformerWrapper<Decoder<Rotary, LayerNorm, GELU>, Cpu<double>> net(tiny(0.3));
  net.train();
  check_network(net, xtr::testing::random_tokens(2, 8, 11, 4));
}

TEST_CASE("autoregressive loss gradient, with ignore_index", "[gradient][model]") {
  using Net = TransformerWrapper<Decoder<Rotary, RMSNorm, SwiGLU>, Cpu<double>>;
  AutoregressiveWrapper<Net> model(Net(tiny()), {.ignore_index = -1, .pad_value = 0});
  auto x = xtr::testing::random_tokens(2, 9, 11, 8);
  x(0, 8) = -1;  // an ignored target
  x(1, 3) = -1;  // ignored as target, fed as pad_value
  model.parameters().zero_grad();
  auto loss = model(x);
  (loss / 2.0).backward();
  auto& store = model.parameters();
  std::vector<double*> params;
  std::vector<double> analytic;
  for (Index i = 0; i < store.count(); i += 7) {
    params.push_back(store.values().data() + i);
    analytic.push_back(store.grads()[i]);
  }
  XTR_REQUIRE_GRADIENT(check_gradient(params, analytic, [&] { return model(x).item() / 2.0; }, "all parameters"));
}

TEST_CASE("whole-model gradients with one head (no output projection, as x-transformers)", "[gradient][model]") {
  auto config = tiny();
  config.layers.heads = 1;
  config.layers.dim_head = config.layers.dim;
  TransformerWrapper<Decoder<Rotary, LayerNorm, GELU>, Cpu<double>> net(config);
  REQUIRE(net.parameters().find("attn_layers.layers.0.1.to_out.weight") == nullptr);
  check_network(net, xtr::testing::random_tokens(2, 7, 11, 6));
  config.layers.dim_head = 4;
  REQUIRE_THROWS_WITH((TransformerWrapper<Decoder<Rotary>, Cpu<double>>(config)),
                      Catch::Contains("with heads = 1 there is no output projection") &&
                          Catch::Contains("dim_head 4 must equal dim 8"));
}

TEST_CASE("whole-model gradients of older x-transformers layouts: plain gains, LayerNorm biases, a to_logits bias",
          "[gradient][model]") {
  auto config = tiny();
  config.layers.norm_unit_offset = false;
  config.layers.norm_bias = true;
  config.logits_bias = true;
  TransformerWrapper<Decoder<Rotary, LayerNorm, GEGLU>, Cpu<double>> net(config);
  auto& store = net.parameters();
  REQUIRE(store.find("attn_layers.layers.0.0.0.beta") != nullptr);
  REQUIRE(store.find("attn_layers.final_norm.beta") != nullptr);
  REQUIRE(store.find("to_logits.bias") != nullptr);
  REQUIRE(store.values()[store.find("attn_layers.final_norm.gamma")->offset] == 1.0);  // the gain itself, init 1
  // biases start at 0: move every parameter so that the biases and gains matter
  const auto noise = xtr::testing::random_values(store.count(), 9, 0.2);
  for (Index i = 0; i < store.count(); ++i) store.values()[i] += noise[std::size_t(i)];
  check_network(net, xtr::testing::random_tokens(2, 7, 11, 3));
}

TEST_CASE("a gain stored as is equals the same gain stored as gain - 1", "[model]") {
  auto offset = tiny(), plain = tiny();
  plain.layers.norm_unit_offset = false;
  for (auto* c : {&offset, &plain}) c->layers.depth = 1;
  using Net = TransformerWrapper<Decoder<AbsoluteLearned, RMSNorm, SwiGLU>, Cpu<double>>;
  Net a(offset), b(plain);
  const auto noise = xtr::testing::random_values(a.parameters().count(), 4, 0.3);
  for (Index i = 0; i < a.parameters().count(); ++i) a.parameters().values()[i] += noise[std::size_t(i)];
  b.parameters().values() = a.parameters().values();
  for (const auto& e : b.parameters().entries())
    if (e.name.ends_with(".g"))
      for (Index i = 0; i < e.shape.numel(); ++i) b.parameters().values()[e.offset + i] += 1.0;
  const auto tokens = xtr::testing::random_tokens(2, 6, 11, 5);
  const auto la = a.forward(tokens), lb = b.forward(tokens);
  REQUIRE((la - lb).cwiseAbs().maxCoeff() < 1e-12);
  REQUIRE_THROWS_WITH((TransformerWrapper<Decoder<Rotary, RMSNorm>, Cpu<double>>(
                          TransformerConfig{.num_tokens = 5, .max_seq_len = 4,
                                            .layers = {.dim = 8, .depth = 1, .heads = 2, .dim_head = 4,
                                                       .norm_bias = true}})),
                      Catch::Contains("layers.norm_bias is a LayerNorm bias; RMSNorm has none"));
}

}  // namespace test_model_gradients
