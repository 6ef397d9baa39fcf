// Encoder-decoder: cross-attention (Decoder<..., CrossAttend>, CrossAttender), embed(), XTransformer.
// Finite-difference gradients (every parameter, the context, tied embeddings, token dropout), padding invariance,
// cached vs recomputed generation, bad input.
#include <catch2/catch.hpp>

#include <cmath>

#include "testing.hpp"
#include "xtr/xtr.hpp"

namespace test_encoder_decoder {  // this file's names (the test executable may compile the files as one unit)

using namespace xtr;
using xtr::testing::check_gradient;

namespace {

TransformerConfig tiny_stack(Index dim_context = 0, double dropout = 0) {
  return {.num_tokens = 11,
          .max_seq_len = 9,
          .emb_dropout = dropout,
          .layers = {.dim = 8, .depth = 2, .heads = 2, .dim_head = 4, .attn_dropout = dropout, .ff_dropout = dropout,
                     .dim_context = dim_context},
          .seed = 3};
}

XTransformerConfig tiny_seq2seq(bool tie, double dropout = 0, double token_dropout = 0) {
  XTransformerConfig c;
  c.dim = 8;
  c.encoder = {.num_tokens = 11, .max_seq_len = 7, .emb_dropout = dropout,
               .layers = {.depth = 2, .heads = 2, .dim_head = 4, .attn_dropout = dropout, .ff_dropout = dropout}};
  c.decoder = {.num_tokens = tie ? 11 : 13, .max_seq_len = 9, .emb_dropout = dropout,
               .layers = {.depth = 2, .heads = 4, .dim_head = 4, .kv_heads = 2, .attn_dropout = dropout,
                          .ff_dropout = dropout}};
  c.tie_token_emb = tie;
  c.cross_attn_tokens_dropout = token_dropout;
  c.seed = 5;
  return c;
}

/// Up to ~40 entries of every parameter: pointers and their analytic gradients.
template <class Store>
void sample_parameters(Store& store, std::vector<double*>& x, std::vector<double>& analytic, const std::string& name) {
  const auto* e = store.find(name);
  REQUIRE(e != nullptr);
  const Index n = e->shape.numel(), stride = std::max<Index>(1, n / 40);
  for (Index i = 0; i < n; i += stride) {
    x.push_back(store.values().data() + e->offset + i);
    analytic.push_back(store.grads()[e->offset + i]);
  }
}

/// loss = Σ out ⊙ R over the logits (or embeddings) of a cross-attending stack; checks every parameter and the context.
template <class Net>
void check_cross_attending(Net& net, const TokenBatch& tokens, std::vector<double>& context, Index context_length,
                           MaskView context_mask, MaskView mask = {}) {
  const Index B = tokens.batch, C = net.dim_context();
  const ContextView<double> ctx{context.data(), B, context_length, C, context_mask};
  const Index outputs = B * tokens.length * net.num_tokens();
  const auto R = xtr::testing::random_values(outputs, 5);
  auto loss = [&] {
    auto logits = net.forward(tokens, mask, ctx);
    double s = 0;
    for (Index i = 0; i < logits.size(); ++i) s += logits.data()[i] * R[std::size_t(i)];
    return s;
  };
  net.parameters().zero_grad();
  auto logits = net.forward(tokens, mask, ctx);
  std::copy(R.begin(), R.end(), logits.data());
  net.backward(1.0);
  const auto dcontext = net.context_gradient();
  REQUIRE(dcontext.rows() == B * context_length);
  REQUIRE(dcontext.cols() == C);
  std::vector<double> context_grad(dcontext.data(), dcontext.data() + dcontext.size());
  for (const auto& e : net.parameters().entries()) {
    std::vector<double*> x;
    std::vector<double> analytic;
    sample_parameters(net.parameters(), x, analytic, e.name);
    XTR_REQUIRE_GRADIENT(check_gradient(x, analytic, loss, e.name));
  }
  std::vector<double*> x;
  for (auto& v : context) x.push_back(&v);
  XTR_REQUIRE_GRADIENT(check_gradient(x, context_grad, loss, "context"));
}

}  // namespace

TEMPLATE_TEST_CASE("cross-attention gradients match finite differences, into the context too",
                   "[gradient][cross]", (Decoder<Rotary, LayerNorm, GELU, CrossAttend>),
                   (Decoder<AbsoluteLearned, RMSNorm, SwiGLU, CrossAttend>), (Encoder<NoPosition, CrossAttend>),
                   (CrossAttender<AbsoluteLearned, RMSNorm, GEGLU>)) {
  xtr::testing::SerialOpenMP serial;
  auto config = tiny_stack(/*dim_context=*/6);
  config.layers.heads = 4;
  config.layers.kv_heads = 2;
  TransformerWrapper<TestType, Cpu<double>> net(config);
  if constexpr (TestType::self_attend) {
    REQUIRE(net.parameters().find("attn_layers.layers.1.1.to_k.weight")->shape == Shape{8, 6});  // cross block
  } else {
    REQUIRE(net.parameters().find("attn_layers.layers.0.1.to_k.weight")->shape == Shape{8, 6});
  }
  const auto tokens = xtr::testing::random_tokens(2, 5, 11, 1);
  auto context = xtr::testing::random_values(2 * 4 * 6, 9);
  SECTION("every context position") { check_cross_attending(net, tokens, context, 4, {}); }
  SECTION("context mask with an all-masked row, token mask") {
    Mask context_mask(2, 4);
    for (Index j = 0; j < 4; ++j) context_mask(1, j) = 0;  // row 1 sees no context: the sublayer adds 0
    context_mask(0, 3) = 0;
    Mask mask(2, 5);
    mask(0, 4) = 0;
    check_cross_attending(net, tokens, context, 4, context_mask, mask);
  }
}

TEST_CASE("cross-attention with dropout: gradients match finite differences", "[gradient][cross]") {
  xtr::testing::SerialOpenMP serial;
  TransformerWrapper<Decoder<Rotary, CrossAttend>, Cpu<double>> net(tiny_stack(0, 0.3));
  net.train();
  const auto tokens = xtr::testing::random_tokens(2, 6, 11, 2);
  auto context = xtr::testing::random_values(2 * 5 * 8, 3);
  const ContextView<double> ctx{context.data(), 2, 5, 8, {}};
  const auto R = xtr::testing::random_values(2 * 6 * 11, 4);
  auto loss = [&] {
    net.set_forward_count(17);  // the same dropout masks in every forward
    auto logits = net.forward(tokens, {}, ctx);
    double s = 0;
    for (Index i = 0; i < logits.size(); ++i) s += logits.data()[i] * R[std::size_t(i)];
    return s;
  };
  net.parameters().zero_grad();
  net.set_forward_count(17);
  auto logits = net.forward(tokens, {}, ctx);
  std::copy(R.begin(), R.end(), logits.data());
  net.backward(1.0);
  std::vector<double*> x;
  std::vector<double> analytic;
  for (Index i = 0; i < net.parameters().count(); i += 5) {
    x.push_back(net.parameters().values().data() + i);
    analytic.push_back(net.parameters().grads()[i]);
  }
  XTR_REQUIRE_GRADIENT(check_gradient(x, analytic, loss, "all parameters"));
}

TEST_CASE("embed(): final-normed hidden states, gradient through backward(), no to_logits with return_only_embed",
          "[gradient][cross]") {
  xtr::testing::SerialOpenMP serial;
  auto config = tiny_stack();
  config.return_only_embed = true;
  TransformerWrapper<Encoder<Rotary, RMSNorm>, Cpu<double>> net(config);
  REQUIRE(net.parameters().find("to_logits.weight") == nullptr);
  REQUIRE_THROWS_WITH(net.forward(xtr::testing::random_tokens(1, 3, 11, 1)), Catch::Contains("return_only_embed"));
  const auto tokens = xtr::testing::random_tokens(2, 6, 11, 3);
  Mask mask(2, 6);
  mask(1, 5) = mask(1, 4) = 0;
  const auto R = xtr::testing::random_values(2 * 6 * 8, 6);
  auto loss = [&] {
    auto h = net.embed(tokens, mask);
    double s = 0;
    for (Index i = 0; i < h.size(); ++i) s += h.data()[i] * R[std::size_t(i)];
    return s;
  };
  net.parameters().zero_grad();
  auto h = net.embed(tokens, mask);
  REQUIRE(h.rows() == 12);
  REQUIRE(h.cols() == 8);
  std::copy(R.begin(), R.end(), h.data());
  net.backward(1.0);
  for (const auto& e : net.parameters().entries()) {
    std::vector<double*> x;
    std::vector<double> analytic;
    sample_parameters(net.parameters(), x, analytic, e.name);
    XTR_REQUIRE_GRADIENT(check_gradient(x, analytic, loss, e.name));
  }
}

TEST_CASE("XTransformer loss gradient: encoder, cross-attention, tied embeddings, padding, dropout",
          "[gradient][seq2seq]") {
  xtr::testing::SerialOpenMP serial;
  const bool tie = GENERATE(true, false);
  const double dropout = GENERATE(0.0, 0.25);
  INFO("tie_token_emb " << tie << ", dropout " << dropout);
  using Model = XTransformer<Encoder<AbsoluteLearned, LayerNorm>, Decoder<Rotary, RMSNorm, GEGLU>, Cpu<double>>;
  Model model(tiny_seq2seq(tie, dropout, dropout));
  auto& store = model.parameters();
  if (tie) {  // one storage, two names
    REQUIRE(store.find("decoder.net.token_emb.emb.weight")->offset == store.find("encoder.token_emb.emb.weight")->offset);
  } else {
    REQUIRE(store.find("decoder.net.token_emb.emb.weight")->offset != store.find("encoder.token_emb.emb.weight")->offset);
  }
  REQUIRE(store.find("encoder.to_logits.weight") == nullptr);
  REQUIRE(store.find("decoder.net.attn_layers.layers.1.1.to_q.weight") != nullptr);  // cross-attention of layer 0
  const auto src = xtr::testing::random_tokens(2, 6, 11, 4);
  auto tgt = xtr::testing::random_tokens(2, 8, tie ? 11 : 13, 5);
  tgt(1, 7) = -100;  // ignored target
  Mask src_mask(2, 6);
  src_mask(1, 4) = src_mask(1, 5) = 0;
  model.train(dropout > 0);
  auto loss = [&] {
    model.encoder.set_forward_count(30);  // the same dropout masks and dropped tokens in every forward
    model.decoder.net.set_forward_count(30);
    return model(src, tgt, src_mask).item() / 3.0;
  };
  store.zero_grad();
  model.encoder.set_forward_count(30);
  model.decoder.net.set_forward_count(30);
  auto l = model(src, tgt, src_mask);
  REQUIRE(std::isfinite(l.item()));
  (l / 3.0).backward();
  REQUIRE_THROWS_WITH(l.backward(), Catch::Contains("twice"));
  std::vector<double*> x;
  std::vector<double> analytic;
  for (const auto& e : store.entries()) {
    if (e.alias_of >= 0) continue;  // the tied name: same storage as its target
    sample_parameters(store, x, analytic, e.name);
  }
  XTR_REQUIRE_GRADIENT(check_gradient(x, analytic, loss, "all parameters"));
}

TEST_CASE("tied embeddings: the gradient is the sum of the encoder's and the decoder's use", "[seq2seq]") {
  using Model = XTransformer<Encoder<>, Decoder<>, Cpu<double>>;
  Model tied(tiny_seq2seq(true));
  const auto src = xtr::testing::random_tokens(2, 5, 11, 4);
  const auto tgt = xtr::testing::random_tokens(2, 7, 11, 5);
  tied.parameters().zero_grad();
  tied(src, tgt).backward();
  const auto* emb = tied.parameters().find("encoder.token_emb.emb.weight");
  // the same model untied, with both tables holding the tied values
  auto config = tiny_seq2seq(true);
  config.tie_token_emb = false;
  Model untied(config);
  for (const auto& e : untied.parameters().entries()) {
    const auto* from = tied.parameters().find(e.name);
    std::copy_n(tied.parameters().values().data() + from->offset, e.shape.numel(),
                untied.parameters().values().data() + e.offset);
  }
  untied.parameters().zero_grad();
  untied(src, tgt).backward();
  const auto* enc = untied.parameters().find("encoder.token_emb.emb.weight");
  const auto* dec = untied.parameters().find("decoder.net.token_emb.emb.weight");
  double worst = 0;
  for (Index i = 0; i < emb->shape.numel(); ++i) {
    const double sum = untied.parameters().grads()[enc->offset + i] + untied.parameters().grads()[dec->offset + i];
    worst = std::max(worst, std::abs(tied.parameters().grads()[emb->offset + i] - sum));
  }
  CHECK(worst < 1e-12);
}

TEST_CASE("context token dropout keeps the x-transformers count of real tokens", "[seq2seq]") {
  Mask mask(3, 10);
  for (Index j = 6; j < 10; ++j) mask(1, j) = 0;  // 6 real
  for (Index j = 0; j < 10; ++j) mask(2, j) = 0;  // none real
  std::vector<std::uint8_t> kept;
  for (std::uint64_t draw = 0; draw < 20; ++draw) {
    const RandomStream stream = RandomStream{1, 2}.fork(draw);
    auto m = drop_context_tokens(3, 10, mask, 0.3, stream, kept);
    Index counts[3] = {0, 0, 0};
    for (Index b = 0; b < 3; ++b)
      for (Index j = 0; j < 10; ++j) {
        counts[b] += kept[std::size_t(b * 10 + j)];
        if (!mask(b, j)) REQUIRE(kept[std::size_t(b * 10 + j)] == 0);  // padding stays hidden
      }
    CHECK(counts[0] == 7);  // min(ceil(10 · 0.7), max(1, floor(0.7 · 10)))
    CHECK(counts[1] == 5);  // ceil(6 · 0.7)
    CHECK(counts[2] == 0);
    REQUIRE(m.data == kept.data());
    auto unmasked = drop_context_tokens(1, 10, {}, 0.95, stream, kept);
    Index n = 0;
    for (Index j = 0; j < 10; ++j) n += unmasked.data[j];
    CHECK(n == 1);  // at least one token
  }
  REQUIRE_THROWS_WITH(drop_context_tokens(1, 3, {}, 1.0, RandomStream{}, kept), Catch::Contains("got 1"));
}

TEMPLATE_TEST_CASE("padding invariance: tokens at masked source positions change neither the loss nor generation",
                   "[properties][seq2seq]", (Encoder<AbsoluteLearned>), (Encoder<Rotary, RMSNorm>)) {
  using Model = XTransformer<TestType, Decoder<Rotary>, Cpu<double>>;
  Model model(tiny_seq2seq(false));
  model.eval();
  auto src = xtr::testing::random_tokens(2, 7, 11, 4);
  const auto tgt = xtr::testing::random_tokens(2, 8, 13, 5);
  Mask src_mask(2, 7);
  src_mask(0, 6) = src_mask(1, 3) = src_mask(1, 5) = 0;
  const double before = model(src, tgt, src_mask).item();
  const TokenBatch start{{1}, {1}};
  const Sampling greedy{.temperature = 0};
  const auto generated = model.generate(src, start, 6, src_mask, greedy);
  src(0, 6) = 9;
  src(1, 3) = 0;
  src(1, 5) = 2;
  CHECK(model(src, tgt, src_mask).item() == Approx(before).epsilon(1e-12));
  CHECK(model.generate(src, start, 6, src_mask, greedy).data == generated.data);
  // a real position does change the loss
  src(0, 0) = (src(0, 0) + 1) % 11;
  CHECK(model(src, tgt, src_mask).item() != Approx(before).epsilon(1e-9));
}

TEST_CASE("an all-false source mask row: defined, finite, independent of that row's source", "[properties][seq2seq]") {
  using Model = XTransformer<Encoder<>, Decoder<>, Cpu<double>>;
  Model model(tiny_seq2seq(false));
  model.eval();
  auto src = xtr::testing::random_tokens(2, 6, 11, 4);
  const auto tgt = xtr::testing::random_tokens(2, 8, 13, 5);
  Mask src_mask(2, 6);
  for (Index j = 0; j < 6; ++j) src_mask(1, j) = 0;
  const double before = model(src, tgt, src_mask).item();
  REQUIRE(std::isfinite(before));
  for (Index j = 0; j < 6; ++j) src(1, j) = std::int32_t((src(1, j) + 3) % 11);
  CHECK(model(src, tgt, src_mask).item() == Approx(before).epsilon(1e-12));
  model.parameters().zero_grad();
  model.train();
  model(src, tgt, src_mask).backward();
  for (Index i = 0; i < model.parameters().count(); ++i) REQUIRE(std::isfinite(model.parameters().grads()[i]));
}

TEMPLATE_TEST_CASE("cached generation (context keys/values once, self-attention per step) equals recomputation",
                   "[properties][seq2seq][cache]", (Decoder<AbsoluteLearned>), (Decoder<Rotary, RMSNorm, SwiGLU>)) {
  using Model = XTransformer<Encoder<Rotary>, TestType, Cpu<double>>;
  Model model(tiny_seq2seq(false));
  const auto src = xtr::testing::random_tokens(3, 7, 11, 4);
  Mask src_mask(3, 7);
  src_mask(1, 6) = src_mask(2, 2) = 0;
  const TokenBatch start{{1, 4}, {1, 2}, {1, 7}};
  for (const Sampling& base : {Sampling{.temperature = 0}, Sampling{.temperature = 1.0, .top_k = 5, .seed = 11}}) {
    Sampling cached = base, recomputed = base;
    cached.cache_kv = true;
    recomputed.cache_kv = false;
    const auto a = model.generate(src, start, 7, src_mask, cached);
    const auto b = model.generate(src, start, 7, src_mask, recomputed);
    REQUIRE(a.batch == 3);
    REQUIRE(a.length == 7);
    CHECK(a.data == b.data);
  }
  // and the cached logits equal the full forward's at every position
  auto& net = model.decoder.net;
  model.eval();
  auto encoded = model.encoder.embed(src, src_mask);
  std::vector<double> context(encoded.data(), encoded.data() + encoded.size());
  const ContextView<double> ctx{context.data(), 3, 7, 8, src_mask};
  const auto tgt = xtr::testing::random_tokens(3, 9, 13, 8);
  auto full = net.forward(tgt, {}, ctx);
  std::vector<double> expected(full.data(), full.data() + full.size());
  auto cache = net.make_cache(3, ctx);
  for (Index t = 0; t < 9; ++t) {
    TokenBatch step(3, 1);
    for (Index b = 0; b < 3; ++b) step(b, 0) = tgt(b, t);
    auto logits = net.forward_cached(step, cache);
    for (Index b = 0; b < 3; ++b)
      for (Index v = 0; v < 13; ++v)
        REQUIRE(logits(b, v) == Approx(expected[std::size_t((b * 9 + t) * 13 + v)]).margin(1e-10));
  }
}

TEST_CASE("XTransformer copies are independent, and generate() restores the training mode", "[seq2seq]") {
  using Model = XTransformer<Encoder<>, Decoder<>>;
  Model model(tiny_seq2seq(true));
  Model copy = model;
  REQUIRE(copy.parameters().values().data() != model.parameters().values().data());
  const auto src = xtr::testing::random_tokens(2, 5, 11, 4);
  const auto tgt = xtr::testing::random_tokens(2, 7, 11, 5);
  model.eval();
  copy.eval();
  const double a = model(src, tgt).item();
  REQUIRE(copy(src, tgt).item() == a);
  copy.parameters().values().data()[0] += 1.0f;  // the tied embedding, both uses
  CHECK(model(src, tgt).item() == a);
  CHECK(copy(src, tgt).item() != a);
  model.train();
  (void)model.generate(src, TokenBatch{{1}, {1}}, 3);
  CHECK(model.training());
  Model moved = std::move(copy);
  CHECK(std::isfinite(moved(src, tgt).item()));
  CHECK(Model::describe() ==
        "XTransformer<Encoder<AbsoluteLearned, LayerNorm, GELU, MultiHeadAttention>, Decoder<AbsoluteLearned, "
        "LayerNorm, GELU, MultiHeadAttention, CrossAttend>, Cpu<float>>");
}

TEST_CASE("encoder-decoder bad input: errors name the value and the limit", "[errors][seq2seq]") {
  using Model = XTransformer<Encoder<>, Decoder<>>;
  Model model(tiny_seq2seq(false));
  const auto src = xtr::testing::random_tokens(2, 5, 11, 4);
  const auto tgt = xtr::testing::random_tokens(2, 7, 13, 5);
  REQUIRE_THROWS_WITH(model(xtr::testing::random_tokens(2, 8, 11, 1), tgt),
                      Catch::Contains("source length 8 > encoder max_seq_len 7"));
  REQUIRE_THROWS_WITH(model(src, xtr::testing::random_tokens(2, 11, 13, 1)),
                      Catch::Contains("target length 11") && Catch::Contains("decoder max_seq_len 9"));
  REQUIRE_THROWS_WITH(model(src, xtr::testing::random_tokens(3, 7, 13, 1)),
                      Catch::Contains("tgt batch 3 does not match src batch 2"));
  REQUIRE_THROWS_WITH(model(src, tgt, Mask(2, 6)), Catch::Contains("src_mask shape (2, 6) does not match src (2, 5)"));
  REQUIRE_THROWS_WITH(model.generate(src, TokenBatch{{1}}, 4),
                      Catch::Contains("start_tokens batch 1 does not match src batch 2"));
  REQUIRE_THROWS_WITH(model(src, xtr::testing::random_tokens(2, 7, 20, 1)), Catch::Contains(">= num_tokens 13"));
  auto config = tiny_seq2seq(true);
  config.decoder.num_tokens = 12;
  REQUIRE_THROWS_WITH(Model(config), Catch::Contains("encoder.num_tokens 11 != decoder.num_tokens 12"));
  config = tiny_seq2seq(false);
  config.encoder.layers.dim = 16;
  REQUIRE_THROWS_WITH(Model(config), Catch::Contains("encoder.layers.dim 16 differs from dim 8"));
  config = tiny_seq2seq(false);
  config.cross_attn_tokens_dropout = 1.5;
  REQUIRE_THROWS_WITH(Model(config), Catch::Contains("cross_attn_tokens_dropout must be in [0, 1), got 1.5"));

  // a cross-attending stack without or with a wrong context
  TransformerWrapper<Decoder<CrossAttend>> net(tiny_stack(6));
  std::vector<float> context(2 * 3 * 6, 0.5f);
  const auto tokens = xtr::testing::random_tokens(2, 4, 11, 1);
  REQUIRE_THROWS_WITH(net.forward(tokens, {}, {}), Catch::Contains("pass a context"));
  REQUIRE_THROWS_WITH(net.forward(tokens, {}, {context.data(), 2, 3, 8}),
                      Catch::Contains("context width 8 does not match dim_context 6"));
  REQUIRE_THROWS_WITH(net.forward(tokens, {}, {context.data(), 1, 3, 6}),
                      Catch::Contains("context batch 1 does not match the token batch 2"));
  Mask wrong(2, 4);
  REQUIRE_THROWS_WITH(net.forward(tokens, {}, {context.data(), 2, 3, 6, wrong}),
                      Catch::Contains("context mask shape (2, 4) does not match the context (2, 3)"));
  AutoregressiveWrapper ar(std::move(net));
  REQUIRE_THROWS_WITH(ar(xtr::testing::random_tokens(2, 4, 11, 1)), Catch::Contains("pass the context"));
  using Plain = TransformerWrapper<Decoder<>>;
  AutoregressiveWrapper plain{Plain(tiny_stack())};
  REQUIRE_THROWS_WITH(plain(xtr::testing::random_tokens(2, 4, 11, 1), {}, {context.data(), 2, 3, 6}),
                      Catch::Contains("does not cross-attend"));
}

}  // namespace test_encoder_decoder
