// NonAutoregressiveWrapper: the masking recipe (statistics over many draws with a fixed seed), the loss only on masked
// positions, its gradient, generation (no mask_id left, prefix kept, a tiny deterministic language learned), bad input.
#include <catch2/catch.hpp>

#include <cmath>
#include <numbers>

#include "testing.hpp"
#include "xtr/xtr.hpp"

namespace test_non_autoregressive {  // this file's names (the test executable may compile the files as one unit)

using namespace xtr;
using xtr::testing::check_gradient;

namespace {

TransformerConfig nar_config(Index num_tokens, Index max_seq_len, Index dim = 8, std::uint64_t seed = 3) {
  return {.num_tokens = num_tokens,
          .max_seq_len = max_seq_len,
          .layers = {.dim = dim, .depth = 2, .heads = 2, .dim_head = dim / 2},
          .seed = seed};
}

/// Rows of a language where each token is the previous one + 1 (mod `period`), from a random start.
TokenBatch counting_rows(Index batch, Index length, Index period, std::uint64_t seed) {
  TokenBatch t(batch, length);
  const RandomStream rs{seed, 9};
  for (Index b = 0; b < batch; ++b) {
    const auto start = std::int32_t(rs.below(std::uint64_t(b), std::uint64_t(period)));
    for (Index j = 0; j < length; ++j) t(b, j) = std::int32_t((start + j) % period);
  }
  return t;
}

}  // namespace

TEST_CASE("NAR masking recipe: counts follow the schedule, at least one masked, replacement fractions",
          "[nar][recipe]") {
  using Net = TransformerWrapper<Encoder<>>;
  const Index V = 21, n = 64, B = 400;  // mask_id 20; data ids 0..19
  for (const bool cosine : {true, false}) {
    INFO("schedule " << (cosine ? "cosine" : "linear"));
    NonAutoregressiveWrapper<Net> model(Net(nar_config(V, n)),
                                        {.mask_id = 20, .schedule = cosine ? cosine_schedule : linear_schedule});
    const auto x = xtr::testing::random_tokens(B, n, 20, 5);
    const auto c = model.corrupt(x, RandomStream{11, 0});
    double sum_t = 0, masked_total = 0, expected_fraction = 0;
    Index kept = 0, random = 0, mask_ids = 0;
    for (Index b = 0; b < B; ++b) {
      const double t = c.times[std::size_t(b)];
      REQUIRE(t > 0);
      REQUIRE(t < 1);
      sum_t += t;
      const double gamma = cosine ? std::cos(t * std::numbers::pi / 2) : 1 - t;
      Index k = 0;
      for (Index j = 0; j < n; ++j) {
        const std::size_t i = std::size_t(b * n + j);
        if (!c.masked[i]) {
          REQUIRE(c.input[i] == x.data[i]);  // unmasked positions are untouched
          continue;
        }
        ++k;
        if (c.input[i] == x.data[i]) ++kept;
        else if (c.input[i] == 20) ++mask_ids;
        else ++random;
      }
      REQUIRE(k == std::max<Index>(1, Index(std::ceil(gamma * double(n)))));  // exactly the schedule, at least one
      masked_total += double(k);
      expected_fraction += gamma;
    }
    CHECK(sum_t / B == Approx(0.5).margin(0.05));                                  // t ~ U(0, 1)
    CHECK(masked_total / double(B * n) == Approx(expected_fraction / B).margin(0.02));
    if (cosine) CHECK(masked_total / double(B * n) == Approx(2 / std::numbers::pi).margin(0.05));  // E[cos(πt/2)]
    // of the masked: 15% keep (plus random draws equal to the token: 0.1 / 19), 10% random, 75% mask_id
    CHECK(double(kept) / masked_total == Approx(0.15 + 0.1 / 19).margin(0.01));
    CHECK(double(random) / masked_total == Approx(0.1 * 18 / 19).margin(0.01));
    CHECK(double(mask_ids) / masked_total == Approx(0.75).margin(0.015));
  }
}

TEST_CASE("NAR loss counts masked positions only, and its gradient matches finite differences", "[nar][gradient]") {
  xtr::testing::SerialOpenMP serial;
  using Net = TransformerWrapper<Encoder<Rotary, RMSNorm>, Cpu<double>>;
  NonAutoregressiveWrapper<Net> model(Net(nar_config(9, 7)), {.mask_id = 8});
  const auto x = xtr::testing::random_tokens(3, 7, 8, 2);
  const auto c = model.corrupt(x, RandomStream{4, 1});
  // by hand: CE of net(corrupted) at the masked positions
  auto logits = model.net.forward({c.input.data(), 3, 7});
  double total = 0;
  Index count = 0;
  for (Index i = 0; i < 21; ++i) {
    if (!c.masked[std::size_t(i)]) continue;
    double m = -1e300, z = 0;
    for (Index v = 0; v < 9; ++v) m = std::max(m, logits(i, v));
    for (Index v = 0; v < 9; ++v) z += std::exp(logits(i, v) - m);
    total += m + std::log(z) - logits(i, x.data[std::size_t(i)]);
    ++count;
  }
  REQUIRE(count > 0);
  model.parameters().zero_grad();
  auto loss = model(x, c);
  CHECK(loss.item() == Approx(total / double(count)).epsilon(1e-12));
  // targets at unmasked positions do not matter
  auto y = x;
  for (Index i = 0; i < 21; ++i)
    if (!c.masked[std::size_t(i)]) y.data[std::size_t(i)] = (y.data[std::size_t(i)] + 1) % 8;
  (loss * 0.5).backward();
  auto& store = model.parameters();
  std::vector<double*> params;
  std::vector<double> analytic;
  for (Index i = 0; i < store.count(); i += 3) {
    params.push_back(store.values().data() + i);
    analytic.push_back(store.grads()[i]);
  }
  XTR_REQUIRE_GRADIENT(check_gradient(params, analytic, [&] { return 0.5 * model(y, c).item(); }, "all parameters"));
}

TEST_CASE("NAR self-conditioning: gradients match finite differences on both paths", "[nar][gradient][self_cond]") {
  xtr::testing::SerialOpenMP serial;
  using Net = TransformerWrapper<Encoder<AbsoluteLearned, LayerNorm>, Cpu<double>>;
  NonAutoregressiveWrapper<Net> model(nar_config(9, 7), {.mask_id = 8, .self_cond = true});
  auto& store = model.parameters();
  REQUIRE(store.find("null_embed") != nullptr);
  REQUIRE(store.find("to_self_cond.weight") != nullptr);
  REQUIRE(store.find("net.token_emb.emb.weight") != nullptr);  // x-transformers' NonAutoregressiveWrapper names
  const auto x = xtr::testing::random_tokens(2, 7, 8, 2);
  auto c = model.corrupt(x, RandomStream{4, 1});
  for (const bool fed_back : {false, true}) {
    INFO("self_condition " << fed_back);
    c.self_condition = fed_back;
    store.zero_grad();
    model(x, c).backward();
    std::vector<double*> params;
    std::vector<double> analytic;
    for (const auto& e : store.entries()) {
      // fed back, the first pass is detached: only parameters it does not read have the full derivative
      if (fed_back && e.name != "to_self_cond.weight" && e.name != "null_embed") continue;
      const Index stride = std::max<Index>(1, e.shape.numel() / 30);
      for (Index i = 0; i < e.shape.numel(); i += stride) {
        params.push_back(store.values().data() + e.offset + i);
        analytic.push_back(store.grads()[e.offset + i]);
      }
    }
    XTR_REQUIRE_GRADIENT(check_gradient(params, analytic, [&] { return model(x, c).item(); }, "parameters"));
    const auto* null = store.find("null_embed");
    double null_grad = 0;
    for (Index i = 0; i < null->shape.numel(); ++i) null_grad += std::abs(store.grads()[null->offset + i]);
    CHECK((null_grad > 0) == !fed_back);  // null_embed is used only when nothing is fed back
  }
  // generation feeds each step's embeddings forward and leaves no mask_id
  const auto out = model.generate(3, {.seed = 2});
  for (auto id : out.data) REQUIRE((id >= 0 && id < 8));
  CHECK(model.generate(3, {.seed = 2}).data == out.data);
  auto copy = model;
  CHECK(copy.parameters().values().data() != model.parameters().values().data());
  CHECK(copy.generate(3, {.seed = 2}).data == out.data);
}

TEST_CASE("NAR token critic: BCE on the generator mistakes, gradients of generator and critic", "[nar][gradient][critic]") {
  xtr::testing::SerialOpenMP serial;
  using Net = TransformerWrapper<Encoder<Rotary>, Cpu<double>>;
  using Critic = TransformerWrapper<Encoder<AbsoluteLearned, RMSNorm>, Cpu<double>>;
  NonAutoregressiveWrapper<Net, Critic> model(nar_config(9, 7), {.mask_id = 8, .critic_loss_weight = 0.7},
                                              nar_config(9, 7, 8, 5));
  auto& store = model.parameters();
  REQUIRE(store.find("token_critic.to_logits.weight")->shape == Shape{1, 8});  // one logit per position
  const auto x = xtr::testing::random_tokens(2, 7, 8, 2);
  auto c = model.corrupt(x, RandomStream{4, 1});
  c.critic_temperature = 0.8;
  store.zero_grad();
  auto loss = model(x, c);
  const auto parts = model.last_losses();
  CHECK(loss.item() == Approx(parts.generator + 0.7 * parts.critic).epsilon(1e-12));
  CHECK(parts.critic > 0);
  loss.backward();
  std::vector<double*> params;
  std::vector<double> analytic;
  for (const auto& e : store.entries()) {
    const Index stride = std::max<Index>(1, e.shape.numel() / 25);
    for (Index i = 0; i < e.shape.numel(); i += stride) {
      params.push_back(store.values().data() + e.offset + i);
      analytic.push_back(store.grads()[e.offset + i]);
    }
  }
  // the critic's input is a discrete sample: a tiny perturbation of the generator leaves it unchanged
  XTR_REQUIRE_GRADIENT(check_gradient(params, analytic, [&] { return model(x, c).item(); }, "generator and critic"));
  // generation re-masks by the critic's scores and still ends with no mask_id
  const auto out = model.generate(3, {.seed = 4});
  for (auto id : out.data) REQUIRE((id >= 0 && id < 8));
  CHECK(model.generate(3, {.seed = 4}).data == out.data);
  auto other = nar_config(9, 7);
  other.num_tokens = 10;
  REQUIRE_THROWS_WITH((NonAutoregressiveWrapper<Net, Critic>(nar_config(9, 7), {.mask_id = 8}, other)),
                      Catch::Contains("num_tokens 10 != 9"));
}

TEST_CASE("NAR generation: no mask_id remains after the steps, the prefix stays, seeds reproduce", "[nar][generate]") {
  using Net = TransformerWrapper<Encoder<>>;
  for (const Index steps : {1, 3, 18}) {
    NonAutoregressiveWrapper<Net> model(Net(nar_config(11, 12)), {.mask_id = 10, .steps = steps});
    const auto out = model.generate(5, {.seed = 7});
    REQUIRE(out.batch == 5);
    REQUIRE(out.length == 12);
    for (auto id : out.data) REQUIRE((id >= 0 && id < 10));
    CHECK(model.generate(5, {.seed = 7}).data == out.data);
    const TokenBatch prefix{{3, 1, 4}};
    const auto prefixed = model.generate(2, {.seed = 8}, prefix);
    for (Index b = 0; b < 2; ++b) {
      CHECK(prefixed(b, 0) == 3);
      CHECK(prefixed(b, 1) == 1);
      CHECK(prefixed(b, 2) == 4);
      for (Index j = 0; j < 12; ++j) REQUIRE(prefixed(b, j) != 10);
    }
  }
}

TEST_CASE("NAR: a model trained a few hundred steps on a counting language generates that language",
          "[nar][generate][training]") {
  xtr::testing::SerialOpenMP serial;
  using Net = TransformerWrapper<Encoder<>>;
  const Index period = 6, L = 10;  // tokens 0..5 count up mod 6; mask_id 6
  NonAutoregressiveWrapper<Net> model(Net(nar_config(7, L, 32, 1)), {.mask_id = 6, .steps = 8});
  auto optimizer = Adam(model.parameters(), {.lr = 3e-3});
  double last = 0;
  for (int step = 0; step < 300; ++step) {
    auto loss = model(counting_rows(16, L, period, std::uint64_t(step)));
    loss.backward();
    optimizer.step();
    optimizer.zero_grad();
    last = loss.item();
  }
  INFO("final training loss " << last);
  const auto out = model.generate(16, {.filter_thres = 0.5, .seed = 3});
  Index following = 0, pairs = 0;
  for (Index b = 0; b < out.batch; ++b)
    for (Index j = 0; j + 1 < L; ++j, ++pairs) following += out(b, j + 1) == (out(b, j) + 1) % period;
  INFO("adjacent pairs that count up: " << following << " of " << pairs);
  CHECK(double(following) / double(pairs) > 0.9);  // an untrained model: ~1/6
}

TEST_CASE("NAR bad input: errors name the value and the limit", "[nar][errors]") {
  using Net = TransformerWrapper<Encoder<>>;
  REQUIRE_THROWS_WITH((NonAutoregressiveWrapper<Net>(Net(nar_config(9, 6)), {.mask_id = 9})),
                      Catch::Contains("mask_id 9 must be a token id in [0, num_tokens 9)"));
  REQUIRE_THROWS_WITH((NonAutoregressiveWrapper<Net>(Net(nar_config(9, 6)), {.mask_id = 8, .steps = 0})),
                      Catch::Contains("steps must be >= 1, got 0"));
  REQUIRE_THROWS_WITH(
      (NonAutoregressiveWrapper<Net>(Net(nar_config(9, 6)), {.mask_id = 8, .no_replace_prob = 0.6, .random_token_prob = 0.5})),
      Catch::Contains("no_replace_prob 0.6 and random_token_prob 0.5"));
  NonAutoregressiveWrapper<Net> model(Net(nar_config(9, 6)), {.mask_id = 8});
  REQUIRE_THROWS_WITH(model(xtr::testing::random_tokens(2, 5, 8, 1)),
                      Catch::Contains("exactly max_seq_len 6 tokens, got 5"));
  auto x = xtr::testing::random_tokens(2, 6, 8, 1);
  x(1, 4) = 8;
  REQUIRE_THROWS_WITH(model(x), Catch::Contains("the data contains mask_id 8 at batch 1, position 4"));
  REQUIRE_THROWS_WITH(model.generate(0), Catch::Contains("batch must be > 0, got 0"));
  REQUIRE_THROWS_WITH((NonAutoregressiveWrapper<Net>(Net(nar_config(9, 6)), {.mask_id = 8, .self_cond = true})),
                      Catch::Contains("self_cond adds parameters"));
  REQUIRE_THROWS_WITH(model.generate(1, {}, TokenBatch{{1, 2, 3, 4, 5, 6}}),
                      Catch::Contains("prefix length 6 must be < max_seq_len 6"));
  NonAutoregressiveWrapper<Net> wild(Net(nar_config(9, 6)), {.mask_id = 8, .schedule = [](double t) { return 1 + t; }});
  REQUIRE_THROWS_WITH(wild(xtr::testing::random_tokens(1, 6, 8, 1)), Catch::Contains("is outside [0, 1]"));
  std::vector<std::uint8_t> bytes(100, 'a');
  bytes[42] = 0;
  REQUIRE_THROWS_WITH(MaskedTokenBatches(TextDataset(bytes), 2, 8, 0, 1),
                      Catch::Contains("the data contains mask_id 0 at byte 42"));
  MaskedTokenBatches windows(TextDataset(std::vector<std::uint8_t>(100, 'a')), 2, 8, 256, 1);
  CHECK(windows.next().length == 8);
}

TEST_CASE("NAR x-transformers recipe (coin_flips): per batch, a coin for kept tokens and a coin for random ones, "
          "ceil counts of the masked positions", "[nar][recipe]") {
  using Net = TransformerWrapper<Encoder<>>;
  const Index V = 21, n = 40, B = 50;
  auto options = NonAutoregressiveOptions::x_transformers_defaults(20);
  REQUIRE(options.steps == 18);
  REQUIRE(options.schedule(0.25) == 0.75);  // linear
  NonAutoregressiveWrapper<Net> model(Net(nar_config(V, n)), options);
  const auto x = xtr::testing::random_tokens(B, n, 20, 5);
  Index batches_keeping = 0, batches_randomising = 0;
  const int draws = 400;
  for (int d = 0; d < draws; ++d) {
    const auto c = model.corrupt(x, RandomStream{11, std::uint64_t(d)});
    bool any_kept = false, any_random = false;
    for (Index b = 0; b < B; ++b) {
      Index k = 0, mask_ids = 0;
      for (Index j = 0; j < n; ++j) {
        const std::size_t i = std::size_t(b * n + j);
        if (!c.masked[i]) {
          REQUIRE(c.input[i] == x.data[i]);
          continue;
        }
        ++k;
        mask_ids += c.input[i] == 20;
      }
      REQUIRE(k == std::max<Index>(1, Index(std::ceil((1 - c.times[std::size_t(b)]) * double(n)))));
      // every masked position that is not mask_id kept its token or drew a random one: at most these counts
      const Index kept_max = Index(std::ceil(double(k) * 0.15));
      const Index random_max = Index(std::ceil(double(k) * 0.1));
      CHECK(k - mask_ids <= kept_max + random_max);
      if (k - mask_ids > 0) {
        Index same = 0, other = 0;
        for (Index j = 0; j < n; ++j) {
          const std::size_t i = std::size_t(b * n + j);
          if (c.masked[i] && c.input[i] != 20) (c.input[i] == x.data[i] ? same : other) += 1;
        }
        any_kept = any_kept || same >= kept_max;  // a row of a keeping batch keeps exactly ceil(0.15 k)
        any_random = any_random || other > 0;
      }
    }
    batches_keeping += any_kept;
    batches_randomising += any_random;
  }
  // each coin comes up in about half the batches
  CHECK(double(batches_keeping) / draws == Approx(0.5).margin(0.1));
  CHECK(double(batches_randomising) / draws == Approx(0.5).margin(0.1));
}

TEST_CASE("NAR around a Decoder, as x-transformers' example writes it: the program translated line by line trains "
          "and decodes in its fixed steps", "[nar][decoder]") {
  xtr::testing::SerialOpenMP serial;
  // model = NonAutoregressiveWrapper(TransformerWrapper(num_tokens = 256, max_seq_len = L,
  //     attn_layers = Decoder(dim = 512, depth = 6, heads = 8)), mask_id = 255, steps = 18)   (sizes shrunk)
  const Index L = 12;
  using Net = TransformerWrapper<Decoder<>>;
  NonAutoregressiveWrapper<Net> model(Net({.num_tokens = 256, .max_seq_len = L,
                                           .layers = {.dim = 32, .depth = 2, .heads = 2, .dim_head = 16}}),
                                      NonAutoregressiveOptions::x_transformers_defaults(/*mask_id=*/255, /*steps=*/18));
  auto optimizer = Adam(model.parameters(), {.lr = 3e-3});
  double first = 0, last = 0;
  for (int step = 0; step < 150; ++step) {  // loss = model(seq); loss.backward()
    auto loss = model(counting_rows(16, L, 6, std::uint64_t(step)));
    loss.backward();
    optimizer.step();
    optimizer.zero_grad();
    (step == 0 ? first : last) = loss.item();
  }
  INFO("loss " << first << " -> " << last);
  CHECK(last < 0.6 * first);
  const auto out = model.generate(4, {.seed = 1});  // model.generate()
  REQUIRE(out.batch == 4);
  REQUIRE(out.length == L);
  for (auto t : out.data) CHECK(t != 255);
  // causal: the logits at position j do not depend on tokens after j, so the wrapper's loss sees a Decoder's view
  auto a = counting_rows(1, L, 6, 1), b = a;
  b(0, L - 1) = (b(0, L - 1) + 1) % 6;
  const auto la = model.net.forward(a);
  const std::vector<float> first_rows(la.data(), la.data() + (L - 1) * 256);
  const auto lb = model.net.forward(b);
  for (Index i = 0; i < (L - 1) * 256; ++i) REQUIRE(lb.data()[i] == first_rows[std::size_t(i)]);
}

}  // namespace test_non_autoregressive
