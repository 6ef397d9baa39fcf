// Golden parity of XTransformer with x-transformers 2.31.10 (tests/fixtures/README.md, "XTransformer fixtures"):
// each xtransformer_* fixture holds a model trained on the variable-length copy task under x-transformers' names
// (`encoder.…`, `decoder.net.…`; the tied token embedding under both names), a source batch with padding and its
// mask, a target batch with ignore_index padding, and what the Python library computed: the encoder's output, the
// decoder's logits, the loss, every parameter gradient, and 24 greedy tokens with and without the KV cache.
// The model is built from the fixture's `config` metadata by x_transformers::parse_xtransformer_description, loaded
// with x_transformers::load, and compared in float and double with the decoder fixtures' tolerance table and metrics
// (test_golden_parity.cpp): elementwise |a − b| / max(|b|, 1) for encoder output and logits, and for the loss (the
// copy fixture's loss is 0.02, a mean of terms whose fp32 rounding is set by logit-sized numbers), per tensor
// max |a − b| / max |b| for gradients, token for token for greedy. Measured (float / double): encoder output
// 8.9e-7 / 5.4e-7, logits 5.4e-6 / 2.9e-6, loss 2.3e-6 / 1.2e-6 (relative).
#include <catch2/catch.hpp>

#include <cmath>
#include <string>
#include <type_traits>
#include <vector>

#include "fixture_io.hpp"
#include "xtr/xtr.hpp"


namespace test_golden_seq2seq {  // this file's names (the test executable may compile the files as one unit)

using namespace xtr;
namespace st = xtr::safetensors;
using xtr::testing::fixture_path;
using xtr::testing::mask_of;
using xtr::testing::tokens_of;

namespace {

template <class T>
struct Seq2SeqTolerance;
template <>
struct Seq2SeqTolerance<float> {
  static constexpr double values = 1e-4, loss = 1e-5, grad = 1e-4;
};
template <>
struct Seq2SeqTolerance<double> {  // the fixture's own fp32 rounding (README: ≤ 6e-6 logits, ≤ 7.8e-6 gradients)
  static constexpr double values = 2e-5, loss = 1e-6, grad = 2e-5;
};

/// max over elements of |a − b| / max(|b|, 1).
template <class T>
double elementwise_error(const T* ours, const std::vector<double>& expected) {
  double worst = 0;
  for (std::size_t i = 0; i < expected.size(); ++i)
    worst = std::max(worst, std::abs(double(ours[i]) - expected[i]) / std::max(std::abs(expected[i]), 1.0));
  return worst;
}

template <class Model>
void check_seq2seq_fixture(const std::string& name) {
  using T = typename Model::scalar;
  using Tol = Seq2SeqTolerance<T>;
  const std::string path = fixture_path(name);
  INFO("fixture " << path << ", model " << Model::describe());
  const st::File file = st::read(path);
  auto root = json::parse(file.metadata.at("config"));
  root.set("x_transformers_version", file.metadata.at("x_transformers_version"));  // legacy_*: an older layout
  const auto description = x_transformers::parse_xtransformer_description(root);
  REQUIRE(x_transformers::describes<Model>(description));
  Model model(description.config);
  x_transformers::load_xtransformer(model, file, path, {"fixture.", "grad."}, description.conventions());
  model.eval();

  const TokenBatch src = tokens_of(file, "fixture.src"), tgt = tokens_of(file, "fixture.tgt");
  const Mask src_mask = mask_of(file, "fixture.src_mask");
  const Index B = src.batch, S = src.length, D = description.config.dim;
  Index padded = 0;
  for (auto m : src_mask.data) padded += m == 0;
  REQUIRE(padded > 0);  // the fixture exercises the mask

  // encoder output, every position (padded ones too: x-transformers runs the feed-forwards there as well)
  auto encoded = model.encoder.embed(src, src_mask);
  const double encoded_error = elementwise_error(encoded.data(), st::to_vector<double>(file.at("fixture.encoded")));
  INFO("encoder output error " << encoded_error);
  CHECK(encoded_error < Tol::values);

  // decoder logits for tgt[:, :-1] (ignore_index fed as pad_value 0) attending to that output
  std::vector<T> context(encoded.data(), encoded.data() + encoded.size());
  TokenBatch input(B, tgt.length - 1);
  for (Index b = 0; b < B; ++b)
    for (Index t = 0; t + 1 < tgt.length; ++t) input(b, t) = tgt(b, t) == -100 ? 0 : tgt(b, t);
  auto logits = model.decoder.net.forward(input, {}, {context.data(), B, S, D, src_mask});
  const double logits_error = elementwise_error(logits.data(), st::to_vector<double>(file.at("fixture.logits")));
  INFO("logits error " << logits_error);
  CHECK(logits_error < Tol::values);

  // loss and every gradient
  model.parameters().zero_grad();
  auto loss = model(src, tgt, src_mask);
  const double expected_loss = st::to_vector<double>(file.at("fixture.loss")).at(0);
  INFO("loss ours " << loss.item() << ", x-transformers " << expected_loss);
  CHECK(std::abs(loss.item() - expected_loss) / std::max(std::abs(expected_loss), 1.0) < Tol::loss);
  loss.backward();
  double grad_error = 0;
  std::string worst;
  Index compared = 0;
  for (const auto& t : file.tensors) {
    if (!t.name.starts_with("grad.")) continue;
    const std::string param = t.name.substr(5);
    const auto* e = model.parameters().find(param);
    REQUIRE(e != nullptr);
    const auto expected = st::to_vector<double>(t);
    REQUIRE(Index(expected.size()) == e->shape.numel());
    double scale = 0, diff = 0;
    for (std::size_t i = 0; i < expected.size(); ++i) {
      scale = std::max(scale, std::abs(expected[i]));
      diff = std::max(diff, std::abs(double(model.parameters().grads()[e->offset + Index(i)]) - expected[i]));
    }
    const double err = diff / std::max(scale, 1e-30);
    if (err >= grad_error) grad_error = err, worst = param;
    ++compared;
  }
  INFO("worst gradient tensor " << worst << ": " << grad_error);
  if (compared > 0 || !name.starts_with("legacy_"))  // legacy fixtures hold no gradients
    CHECK(compared == Index(model.parameters().entries().size()));
  CHECK(grad_error < Tol::grad);

  // export: every state-dict tensor of the fixture comes back byte for byte (weights after a float round trip are
  // exact; double models round to float on export)
  if constexpr (std::is_same_v<T, float>) {
    const auto exported = x_transformers::export_xtransformer_state_dict(model, &file, description.conventions());
    Index state_tensors = 0;
    for (const auto& t : file.tensors) {
      if (t.name.starts_with("fixture.") || t.name.starts_with("grad.")) continue;
      ++state_tensors;
      const auto* e = exported.find(t.name);
      REQUIRE(e != nullptr);
      CHECK(e->shape == t.shape);
      CHECK(e->bytes == t.bytes);
    }
    CHECK(Index(exported.tensors.size()) == state_tensors);
  }

  // 24 greedy tokens for row 0, with and without the cache
  const auto expected_greedy = tokens_of(file, "fixture.greedy");
  TokenBatch src0(1, S);
  std::copy_n(src.data.begin(), S, src0.data.begin());
  Mask mask0(1, S);
  std::copy_n(src_mask.data.begin(), S, mask0.data.begin());
  for (bool cache : {true, false}) {
    INFO("cache_kv " << cache);
    const auto greedy = model.generate(src0, TokenBatch{{1}}, expected_greedy.length, mask0,
                                       {.temperature = 0, .cache_kv = cache});
    CHECK(greedy.data == expected_greedy.data);
  }
}

}  // namespace

TEMPLATE_TEST_CASE("golden parity: XTransformer with tied embeddings, absolute positions, LayerNorm (copy task)",
                   "[golden][seq2seq]", float, double) {
  check_seq2seq_fixture<XTransformer<Encoder<AbsoluteLearned, LayerNorm, GELU>, Decoder<AbsoluteLearned, LayerNorm, GELU>,
                                     Cpu<TestType>>>("xtransformer_copy_tied");
}

TEMPLATE_TEST_CASE("golden parity: XTransformer with rotary, RMSNorm, GEGLU and grouped-query cross-attention",
                   "[golden][seq2seq]", float, double) {
  check_seq2seq_fixture<XTransformer<Encoder<Rotary, RMSNorm, GELU>, Decoder<Rotary, RMSNorm, GEGLU>, Cpu<TestType>>>(
      "xtransformer_rotary_rmsnorm_gqa");
}

TEST_CASE("golden parity: XTransformer checkpoints of x-transformers 1.26.6 and 1.30.23 (legacy layouts)",
          "[golden][seq2seq][interop]") {
  // 1.26.6: nn.LayerNorm weight + bias, to_logits biases, half-layout rotary (dim 32), an unused encoder.to_logits;
  // 1.30.23: bias-less nn.LayerNorm weight, gains as stored, tied embeddings, an unused encoder.to_logits
  check_seq2seq_fixture<XTransformer<Encoder<Rotary, LayerNorm, GELU>, Decoder<Rotary, LayerNorm, GELU>, Cpu<float>>>(
      "legacy_1.26.6_xtransformer_rotary_layernorm");
  check_seq2seq_fixture<XTransformer<Encoder<AbsoluteLearned, LayerNorm, GELU>,
                                     Decoder<AbsoluteLearned, LayerNorm, GELU>, Cpu<float>>>(
      "legacy_1.30.23_xtransformer_tied_layernorm");
}

TEST_CASE("XTransformer descriptions: keywords map to the parts, unknown ones are errors", "[seq2seq][interop]") {
  const auto d = x_transformers::parse_xtransformer_description(json::parse(
      R"({"dim": 64, "tie_token_emb": true, "enc_num_tokens": 20, "enc_depth": 2, "enc_max_seq_len": 16,
          "enc_rotary_pos_emb": true, "dec_num_tokens": 20, "dec_depth": 3, "dec_heads": 4, "dec_max_seq_len": 33,
          "dec_attn_kv_heads": 2, "dec_ff_glu": true, "cross_attn_tokens_dropout": 0.25, "ignore_index": 0})"));
  CHECK(d.config.dim == 64);
  CHECK(d.config.tie_token_emb);
  CHECK(d.config.ignore_index == 0);
  CHECK(d.config.cross_attn_tokens_dropout == 0.25);
  CHECK(d.config.encoder.max_seq_len == 16);
  CHECK(d.config.encoder.layers.depth == 2);
  CHECK(d.config.decoder.layers.heads == 4);
  CHECK(d.config.decoder.layers.kv_heads == 2);
  CHECK(d.encoder.stack == "Encoder");
  CHECK(d.encoder.position == "Rotary");
  CHECK(d.decoder.position == "AbsoluteLearned");
  CHECK(d.decoder.feedforward == "GEGLU");
  CHECK(x_transformers::describes<XTransformer<Encoder<Rotary>, Decoder<AbsoluteLearned, GEGLU>>>(d));
  CHECK_FALSE(d.config.encoder_to_logits);  // the current layout: no encoder.to_logits
  auto old = json::parse(R"({"dim": 8, "enc_num_tokens": 4, "enc_depth": 1, "enc_max_seq_len": 4,
                             "dec_num_tokens": 4, "dec_depth": 1, "dec_max_seq_len": 4})");
  old.set("x_transformers_version", "1.35.1");
  CHECK(x_transformers::parse_xtransformer_description(old).config.encoder_to_logits);
  old.set("x_transformers_version", "1.35.2");
  CHECK_FALSE(x_transformers::parse_xtransformer_description(old).config.encoder_to_logits);
  CHECK_FALSE(x_transformers::describes<XTransformer<Encoder<Rotary>, Decoder<Rotary, GEGLU>>>(d));
  REQUIRE_THROWS_WITH(x_transformers::parse_xtransformer_description(json::parse(
                          R"({"dim": 8, "enc_num_tokens": 4, "enc_depth": 1, "enc_max_seq_len": 4, "dec_num_tokens": 4,
                              "dec_depth": 1, "dec_max_seq_len": 4, "enc_residual_attn": true})")),
                      Catch::Contains("attn_layers keywords not supported by xtr: residual_attn"));
  REQUIRE_THROWS_WITH(x_transformers::parse_xtransformer_description(json::parse(
                          R"({"dim": 8, "enc_num_tokens": 4, "enc_depth": 1, "enc_max_seq_len": 4, "dec_num_tokens": 4,
                              "dec_depth": 1, "dec_max_seq_len": 4, "shared_stack": true})")),
                      Catch::Contains("XTransformer keywords not supported by xtr: shared_stack"));
}

}  // namespace test_golden_seq2seq
