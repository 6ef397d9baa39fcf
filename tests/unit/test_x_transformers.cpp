// x-transformers interop: run-time descriptions select the compiled model type, fixtures load through it and give
// x-transformers' numbers, exports are byte-identical to what was imported, and unsupported descriptions are errors
// naming the keyword or value.
#include <catch2/catch.hpp>

#include <cmath>
#include <string>

#include "fixture_io.hpp"
#include "xtr/io/x_transformers.hpp"
#include "xtr/xtr.hpp"


namespace test_x_transformers {  // this file's names (the test executable may compile the files as one unit)

using namespace xtr;
namespace xt = xtr::x_transformers;
using Catch::Contains;

namespace {

// The fixtures' three types and one more: enough to exercise the dispatch without compiling all 18 here
// (xt_eval builds every description as the run-time type x_transformers::AnyDecoder).
using TestSet = xt::StackSet<Decoder<Rotary, LayerNorm, GELU>, Decoder<AbsoluteLearned, RMSNorm, SwiGLU>,
                             Decoder<Rotary, LayerNorm, GEGLU>, Decoder<NoPosition, LayerNorm, GELU>,
                             Decoder<AbsoluteLearned, LayerNorm, GEGLU>>;

using xtr::testing::description_of;
using xtr::testing::model_tensors;

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

  // the release decides how gains, biases and rotary pairs are stored
  auto release = [&](const std::string& version, bool rms = false, bool rotary = true) {
    return parse(R"({"num_tokens": 5, "max_seq_len": 4, "x_transformers_version": ")" + version +
                 R"(", "attn_layers": {"type": "Decoder", "dim": 8, "depth": 1, "use_rmsnorm": )" +
                 (rms ? "true" : "false") + R"(, "rotary_pos_emb": )" + (rotary ? "true" : "false") + "}}");
  };
  struct Expected {
    std::string version;
    bool rms, unit_offset, norm_bias, logits_bias, torch_names, half;
  };
  for (const auto& e : {Expected{"1.20.0", false, false, true, true, true, true},
                        Expected{"1.26.6", true, false, false, true, false, true},
                        Expected{"1.27.0", false, false, true, false, false, true},
                        Expected{"1.27.1", false, false, false, false, true, true},
                        Expected{"1.30.1", false, false, false, false, true, false},
                        Expected{"1.31.0", false, false, false, false, false, false},
                        Expected{"1.31.3", false, true, false, false, false, false},
                        Expected{"2.31.10", true, true, false, false, false, false}}) {
    INFO(e.version << (e.rms ? " RMSNorm" : " LayerNorm"));
    const auto r = release(e.version, e.rms);
    CHECK(r.config.layers.norm_unit_offset == e.unit_offset);
    CHECK(r.config.layers.norm_bias == e.norm_bias);
    CHECK(r.config.logits_bias == e.logits_bias);
    CHECK(r.conventions.layernorm_torch_names == e.torch_names);
    CHECK(r.conventions.rotary_half == e.half);
  }
  CHECK_FALSE(release("1.29.0", false, false).conventions.rotary_half);  // only rotary models permute
  CHECK_FALSE(parse(R"({"num_tokens": 5, "max_seq_len": 4, "attn_layers": {"type": "Decoder", "dim": 8, "depth": 1,
                        "norm_add_unit_offset": false}})").config.layers.norm_unit_offset);
}

TEST_CASE("keywords that change no number are accepted and change nothing", "[x-transformers]") {
  // attn_flash, attn_onnxable and verbose (AttentionLayers) and XTransformer's return_tgt_loss select an
  // implementation or a print in x-transformers, not a formula: a description with them builds the same model.
  const auto base = xt::parse_description(json::parse(R"({"num_tokens": 50, "max_seq_len": 16, "attn_layers":
      {"type": "Decoder", "dim": 32, "depth": 2, "heads": 4, "attn_dim_head": 8, "rotary_pos_emb": true}})"));
  const auto with = xt::parse_description(json::parse(R"({"num_tokens": 50, "max_seq_len": 16, "attn_layers":
      {"type": "Decoder", "dim": 32, "depth": 2, "heads": 4, "attn_dim_head": 8, "rotary_pos_emb": true,
       "attn_flash": true, "attn_onnxable": true, "verbose": false}})"));
  CHECK(to_json(with.config).dump() == to_json(base.config).dump());
  CHECK(with.position == base.position);
  CHECK(with.norm == base.norm);
  CHECK(with.feedforward == base.feedforward);
  CHECK(with.score_bias == base.score_bias);
  const std::string seq2seq = R"({"dim": 16, "enc_num_tokens": 20, "enc_depth": 1, "enc_heads": 2, "enc_max_seq_len": 8,
      "dec_num_tokens": 20, "dec_depth": 1, "dec_heads": 2, "dec_max_seq_len": 8)";
  const auto plain = xt::parse_xtransformer_description(json::parse(seq2seq + "}"));
  const auto flagged = xt::parse_xtransformer_description(
      json::parse(seq2seq + R"(, "return_tgt_loss": true, "enc_attn_flash": true, "dec_attn_flash": true})"));
  CHECK(to_json(flagged.config).dump() == to_json(plain.config).dump());
  // a keyword that does change numbers is still refused
  REQUIRE_THROWS_WITH(xt::parse_description(json::parse(R"({"num_tokens": 5, "max_seq_len": 4, "attn_layers":
      {"type": "Decoder", "dim": 8, "depth": 1, "attn_talking_heads": true}})")),
                      Catch::Contains("attn_talking_heads"));
}

TEST_CASE("unsupported descriptions and misfit buffers are errors naming what is wrong", "[x-transformers][errors]") {
  auto parse = [](const std::string& text) { return xt::parse_description(json::parse(text)); };
  REQUIRE_THROWS_WITH(xt::parse_xtransformer_description(json::parse(R"({"dim": 8, "ignore_index": 4294967296,
                        "enc_num_tokens": 5, "enc_depth": 1, "enc_max_seq_len": 4, "dec_num_tokens": 5, "dec_depth": 1,
                        "dec_max_seq_len": 4})")),
                      Contains("ignore_index 4294967296 does not fit a 32-bit token id"));
  REQUIRE_THROWS_WITH(xt::parse_xtransformer_description(json::parse(R"({"dim": 8, "pad_value": -2147483649,
                        "enc_num_tokens": 5, "enc_depth": 1, "enc_max_seq_len": 4, "dec_num_tokens": 5, "dec_depth": 1,
                        "dec_max_seq_len": 4})")),
                      Contains("pad_value -2147483649 does not fit a 32-bit token id"));
  REQUIRE_THROWS_WITH(parse(R"({"num_tokens": 5, "max_seq_len": 4, "attn_layers": {"type": "Decoder", "dim": 8,
                                "depth": 1, "qk_norm": true, "residual_attn": true}})"),
                      Contains("attn_layers keywords not supported by xtr: qk_norm, residual_attn"));
  REQUIRE_THROWS_WITH(parse(R"({"num_tokens": 5, "max_seq_len": 4, "emb_frac_gradient": 0.5,
                                "attn_layers": {"type": "Decoder", "dim": 8, "depth": 1}})"),
                      Contains("TransformerWrapper keywords not supported by xtr: emb_frac_gradient"));
  REQUIRE_THROWS_WITH(parse(R"({"num_tokens": 5, "max_seq_len": 4, "x_transformers_version": "1.19.4",
                                "attn_layers": {"type": "Decoder", "dim": 8, "depth": 1}})"),
                      Contains("x_transformers_version 1.19.4: releases before 1.20.0 are not supported"));
  REQUIRE_THROWS_WITH(parse(R"({"num_tokens": 5, "max_seq_len": 4, "x_transformers_version": "1.30.0",
                                "attn_layers": {"type": "Decoder", "dim": 8, "depth": 1,
                                "norm_add_unit_offset": true}})"),
                      Contains("x_transformers_version 1.30.0 has no norm_add_unit_offset keyword"));
  REQUIRE_THROWS_WITH(parse(R"({"num_tokens": 5, "max_seq_len": 4, "x_transformers_version": "1.31.2",
                                "attn_layers": {"type": "Decoder", "dim": 8, "depth": 1}})"),
                      Contains("1.31.2 cannot build these models"));
  REQUIRE_THROWS_WITH(parse(R"({"num_tokens": 5, "max_seq_len": 4, "x_transformers_version": "two",
                                "attn_layers": {"type": "Decoder", "dim": 8, "depth": 1}})"),
                      Contains("x_transformers_version 'two' is not MAJOR.MINOR.PATCH"));
  REQUIRE_THROWS_WITH(parse(R"({"num_tokens": 5, "max_seq_len": 4, "attn_layers": {"type": "Decoder", "dim": 8,
                                "depth": 1, "ff_glu": true, "ff_relu_squared": true}})"),
                      Contains("ff_glu=True with ff_relu_squared=True (a gated ReLU²) is not supported"));
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

TEST_CASE("checkpoints of x-transformers 1.26 to 1.31.1 load with their release layout", "[x-transformers]") {
  // nn.LayerNorm weight + bias and a to_logits bias (1.26.6), gamma + a persistent beta (1.27.0), rotary pairs
  // (i, i + r/2) (before 1.30.1), bias-less nn.LayerNorm weight (1.29.0, 1.30.23), gains stored as is (all of them)
  for (const std::string name : {"legacy_1.26.6_rotary_layernorm", "legacy_1.26.6_absolute_rmsnorm_swiglu",
                                 "legacy_1.27.0_rotary_layernorm", "legacy_1.29.0_rotary_layernorm",
                                 "legacy_1.30.23_rotary_layernorm",
                                 "legacy_1.30.23_absolute_rmsnorm_swiglu", "legacy_1.31.1_absolute_layernorm_geglu"}) {
    INFO(name);
    const auto file = safetensors::read(xtr::testing::fixture_path(name));
    const auto description = xt::parse_description(description_of(file));
    REQUIRE_FALSE(description.config.layers.norm_unit_offset);
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
          TokenBatch inputs(shape[0], shape[1] - 1), all(shape[0], shape[1]);
          std::copy(ids.begin(), ids.end(), all.data.begin());
          for (Index b = 0; b < shape[0]; ++b)
            for (Index t = 0; t + 1 < shape[1]; ++t) inputs(b, t) = std::int32_t(ids[b * shape[1] + t]);
          const auto expected = safetensors::to_vector<float>(file.at("fixture.logits"));
          auto logits = net.forward(inputs);
          REQUIRE(Index(expected.size()) == logits.size());
          double worst = 0;
          for (Index i = 0; i < logits.size(); ++i)
            worst = std::max(worst, std::abs(double(logits.data()[i]) - expected[i]) / std::max(1.0, std::abs(double(expected[i]))));
          REQUIRE(worst <= 1e-4);
          // exported in the release's layout again: the same names and bytes
          const auto exported = xt::export_state_dict(net, &weights, description.conventions);
          REQUIRE(exported.tensors.size() == weights.tensors.size());
          for (const auto& t : exported.tensors) {
            INFO(t.name);
            REQUIRE(t.bytes == weights.at(t.name).bytes);
          }
          AutoregressiveWrapper<Net> model(std::move(net));
          const double expected_loss = safetensors::to_vector<double>(file.at("fixture.loss"))[0];
          REQUIRE(std::abs(model(all).item() - expected_loss) <= 1e-5 * std::abs(expected_loss));
          const auto prompt_ids = safetensors::to_vector<std::int64_t>(file.at("fixture.prompt"));
          const auto greedy_ids = safetensors::to_vector<std::int64_t>(file.at("fixture.greedy"));
          TokenBatch prompt(1, Index(prompt_ids.size()));
          std::copy(prompt_ids.begin(), prompt_ids.end(), prompt.data.begin());
          const auto greedy = model.generate(prompt, Index(greedy_ids.size()), {.temperature = 0});
          REQUIRE(std::equal(greedy_ids.begin(), greedy_ids.end(), greedy.data.begin()));
          const auto recomputed = model.generate(prompt, Index(greedy_ids.size()), {.temperature = 0, .cache_kv = false});
          REQUIRE(std::equal(greedy_ids.begin(), greedy_ids.end(), recomputed.data.begin()));
        },
        TestSet{});
    REQUIRE(ran);
  }
}

TEST_CASE("legacy checkpoints with ALiBi (1.29.0) and saved with torch < 2.1 (1.30.23, gamma + beta) load", "[x-transformers]") {
  // 1.27.1 – 1.30.x under torch < 2.1 keep x-transformers' own LayerNorm (gamma, a beta buffer): match_layout reads
  // the file's names; 1.29.0's ALiBi is today's (slopes of alibi_num_heads heads, the first heads)
  for (const std::string name : {"legacy_1.29.0_alibi_layernorm", "legacy_1.30.23_torch2.0.1_rotary_layernorm"}) {
    INFO(name);
    const auto file = safetensors::read(xtr::testing::fixture_path(name));
    auto description = xt::parse_description(description_of(file));
    const auto weights = model_tensors(file);
    xt::match_layout(description, weights);
    xt::with_model(description, [&](auto& net) {
      using Net = std::decay_t<decltype(net)>;
      if constexpr (Net::layers_type::causal) {
        xt::load(net, weights, name, description.conventions);
        const auto exported = xt::export_state_dict(net, &weights, description.conventions);
        REQUIRE(exported.tensors.size() == weights.tensors.size());
        for (const auto& t : exported.tensors) {
          INFO(t.name);
          REQUIRE(t.bytes == weights.at(t.name).bytes);
        }
        const auto& shape = file.at("fixture.tokens").shape;
        const auto ids = safetensors::to_vector<std::int64_t>(file.at("fixture.tokens"));
        TokenBatch all(shape[0], shape[1]);
        std::copy(ids.begin(), ids.end(), all.data.begin());
        AutoregressiveWrapper<Net> model(std::move(net));
        const double expected_loss = safetensors::to_vector<double>(file.at("fixture.loss"))[0];
        REQUIRE(std::abs(model(all).item() - expected_loss) <= 1e-5 * std::abs(expected_loss));
        const auto prompt_ids = safetensors::to_vector<std::int64_t>(file.at("fixture.prompt"));
        const auto greedy_ids = safetensors::to_vector<std::int64_t>(file.at("fixture.greedy"));
        TokenBatch prompt(1, Index(prompt_ids.size()));
        std::copy(prompt_ids.begin(), prompt_ids.end(), prompt.data.begin());
        for (const bool cache : {true, false}) {
          const auto greedy = model.generate(prompt, Index(greedy_ids.size()), {.temperature = 0, .cache_kv = cache});
          REQUIRE(std::equal(greedy_ids.begin(), greedy_ids.end(), greedy.data.begin()));
        }
      }
    });
  }
}

TEST_CASE("a checkpoint described with the wrong release is an error listing the misfit names", "[x-transformers][errors]") {
  // a 1.26.6 file (nn.LayerNorm weight + bias, to_logits.bias) read as 1.30.0 (bias-less weight): never loaded
  const auto file = safetensors::read(xtr::testing::fixture_path("legacy_1.26.6_rotary_layernorm"));
  auto root = description_of(file);
  root.set("x_transformers_version", "1.30.0");
  const auto description = xt::parse_description(root);
  xt::with_model(
      description,
      [&](auto& net) {
        REQUIRE_THROWS_WITH(xt::load(net, model_tensors(file), "legacy file", description.conventions),
                            Contains("legacy file") && Contains("unexpected") &&
                                Contains("attn_layers.final_norm.bias") && Contains("to_logits.bias"));
      },
      TestSet{});
  // and read as the current release: every norm name misses
  root.set("x_transformers_version", std::string(xt::current_version));
  const auto current = xt::parse_description(root);
  xt::with_model(
      current,
      [&](auto& net) {
        REQUIRE_THROWS_WITH(xt::load(net, model_tensors(file), "legacy file", current.conventions),
                            Contains("missing") && Contains("attn_layers.final_norm.gamma") &&
                                Contains("attn_layers.layers.0.0.0.weight"));
      },
      TestSet{});
}

}  // namespace test_x_transformers
