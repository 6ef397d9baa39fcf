// Every x-transformers option, on small random models built from x-transformers keywords (the JSON description path):
//   - finite-difference gradients of every parameter (Cpu<double>, central differences, sampled entries);
//   - KV-cached decoding equals recomputing the whole prefix, position by position, up to max_seq_len;
//   - the run-time model type (AnyDecoder) and the static type with the same policies give the same logits.
// Golden parity with x-transformers itself is in test_golden_options.cpp.
#include <catch2/catch.hpp>

#include <cmath>
#include <string>
#include <vector>

#include "testing.hpp"
#include "xtr/xtr.hpp"

namespace test_options {  // this file's names (the test executable may compile the files as one unit)

using namespace xtr;
namespace xt = xtr::x_transformers;
using xtr::testing::check_gradient;

namespace {

struct OptionCase {
  std::string name;
  std::string wrapper;  // extra TransformerWrapper keywords ("" or `"key": value, ...`)
  std::string layers;   // extra attn_layers keywords
};

const std::vector<OptionCase>& cases() {
  static const std::vector<OptionCase> all = {
      {"alibi", "", R"("alibi_pos_bias": true, "alibi_num_heads": 1)"},
      {"alibi rotary", "", R"("alibi_pos_bias": true, "rotary_pos_emb": true)"},
      {"rel_pos_bias", "", R"("rel_pos_bias": true, "rel_pos_num_buckets": 4, "rel_pos_max_distance": 8)"},
      {"dynamic_pos_bias", "", R"("dynamic_pos_bias": true)"},
      {"dynamic_pos_bias norm log", "",
       R"("dynamic_pos_bias": true, "dynamic_pos_bias_norm": true, "dynamic_pos_bias_log_distance": true,
          "dynamic_pos_bias_mlp_depth": 3)"},
      {"rotary_xpos", "", R"("rotary_pos_emb": true, "rotary_xpos": true, "rotary_xpos_scale_base": 16)"},
      {"rotary_interpolation_factor", "", R"("rotary_pos_emb": true, "rotary_interpolation_factor": 2.5)"},
      {"rotary_base_rescale_factor", "", R"("rotary_pos_emb": true, "rotary_base_rescale_factor": 3.0)"},
      {"use_scalenorm", "", R"("use_scalenorm": true)"},
      {"use_simple_rmsnorm", "", R"("use_simple_rmsnorm": true)"},
      {"pre_norm false", "", R"("pre_norm": false)"},
      {"sandwich_norm", "", R"("sandwich_norm": true)"},
      {"attn_qk_norm", "", R"("attn_qk_norm": true, "attn_qk_norm_scale": 4)"},
      {"attn_qk_norm dim scale groups", "", R"("attn_qk_norm": true, "attn_qk_norm_dim_scale": true,
                                              "attn_qk_norm_groups": 2, "attn_dim_head": 8)"},
      {"attn_num_mem_kv", "", R"("attn_num_mem_kv": 3)"},
      {"attn_num_mem_kv qk_norm", "", R"("attn_num_mem_kv": 2, "attn_qk_norm": true)"},
      {"attn_gate_values", "", R"("attn_gate_values": true)"},
      {"attn_head_scale", "", R"("attn_head_scale": true)"},
      {"add_value_residual", "", R"("add_value_residual": true, "depth": 3)"},
      {"add_value_residual fixed gqa", "",
       R"("add_value_residual": true, "learned_value_residual_mix": false, "heads": 4, "attn_kv_heads": 2)"},
      {"ff_relu_squared", "", R"("ff_relu_squared": true)"},
      {"ff_swish", "", R"("ff_swish": true)"},
      {"ff_no_bias", "", R"("ff_no_bias": true)"},
      {"ff_no_bias glu", "", R"("ff_no_bias": true, "ff_glu": true)"},
      {"tie_embedding", R"("tie_embedding": true)", ""},
      {"post_emb_norm", R"("post_emb_norm": true)", ""},
      {"l2norm_embed", R"("l2norm_embed": true)", R"("rotary_pos_emb": false)"},
      {"num_memory_tokens", R"("num_memory_tokens": 2)", ""},
      {"num_memory_tokens rotary alibi", R"("num_memory_tokens": 3)", R"("rotary_pos_emb": true, "alibi_pos_bias": true)"},
      {"everything", R"("post_emb_norm": true, "tie_embedding": true, "num_memory_tokens": 1)",
       R"("rotary_pos_emb": true, "rotary_xpos": true, "use_rmsnorm": true, "ff_glu": true, "ff_swish": true,
          "attn_qk_norm": true, "attn_gate_values": true, "attn_head_scale": true, "sandwich_norm": true,
          "ff_no_bias": true, "heads": 4, "attn_kv_heads": 2, "alibi_pos_bias": true, "add_value_residual": true,
          "learned_value_residual_mix": false)"},
  };
  return all;
}

/// The description of a small decoder with the option's keywords (which override the base sizes).
xt::ModelDescription description(const OptionCase& c, Index max_seq_len = 12) {
  auto layers = json::parse(R"({"type": "Decoder", "dim": 16, "depth": 2, "heads": 2, "attn_dim_head": 8})");
  const auto layer_keywords = json::parse("{" + c.layers + "}"), wrapper_keywords = json::parse("{" + c.wrapper + "}");
  for (const auto& [key, value] : layer_keywords.as_object()) layers.set(key, value);
  auto root = json::parse(R"({"num_tokens": 11})");
  root.set("max_seq_len", max_seq_len);
  for (const auto& [key, value] : wrapper_keywords.as_object()) root.set(key, value);
  root.set("attn_layers", layers);
  return xt::parse_description(root);
}

/// Every parameter moved off its initial value (zero-initialised gates, unit head scales, ...).
template <class Store>
void perturb(Store& params, std::uint64_t seed) {
  const auto noise = xtr::testing::random_values(params.count(), seed, 0.3);
  for (Index i = 0; i < params.count(); ++i) params.values()[i] += noise[std::size_t(i)];
}

}  // namespace

TEST_CASE("every option: finite-difference gradients of every parameter", "[options][gradient]") {
  xtr::testing::SerialOpenMP serial;
  for (const auto& c : cases()) {
    SECTION(c.name) {
      const auto d = description(c);
      xt::with_model<Cpu<double>>(d, [&](auto& net) {
        INFO(c.name << ": " << net.describe() << " with " << net.position_policy() << ", " << net.score_bias_policy());
        perturb(net.parameters(), 3);
        const auto tokens = xtr::testing::random_tokens(2, 7, 11, 5);
        const auto R = xtr::testing::random_values(2 * 7 * 11, 6);
        auto loss = [&] {
          auto logits = net.forward(tokens);
          double s = 0;
          for (Index i = 0; i < logits.size(); ++i) s += logits.data()[i] * R[std::size_t(i)];
          return s;
        };
        net.parameters().zero_grad();
        auto logits = net.forward(tokens);
        net.backward(ConstView<double>(R.data(), logits.rows(), logits.cols()), 1.0);
        xtr::testing::require_parameter_gradients(net.parameters(), loss, 12);
      });
    }
  }
}

TEST_CASE("every option: KV-cached decoding equals recomputing the prefix", "[options][cache]") {
  xtr::testing::SerialOpenMP serial;
  for (const auto& c : cases()) {
    SECTION(c.name) {
      const auto d = description(c);
      xt::with_model<Cpu<double>>(d, [&](auto& net) {
        using Net = std::decay_t<decltype(net)>;
        if constexpr (Net::layers_type::causal) {
          INFO(c.name);
          perturb(net.parameters(), 4);
          net.eval();
          const Index B = 2, L = net.max_seq_len();
          const auto seq = xtr::testing::random_tokens(B, L, 11, 7);
          auto cache = net.make_cache(B);
          Index pos = 0;
          double worst = 0;
          for (const Index n : {3, 1, 1, 4, 1, 2}) {  // a prompt, then single tokens and chunks
            if (pos + n > L) break;
            TokenBatch part(B, n);
            for (Index b = 0; b < B; ++b)
              for (Index t = 0; t < n; ++t) part(b, t) = seq(b, pos + t);
            REQUIRE(net.can_decode(cache, n));
            const auto cached = net.forward_cached(part, cache);
            std::vector<double> step(cached.data(), cached.data() + cached.size());
            pos += n;
            TokenBatch prefix(B, pos);
            for (Index b = 0; b < B; ++b)
              for (Index t = 0; t < pos; ++t) prefix(b, t) = seq(b, t);
            const auto full = net.forward(prefix);
            for (Index b = 0; b < B; ++b)
              for (Index v = 0; v < 11; ++v) {
                const double want = full(b * pos + pos - 1, v), got = step[std::size_t(b * 11 + v)];
                worst = std::max(worst, std::abs(got - want) / std::max(1.0, std::abs(want)));
              }
          }
          INFO("worst relative difference cached vs recomputed " << worst);
          CHECK(worst < 1e-11);
        }
      });
    }
  }
}

TEST_CASE("the run-time model type equals the static type with the same policies", "[options]") {
  const OptionCase c{"alibi rmsnorm swiglu", "", R"("alibi_pos_bias": true, "use_rmsnorm": true, "ff_glu": true,
                                                    "ff_swish": true, "attn_qk_norm": true)"};
  const auto d = description(c);
  using Static = TransformerWrapper<Decoder<AbsoluteLearned, RMSNorm, SwiGLU, ALiBi>, Cpu<double>>;
  TransformerConfig config = d.config;
  config.layers.policies = {};
  Static fixed(config);
  xt::with_model<Cpu<double>>(d, [&](auto& dynamic) {
    REQUIRE(dynamic.parameters().count() == fixed.parameters().count());
    for (std::size_t i = 0; i < fixed.parameters().entries().size(); ++i)
      REQUIRE(dynamic.parameters().entries()[i].name == fixed.parameters().entries()[i].name);
    perturb(fixed.parameters(), 8);
    std::copy_n(fixed.parameters().values().data(), fixed.parameters().count(), dynamic.parameters().values().data());
    const auto tokens = xtr::testing::random_tokens(2, 9, 11, 9);
    const auto a = fixed.forward(tokens);
    const std::vector<double> expected(a.data(), a.data() + a.size());
    const auto b = dynamic.forward(tokens);
    for (Index i = 0; i < b.size(); ++i) REQUIRE(b.data()[i] == expected[std::size_t(i)]);
  });
  // a static slot refuses a contradicting run-time name
  TransformerConfig wrong = config;
  wrong.layers.policies.norm = "LayerNorm";
  REQUIRE_THROWS_WITH(Static(wrong), Catch::Contains("layers.policies.norm 'LayerNorm' contradicts the model type's RMSNorm"));
}

TEST_CASE("option values and combinations x-transformers refuses are errors naming them", "[options][errors]") {
  auto build = [](const OptionCase& c) { xt::with_model<Cpu<double>>(description(c), [](auto&) {}); };
  REQUIRE_THROWS_WITH(build({"", "", R"("rel_pos_bias": true, "rotary_pos_emb": true)"}),
                      Catch::Contains("Rotary with RelativePositionBias"));
  REQUIRE_THROWS_WITH(build({"", "", R"("alibi_pos_bias": true, "rel_pos_bias": true)"}),
                      Catch::Contains("exclude each other"));
  REQUIRE_THROWS_WITH(build({"", "", R"("pre_norm": false, "sandwich_norm": true)"}),
                      Catch::Contains("sandwich_norm needs layers.pre_norm"));
  REQUIRE_THROWS_WITH(build({"", "", R"("rotary_pos_emb": true, "rotary_interpolation_factor": 0.5)"}),
                      Catch::Contains("layers.rotary.interpolation_factor must be >= 1, got 0.5"));
  REQUIRE_THROWS_WITH(build({"", "", R"("alibi_pos_bias": true, "alibi_num_heads": 3)"}),
                      Catch::Contains("layers.alibi.num_heads 3 > heads 2"));
  REQUIRE_THROWS_WITH(build({"", "", R"("attn_qk_norm": true, "attn_qk_norm_groups": 3)"}),
                      Catch::Contains("qk_norm_groups 3 must divide dim_head 8"));
  REQUIRE_THROWS_WITH(build({"", "", R"("add_value_residual": true, "heads": 4, "attn_kv_heads": 2)"}),
                      Catch::Contains("learned_value_residual_mix needs kv_heads = heads"));
  REQUIRE_THROWS_WITH(build({"", "", R"("rotary_pos_emb": true, "rotary_xpos": true, "attn_num_mem_kv": 2)"}),
                      Catch::Contains("rotary.xpos with attention.num_mem_kv"));
  REQUIRE_THROWS_WITH(build({"", "", R"("rel_pos_bias": true, "rel_pos_num_buckets": 64, "rel_pos_max_distance": 32)"}),
                      Catch::Contains("num_buckets 64 must be <= max_distance 32"));
  REQUIRE_THROWS_WITH(build({"", "", R"("attn_num_mem_kv": -1)"}),
                      Catch::Contains("layers.attention.num_mem_kv must be >= 0, got -1"));
  REQUIRE_THROWS_WITH(build({"", R"("tie_embedding": true, "logits_dim": 3)", ""}),
                      Catch::Contains("tie_embedding makes the logits from the token embedding"));
  REQUIRE_THROWS_WITH(xt::parse_description(json::parse(R"({"num_tokens": 5, "max_seq_len": 4, "attn_layers":
                          {"type": "Decoder", "dim": 8, "depth": 1, "attn_qk_norm": 1}})")),
                      Catch::Contains("keyword 'attn_qk_norm' must be true or false"));
  // an Encoder cannot use xpos (x-transformers: not compatible with bidirectional attention)
  REQUIRE_THROWS_WITH(xt::with_model<Cpu<double>>(
                          xt::parse_description(json::parse(R"({"num_tokens": 5, "max_seq_len": 4, "attn_layers":
                              {"type": "Encoder", "dim": 8, "depth": 1, "heads": 2, "attn_dim_head": 4,
                               "rotary_pos_emb": true, "rotary_xpos": true}})")),
                          [](auto&) {}),
                      Catch::Contains("layers.rotary.xpos is for causal stacks"));
}

}  // namespace test_options
