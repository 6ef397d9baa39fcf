// Golden parity of NonAutoregressiveWrapper with x-transformers 2.31.10 (tools/xt_fixture_nar.py; tests/fixtures/
// README.md, "Non-autoregressive fixtures"): each nar_* fixture holds a wrapper trained with x-transformers' own
// masking recipe, under its names (`net.…`, and with self-conditioning `null_embed`, `to_self_cond.weight`), one
// corruption of a held-out batch (MASK_ID, random and kept positions) and what the Python wrapper's modules computed
// on it: the logits, the generator loss over the masked positions and every parameter gradient (self-conditioned
// branch), and for self-conditioning also the null branch's loss and its gradients of null_embed / to_self_cond.
// The corruption goes in through operator()(x, corruption); tolerances as for the decoder fixtures. The state dict
// loads through x_transformers::load_non_autoregressive and exports back byte for byte.
#include <catch2/catch.hpp>

#include <cmath>
#include <string>
#include <type_traits>
#include <vector>

#include "fixture_io.hpp"
#include "xtr/io/x_transformers.hpp"
#include "xtr/xtr.hpp"

namespace test_golden_nar {  // this file's names (the test executable may compile the files as one unit)

using namespace xtr;
namespace st = xtr::safetensors;
using xtr::testing::fixture_path;
using xtr::testing::mask_of;
using xtr::testing::tokens_of;

namespace {

template <class T>
struct NarTolerance {  // float; the fixture's own fp32 rounding bounds double too
  static constexpr double logits = 1e-4, loss = 1e-5, grad = 1e-4;
};
template <>
struct NarTolerance<double> {
  static constexpr double logits = 2e-5, loss = 2e-6, grad = 2e-5;
};

/// max over the tensor of |ours − expected| / max |expected|.
double relative_error(const std::vector<double>& ours, const std::vector<double>& expected) {
  REQUIRE(ours.size() == expected.size());
  double worst = 0, scale = 1e-30;
  for (std::size_t i = 0; i < expected.size(); ++i) {
    worst = std::max(worst, std::abs(ours[i] - expected[i]));
    scale = std::max(scale, std::abs(expected[i]));
  }
  return worst / scale;
}

template <class Stack, class T>
void check_nar_fixture(const std::string& name) {
  using Net = TransformerWrapper<Stack, Cpu<T>>;
  using Tol = NarTolerance<T>;
  INFO("fixture " << name << ", " << Net::describe());
  const st::File file = st::read(fixture_path(name));
  auto root = json::parse(file.metadata.at("config"));
  root.set("x_transformers_version", file.metadata.at("x_transformers_version"));
  const auto description = x_transformers::parse_description(root);
  REQUIRE(x_transformers::describes<Stack>(description));
  const auto keywords = json::parse(file.metadata.at("wrapper"));
  REQUIRE_FALSE(keywords.at("use_simple_mdlm_loss_weight").as_bool());  // xtr keeps the plain masked CE
  NonAutoregressiveOptions options{.mask_id = std::int32_t(keywords.at("mask_id").as_int()),
                                   .steps = keywords.at("steps").as_int(),
                                   .no_replace_prob = keywords.at("no_replace_prob").as_number(),
                                   .random_token_prob = keywords.at("random_token_prob").as_number(),
                                   .self_cond = keywords.at("self_cond").as_bool()};
  if (const auto* p = keywords.find("self_cond_train_prob")) options.self_cond_train_prob = p->as_number();
  NonAutoregressiveWrapper<Net> model(description.config, options);
  x_transformers::load_non_autoregressive(model, file, name, {"fixture.", "grad.", "grad_null."});
  if constexpr (std::is_same_v<T, float>) {  // exported again: every state-dict tensor byte for byte, nothing else
    const auto exported = x_transformers::export_non_autoregressive_state_dict(model, &file);
    Index state_tensors = 0;
    for (const auto& t : file.tensors) {
      if (t.name.starts_with("fixture.") || t.name.starts_with("grad")) continue;
      ++state_tensors;
      const auto* e = exported.find(t.name);
      REQUIRE(e != nullptr);
      CHECK(e->bytes == t.bytes);
    }
    CHECK(Index(exported.tensors.size()) == state_tensors);
  }

  const auto tokens = tokens_of(file, "fixture.tokens");
  using Corruption = typename NonAutoregressiveWrapper<Net>::Corruption;
  Corruption corruption;
  corruption.input = tokens_of(file, "fixture.input").data;
  corruption.masked = mask_of(file, "fixture.mask").data;
  corruption.times.assign(std::size_t(tokens.batch), 0.5);  // not read by the loss
  corruption.self_condition = true;

  // logits: net(input) (+ to_self_cond(first-pass embeddings) when self-conditioning)
  {
    const TokensView input{corruption.input.data(), tokens.batch, tokens.length};
    std::vector<T> sum;
    if (options.self_cond) {
      auto e = model.net.embed(input);
      const auto& w = *model.parameters().find("to_self_cond.weight");
      const MatrixView<T> weight(model.parameters().values().data() + w.offset, w.shape.rows(), w.shape.cols());
      sum.resize(std::size_t(e.size()));
      MatrixView<T>(sum.data(), e.rows(), e.cols()) = e * weight.transpose();
    }
    auto logits = options.self_cond ? model.net.forward(input, {}, sum.data()) : model.net.forward(input);
    const std::vector<double> ours(logits.data(), logits.data() + logits.size());
    CHECK(relative_error(ours, st::to_vector<double>(file.at("fixture.logits"))) <= Tol::logits);
  }

  model.parameters().zero_grad();
  auto loss = model(tokens, corruption);
  const double expected = st::to_vector<double>(file.at("fixture.loss"))[0];
  CHECK(std::abs(loss.item() - expected) <= Tol::loss * std::max(1.0, std::abs(expected)));
  loss.backward();
  auto grad_of = [&](const std::string& param) {
    const auto* e = model.parameters().find(param);
    REQUIRE(e != nullptr);
    const T* g = model.parameters().grads().data() + e->offset;
    return std::vector<double>(g, g + e->shape.numel());
  };
  Index compared = 0;
  for (const auto& t : file.tensors) {
    if (!t.name.starts_with("grad.")) continue;
    INFO(t.name);
    CHECK(relative_error(grad_of(t.name.substr(5)), st::to_vector<double>(t)) <= Tol::grad);
    ++compared;
  }
  // every parameter has its gradient in the file (null_embed has none on the self-conditioned branch)
  CHECK(compared + Index(options.self_cond) == Index(model.parameters().entries().size()));

  if (options.self_cond) {  // the other branch: null_embed in every position
    corruption.self_condition = false;
    model.parameters().zero_grad();
    auto null_loss = model(tokens, corruption);
    const double expected_null = st::to_vector<double>(file.at("fixture.loss_null"))[0];
    CHECK(std::abs(null_loss.item() - expected_null) <= Tol::loss * std::max(1.0, std::abs(expected_null)));
    null_loss.backward();
    for (const std::string param : {"null_embed", "to_self_cond.weight"}) {
      INFO(param);
      CHECK(relative_error(grad_of(param), st::to_vector<double>(file.at("grad_null." + param))) <= Tol::grad);
    }
  }
}

}  // namespace

TEMPLATE_TEST_CASE("golden: NonAutoregressiveWrapper loss, logits and gradients match x-transformers",
                   "[golden][non-autoregressive]", float, double) {
  check_nar_fixture<Encoder<Rotary, LayerNorm, GELU>, TestType>("nar_rotary_layernorm");
  check_nar_fixture<Encoder<AbsoluteLearned, RMSNorm, SwiGLU>, TestType>("nar_selfcond_absolute_rmsnorm_swiglu");
}

}  // namespace test_golden_nar
