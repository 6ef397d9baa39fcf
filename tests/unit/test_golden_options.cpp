// Golden parity of the x-transformers options (tests/fixtures/decoder_<option>.safetensors, x-transformers 2.31.10):
// each fixture is described by its `config` metadata (x-transformers' constructor keywords), parsed by
// x_transformers::parse_description into the run-time model (TransformerWrapper<AnyDecoder, Cpu<T>>), loaded strictly,
// and compared with what x-transformers computed: logits of net(tokens[:, :-1]), the AutoregressiveWrapper's loss,
// every parameter's gradient, and 16 greedy tokens with and without the KV cache, in float and in double. The same
// metrics and tolerances as test_golden_parity.cpp (GoldenTolerance), except that a gradient tensor whose reference is
// 0 up to x-transformers' fp32 noise (below 1e-4 of the model's largest gradient: the dynamic position bias's last
// bias, whose true gradient is 0 since softmax ignores a constant per row) is measured against the largest gradient.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "fixture_io.hpp"
#include "xtr/xtr.hpp"

namespace test_golden_options {  // this file's names (the test executable may compile the files as one unit)

using namespace xtr;
namespace st = xtr::safetensors;
namespace xt = xtr::x_transformers;
using xtr::testing::fixture_path;
using xtr::testing::tokens_of;

namespace {

template <class T>
struct OptionTolerance;
template <>
struct OptionTolerance<float> {
  static constexpr double logits = 1e-4, loss = 1e-5, grad = 1e-4;
};
template <>
struct OptionTolerance<double> {
  static constexpr double logits = 1e-5, loss = 5e-7, grad = 5e-6;
};

const std::vector<std::string>& option_fixtures() {
  static const std::vector<std::string> names = {
      "decoder_alibi",          "decoder_rel_pos_bias",        "decoder_dynamic_pos_bias",
      "decoder_rotary_xpos",    "decoder_rotary_interpolation", "decoder_rotary_base_rescale",
      "decoder_scalenorm",      "decoder_simple_rmsnorm",      "decoder_post_norm",
      "decoder_sandwich_norm",  "decoder_qk_norm",             "decoder_qk_norm_dim_scale",
      "decoder_mem_kv",         "decoder_gate_values",         "decoder_head_scale",
      "decoder_value_residual", "decoder_relu_squared",        "decoder_swish",
      "decoder_ff_no_bias",     "decoder_tie_embedding",       "decoder_post_emb_norm",
      "decoder_l2norm_embed",   "decoder_memory_tokens",
      // sub-options and combinations
      "decoder_dpb_norm_log", "decoder_qk_norm_groups", "decoder_value_residual_fixed_gqa", "decoder_alibi_rotary_all",
      "decoder_combo", "decoder_mem_kv_t5", "decoder_qk_norm_scale"};
  return names;
}

using xtr::testing::description_of;
using xtr::testing::drop_last;
using xtr::testing::gradient_error;
using xtr::testing::model_tensors;

struct Measured {
  double logits = 0, loss = 0, grad = 0;
  std::string worst_grad;
};

template <class T>
Measured check_option_fixture(const std::string& name) {
  using Tol = OptionTolerance<T>;
  const st::File file = st::read(fixture_path(name));
  const auto description = xt::parse_description(description_of(file));
  Measured m;
  REQUIRE(description.stack == "Decoder");
  xt::with_model<Cpu<T>>(description, [&](auto& net) {
    using Net = std::decay_t<decltype(net)>;
    if constexpr (Net::layers_type::causal) {
    INFO("fixture " << name << " (" << file.metadata.at("config") << "), model " << Net::describe() << " with "
                    << net.position_policy() << ", " << net.score_bias_policy());
    xt::load(net, model_tensors(file), name, description.conventions);
    AutoregressiveWrapper<Net> model(std::move(net));
    auto& params = model.parameters();
    const TokenBatch tokens = tokens_of(file, "fixture.tokens");
    {  // logits of net(tokens[:, :-1]), eval mode
      model.eval();
      const auto expected = st::to_vector<double>(file.at("fixture.logits"));
      const auto logits = model.net.forward(drop_last(tokens));
      REQUIRE(logits.size() == Index(expected.size()));
      Index worst = 0;
      for (Index i = 0; i < logits.size(); ++i) {
        const double err = std::abs(double(logits.data()[i]) - expected[std::size_t(i)]) /
                           std::max(std::abs(expected[std::size_t(i)]), 1.0);
        if (err > m.logits) m.logits = err, worst = i;
      }
      INFO("worst logit at " << worst << ": ours " << logits.data()[worst] << ", x-transformers "
                             << expected[std::size_t(worst)]);
      CHECK(m.logits <= Tol::logits);
      model.train();
    }
    params.zero_grad();
    const Loss loss = model(tokens);
    const double expected_loss = st::to_vector<double>(file.at("fixture.loss")).at(0);
    m.loss = std::abs(loss.item() - expected_loss) / std::abs(expected_loss);
    {
      INFO("loss: ours " << loss.item() << ", x-transformers " << expected_loss);
      CHECK(m.loss <= Tol::loss);
    }
    loss.backward();
    // every gradient; a tensor that is 0 up to x-transformers' fp32 noise against the largest one
    const auto g = gradient_error(file, params, 1e-4);
    m.grad = g.worst;
    m.worst_grad = g.name;
    {
      INFO("worst gradient tensor " << m.worst_grad << ": max|ours − ref| / max|ref| = " << m.grad);
      CHECK(m.grad <= Tol::grad);
    }
    // greedy decoding, token for token, with and without the KV cache
    const TokenBatch prompt = tokens_of(file, "fixture.prompt");
    const TokenBatch greedy = tokens_of(file, "fixture.greedy");
    for (const bool cache_kv : {true, false}) {
      INFO("greedy decoding, cache_kv " << cache_kv);
      const TokenBatch ours = model.generate(prompt, greedy.length, {.temperature = 0, .cache_kv = cache_kv});
      CHECK(ours.data == greedy.data);
    }
    }
  });
  if (std::getenv("XTR_GOLDEN_REPORT"))
    std::cout << name << " " << Cpu<T>::name << ": logits " << m.logits << ", loss " << m.loss << ", gradient "
              << m.grad << " (" << m.worst_grad << ")\n";
  return m;
}

}  // namespace

/// The Encoder with T5 buckets (bidirectional) and key padding: logits at the real positions, the cross-entropy over
/// them against fixture.targets, every gradient.
template <class T>
void check_encoder_option_fixture(const std::string& name) {
  using Tol = OptionTolerance<T>;
  const st::File file = st::read(fixture_path(name));
  const auto description = xt::parse_description(description_of(file));
  REQUIRE(description.stack == "Encoder");
  xt::with_model<Cpu<T>>(description, [&](auto& net) {
    using Net = std::decay_t<decltype(net)>;
    if constexpr (!Net::layers_type::causal) {
      INFO("fixture " << name << ", " << net.position_policy() << ", " << net.score_bias_policy());
      xt::load(net, model_tensors(file), name, description.conventions);
      const TokenBatch tokens = tokens_of(file, "fixture.tokens"), targets = tokens_of(file, "fixture.targets");
      const Mask mask = xtr::testing::mask_of(file, "fixture.mask");
      const Index V = net.num_tokens();
      net.eval();
      const auto expected = st::to_vector<double>(file.at("fixture.logits"));
      auto logits = net.forward(tokens, mask);
      double worst = 0;
      for (Index n = 0; n < tokens.batch * tokens.length; ++n) {
        if (!mask.data[std::size_t(n)]) continue;  // padded positions: x-transformers zeroes their attention branch
        for (Index v = 0; v < V; ++v)
          worst = std::max(worst, std::abs(double(logits(n, v)) - expected[std::size_t(n * V + v)]) /
                                      std::max(1.0, std::abs(expected[std::size_t(n * V + v)])));
      }
      CHECK(worst <= Tol::logits);
      net.train();
      net.parameters().zero_grad();
      std::vector<std::int32_t> ids(targets.data);
      for (std::size_t i = 0; i < ids.size(); ++i)
        if (!mask.data[i]) ids[i] = -100;
      auto out = net.forward(tokens, mask);
      const double loss = kernel<Cpu<T>, ops::SoftmaxCrossEntropy>::run(out, ids.data(), -100,
                                                                       net.output_gradient().data());
      const double expected_loss = st::to_vector<double>(file.at("fixture.loss")).at(0);
      CHECK(std::abs(loss - expected_loss) <= Tol::loss * std::abs(expected_loss));
      net.backward(T(1));
      const auto g = gradient_error(file, net.parameters(), 1e-4);
      INFO("worst gradient tensor " << g.name << ": " << g.worst);
      CHECK(g.worst <= Tol::grad);
    }
  });
}

TEST_CASE("golden parity of the Encoder with T5 position buckets and key padding", "[golden][options]") {
  check_encoder_option_fixture<float>("encoder_rel_pos_bias_mask");
  check_encoder_option_fixture<double>("encoder_rel_pos_bias_mask");
}

TEST_CASE("golden parity of every x-transformers option fixture, float and double", "[golden][options]") {
  for (const auto& name : option_fixtures()) {
    SECTION(name) {
      check_option_fixture<float>(name);
      check_option_fixture<double>(name);
    }
  }
}

}  // namespace test_golden_options
