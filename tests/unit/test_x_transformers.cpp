// x-transformers interop: run-time descriptions select the compiled model type, fixtures load through it and give
// x-transformers' numbers, exports are byte-identical to what was imported, and unsupported descriptions are errors
// naming the keyword or value.
#include <catch2/catch.hpp>

#include <cmath>
#include <string>

#include "fixture_io.hpp"
#include "xtr/io/x_transformers.hpp"
#include "xtr/xtr.hpp"


using namespace xtr;
namespace xt = xtr::x_transformers;
using Catch::Contains;

namespace {

// The fixtures' three types and one more: enough to exercise the dispatch without compiling all 18 here
// (examples/xt_eval instantiates the whole xt::Decoders set).
using TestSet = xt::StackSet<Decoder<Rotary, LayerNorm, GELU>, Decoder<AbsoluteLearned, RMSNorm, SwiGLU>,
                             Decoder<Rotary, LayerNorm, GEGLU>, Decoder<NoPosition, LayerNorm, GELU>,
                             Decoder<AbsoluteLearned, LayerNorm, GEGLU>>;

json::Value description_of(const safetensors::File& file) {
  auto root = json::parse(file.metadata.at("config"));
  root.set("x_transformers_version", file.metadata.at("x_transformers_version"));
  return root;
}

/// The model's tensors of a fixture file: without the fixture's own inputs, outputs and gradients.
safetensors::File model_tensors(const safetensors::File& file) {
  safetensors::File weights;
  for (const auto& t : file.tensors)
    if (!t.name.starts_with("fixture.") && !t.name.starts_with("grad.")) weights.tensors.push_back(t);
  return weights;
}

}  // namespace

TEST_CASE("fixtures load through their JSON description and export byte for byte", "[x-transformers]") {
  for (const std::string name : {"decoder_rotary_layernorm", "decoder_absolute_rmsnorm_swiglu", "decoder_rotary_gqa_geglu"}) {
    INFO(name);
    const auto file = safetensors::read(xtr::testing::fixture_path(name));
    const auto description = xt::parse_description(description_of(file));
    bool ran = false;
    xt::with_model(
        description,
        [&](auto& net) {
          ran = true;
          using Net = std::decay_t<decltype(net)>;
          xt::load(net, model_tensors(file));
          net.eval();
          const auto tokens = safetensors::to_vector<std::int64_t>(file.at("fixture.tokens"));
          const auto& shape = file.at("fixture.tokens").shape;
          TokenBatch x(shape[0], shape[1]);
          std::copy(tokens.begin(), tokens.end(), x.data.begin());
          AutoregressiveWrapper<Net> model(std::move(net));
          const double expected = safetensors::to_vector<double>(file.at("fixture.loss"))[0];
          REQUIRE(std::abs(model(x).item() - expected) <= 1e-5 * std::abs(expected));

          const auto exported = xt::export_state_dict(model.net, &file);
          for (const auto& t : exported.tensors) {
            INFO(t.name);
            const auto& original = file.at(t.name);
            REQUIRE(t.dtype == original.dtype);
            REQUIRE(t.shape == original.shape);
            REQUIRE(t.bytes == original.bytes);
          }
          REQUIRE(exported.tensors.size() == model_tensors(file).tensors.size());  // all of them, nothing else
        },
        TestSet{});
    REQUIRE(ran);
  }
}

TEST_CASE("descriptions map keywords to policies", "[x-transformers]") {
  auto parse = [](const std::string& text) { return xt::parse_description(json::parse(text)); };
  const auto d = parse(R"({"num_tokens": 50, "max_seq_len": 16, "attn_layers": {"type": "Decoder", "dim": 32,
                          "depth": 2, "heads": 4, "attn_dim_head": 8, "attn_kv_heads": 2, "use_rmsnorm": true,
                          "ff_glu": true, "ff_swish": true, "rotary_pos_emb": true}})");
  REQUIRE(d.position == "Rotary");
  REQUIRE(d.norm == "RMSNorm");
  REQUIRE(d.feedforward == "SwiGLU");
  REQUIRE(d.config.layers.kv_heads == 2);
  REQUIRE(d.config.layers.dim_head == 8);
  REQUIRE(d.version == xt::current_version);
  const auto plain = parse(R"({"num_tokens": 50, "max_seq_len": 16, "use_abs_pos_emb": false,
                              "attn_layers": {"type": "Decoder", "dim": 32, "depth": 1}})");
  REQUIRE(plain.position == "NoPosition");
  REQUIRE(plain.config.layers.heads == 8);  // x-transformers' default
  REQUIRE(parse(R"({"num_tokens": 5, "max_seq_len": 4, "attn_layers": {"type": "Decoder", "dim": 8, "depth": 1,
                    "attn_one_kv_head": true}})").config.layers.kv_heads == 1);
}

TEST_CASE("unsupported descriptions and misfit buffers are errors naming what is wrong", "[x-transformers][errors]") {
  auto parse = [](const std::string& text) { return xt::parse_description(json::parse(text)); };
  REQUIRE_THROWS_WITH(parse(R"({"num_tokens": 5, "max_seq_len": 4, "attn_layers": {"type": "Decoder", "dim": 8,
                                "depth": 1, "alibi_pos_bias": true, "qk_norm": true}})"),
                      Contains("attn_layers keywords not supported by xtr: alibi_pos_bias, qk_norm"));
  REQUIRE_THROWS_WITH(parse(R"({"num_tokens": 5, "max_seq_len": 4, "tie_embedding": true,
                                "attn_layers": {"type": "Decoder", "dim": 8, "depth": 1}})"),
                      Contains("TransformerWrapper keywords not supported by xtr: tie_embedding"));
  REQUIRE_THROWS_WITH(parse(R"({"num_tokens": 5, "max_seq_len": 4, "x_transformers_version": "1.26.0",
                                "attn_layers": {"type": "Decoder", "dim": 8, "depth": 1}})"),
                      Contains("x_transformers_version 1.26.0: releases before 1.27.1"));
  REQUIRE_THROWS_WITH(parse(R"({"num_tokens": 5, "max_seq_len": 4, "x_transformers_version": "1.31.2",
                                "attn_layers": {"type": "Decoder", "dim": 8, "depth": 1}})"),
                      Contains("1.31.2 cannot build these models"));
  REQUIRE_THROWS_WITH(parse(R"({"num_tokens": 5, "max_seq_len": 4, "x_transformers_version": "1.29.0",
                                "attn_layers": {"type": "Decoder", "dim": 8, "depth": 1, "rotary_pos_emb": true}})"),
                      Contains("rotary models before 1.30.1 rotate halves"));
  REQUIRE_THROWS_WITH(parse(R"({"num_tokens": 5, "max_seq_len": 4, "x_transformers_version": "two",
                                "attn_layers": {"type": "Decoder", "dim": 8, "depth": 1}})"),
                      Contains("x_transformers_version 'two' is not MAJOR.MINOR.PATCH"));
  REQUIRE_THROWS_WITH(parse(R"({"num_tokens": 5, "max_seq_len": 4, "attn_layers": {"type": "Decoder", "dim": 8,
                                "depth": 1, "ff_swish": true}})"),
                      Contains("ff_swish=True without ff_glu=True"));
  REQUIRE_THROWS_WITH(parse(R"({"num_tokens": 5, "max_seq_len": 4, "attn_layers": {"type": "CrossAttender",
                                "dim": 8, "depth": 1}})"),
                      Contains("attn_layers type 'CrossAttender' is not supported"));
  const auto encoder = parse(R"({"num_tokens": 5, "max_seq_len": 4, "attn_layers": {"type": "Encoder", "dim": 8,
                                 "depth": 1}})");
  REQUIRE_THROWS_WITH(xt::with_model(encoder, [](auto&) {}, TestSet{}),
                      Contains("no compiled model type for Encoder<AbsoluteLearned, LayerNorm, GELU>"));

  // a rotary buffer that does not match θ = 10000 (e.g. a rescaled base) is refused, not ignored
  TransformerWrapper<Decoder<Rotary>> net({.num_tokens = 5, .max_seq_len = 4,
                                           .layers = {.dim = 16, .depth = 1, .heads = 2, .dim_head = 8}});
  auto file = xt::export_state_dict(net);
  xt::load(net, file);  // what we export loads back
  auto& buffer = const_cast<safetensors::TensorRecord&>(file.at(std::string(xt::rotary_buffer)));
  auto values = safetensors::to_vector<float>(buffer);
  values[1] *= 1.01f;
  buffer = safetensors::make_record<float>(buffer.name, buffer.shape, std::span<const float>(values));
  REQUIRE_THROWS_WITH(xt::load(net, file), Contains("inv_freq[1]") && Contains("rotary base rescaling"));
  TransformerWrapper<Decoder<AbsoluteLearned>> absolute({.num_tokens = 5, .max_seq_len = 4,
                                                         .layers = {.dim = 16, .depth = 1, .heads = 2, .dim_head = 8}});
  auto with_buffer = xt::export_state_dict(absolute);
  with_buffer.tensors.push_back(buffer);
  REQUIRE_THROWS_WITH(xt::load(absolute, with_buffer), Contains("but the model has no Rotary"));
}

TEST_CASE("checkpoints of x-transformers before 1.27.1 are refused by version, not guessed", "[x-transformers][errors]") {
  for (const std::string name : {"legacy_1.26.6_rotary_layernorm", "legacy_1.26.6_absolute_rmsnorm_swiglu",
                                 "legacy_1.27.0_rotary_layernorm"}) {
    INFO(name);
    const auto file = safetensors::read(xtr::testing::fixture_path(name));
    REQUIRE_THROWS_WITH(xt::parse_description(description_of(file)),
                        Contains("x_transformers_version " + file.metadata.at("x_transformers_version")) &&
                            Contains("releases before 1.27.1"));
  }
}

TEST_CASE("checkpoints of x-transformers 1.27.1 to 1.31.1 load with their gain conventions", "[x-transformers]") {
  for (const std::string name : {"legacy_1.30.23_rotary_layernorm", "legacy_1.30.23_absolute_rmsnorm_swiglu",
                                 "legacy_1.31.1_absolute_layernorm_geglu"}) {
    INFO(name);
    const auto file = safetensors::read(xtr::testing::fixture_path(name));
    const auto description = xt::parse_description(description_of(file));
    REQUIRE_FALSE(description.conventions.unit_offset_gains);
    const auto weights = model_tensors(file);
    bool ran = false;
    xt::with_model(
        description,
        [&](auto& net) {
          ran = true;
          using Net = std::decay_t<decltype(net)>;
          xt::load(net, weights, name, description.conventions);
          net.eval();
          const auto& shape = file.at("fixture.tokens").shape;
          const auto ids = safetensors::to_vector<std::int64_t>(file.at("fixture.tokens"));
          TokenBatch inputs(shape[0], shape[1] - 1);
          for (Index b = 0; b < shape[0]; ++b)
            for (Index t = 0; t + 1 < shape[1]; ++t) inputs(b, t) = std::int32_t(ids[b * shape[1] + t]);
          const auto expected = safetensors::to_vector<float>(file.at("fixture.logits"));
          auto logits = net.forward(inputs);
          REQUIRE(Index(expected.size()) == logits.size());
          double worst = 0;
          for (Index i = 0; i < logits.size(); ++i)
            worst = std::max(worst, std::abs(double(logits.data()[i]) - expected[i]) / std::max(1.0, std::abs(double(expected[i]))));
          REQUIRE(worst <= 1e-4);
          // exported in the release's layout again: same names, gains within float rounding of the originals
          const auto exported = xt::export_state_dict(net, &weights, description.conventions);
          REQUIRE(exported.tensors.size() == weights.tensors.size());
          for (const auto& t : exported.tensors) {
            INFO(t.name);
            const auto a = safetensors::to_vector<double>(t), b = safetensors::to_vector<double>(weights.at(t.name));
            for (std::size_t i = 0; i < a.size(); ++i) REQUIRE(std::abs(a[i] - b[i]) <= 1e-6 * std::max(1.0, std::abs(b[i])));
          }
          AutoregressiveWrapper<Net> model(std::move(net));
          const auto prompt_ids = safetensors::to_vector<std::int64_t>(file.at("fixture.prompt"));
          const auto greedy_ids = safetensors::to_vector<std::int64_t>(file.at("fixture.greedy"));
          TokenBatch prompt(1, Index(prompt_ids.size()));
          std::copy(prompt_ids.begin(), prompt_ids.end(), prompt.data.begin());
          const auto greedy = model.generate(prompt, Index(greedy_ids.size()), {.temperature = 0});
          REQUIRE(std::equal(greedy_ids.begin(), greedy_ids.end(), greedy.data.begin()));
        },
        TestSet{});
    REQUIRE(ran);
  }
}
