// Model-level properties on small float models, for several policy combinations: causality, padding-mask invariance,
// KV-cached decoding vs full recomputation (incl. the sliding window past max_seq_len), batched vs one-by-one,
// training vs inference mode, the sampling filters, eos handling, and the error messages at the API boundary.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include "testing.hpp"
#include "xtr/xtr.hpp"

namespace test_properties {  // this file's names (the test executable may compile the files as one unit)

using namespace xtr;
using Catch::Contains;
using xtr::testing::random_tokens;
using xtr::testing::random_values;

namespace {

constexpr std::size_t sz(Index n) { return static_cast<std::size_t>(n); }

constexpr Index kVocab = 37, kMaxLen = 48;

/// num_tokens 37, dim 32, depth 2, heads 4, dim_head 8, max_seq_len 48; kv_heads 2 for position-free stacks.
template <class Layers>
TransformerConfig small_config(double dropout = 0, Index depth = 2) {
  TransformerConfig c{
      .num_tokens = kVocab,
      .max_seq_len = kMaxLen,
      .emb_dropout = dropout,
      .layers = {.dim = 32, .depth = depth, .heads = 4, .dim_head = 8, .attn_dropout = dropout, .ff_dropout = dropout},
      .seed = 17};
  if constexpr (std::is_same_v<typename Layers::position, NoPosition>) c.layers.kv_heads = 2;
  return c;
}

template <class Layers>
using FloatNet = TransformerWrapper<Layers, Cpu<float>>;

/// A copy of the logits of one forward (the returned view dies at the next forward).
struct Logits {
  std::vector<float> v;
  Index rows = 0, cols = 0;
  [[nodiscard]] const float* row(Index r) const { return v.data() + r * cols; }
};

template <class Net>
Logits forward_copy(Net& net, TokensView tokens, MaskView mask = {}) {
  const auto l = net.forward(tokens, mask);
  return {{l.data(), l.data() + l.size()}, l.rows(), l.cols()};
}

double max_abs(const float* a, Index n) {
  double m = 0;
  for (Index i = 0; i < n; ++i) m = std::max(m, double(std::abs(a[i])));
  return m;
}
double max_diff(const float* a, const float* b, Index n) {
  double m = 0;
  for (Index i = 0; i < n; ++i) m = std::max(m, double(std::abs(a[i] - b[i])));
  return m;
}

template <class Net>
concept CanCache = requires(Net& net, TokensView tokens) {
  net.make_cache(1);
  net.forward_cached(tokens, std::declval<typename Net::Cache&>());
};
// A KV cache exists for causal stacks only; for an Encoder the calls do not compile.
static_assert(CanCache<FloatNet<Decoder<Rotary>>>);
static_assert(!CanCache<FloatNet<Encoder<Rotary>>>);

using xtr::testing::SerialOpenMP;

/// Relative tolerance for float logits of these small models, against their scale max(1, max |logit|).
constexpr double kLogitTol = 1e-5;

}  // namespace

// ---------------------------------------------------------------------------------------------------------------------
// 1. Causality

TEMPLATE_TEST_CASE("causality: changing token t+1 leaves the logits at positions <= t unchanged",
                   "[properties][causal]", (Decoder<Rotary, LayerNorm, GELU>),
                   (Decoder<AbsoluteLearned, RMSNorm, SwiGLU>), (Decoder<NoPosition, LayerNorm, GEGLU>)) {
  FloatNet<TestType> net(small_config<TestType>());
  net.eval();
  for (Index T : {Index(24), kMaxLen}) {
    const auto tokens = random_tokens(2, T, kVocab, 3);
    const auto base = forward_copy(net, tokens);
    for (Index t : {Index(0), Index(10), T - 2}) {
      auto changed = tokens;
      for (Index b = 0; b < 2; ++b) changed(b, t + 1) = (changed(b, t + 1) + 1) % std::int32_t(kVocab);
      const auto after = forward_copy(net, changed);
      INFO("T " << T << ", token changed at " << t + 1);
      for (Index b = 0; b < 2; ++b) {
        const double scale = std::max(1.0, max_abs(base.row(b * T), (t + 1) * kVocab));
        const double before_t = max_diff(base.row(b * T), after.row(b * T), (t + 1) * kVocab);
        const double from_t1 = max_diff(base.row(b * T + t + 1), after.row(b * T + t + 1), (T - t - 1) * kVocab);
        CHECK(before_t <= 1e-6 * scale);
        CHECK(from_t1 > 1e-3);  // position t+1 sees its own (new) token
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// 2. Padding-mask invariance

TEMPLATE_TEST_CASE("padding mask: tokens at padded positions do not change the logits at unpadded positions",
                   "[properties][mask]", (Decoder<Rotary, LayerNorm, GELU>),
                   (Decoder<AbsoluteLearned, RMSNorm, SwiGLU>), (Decoder<NoPosition, LayerNorm, GEGLU>),
                   (Encoder<Rotary, RMSNorm, GELU>), (Encoder<AbsoluteLearned, LayerNorm, SwiGLU>),
                   (Encoder<NoPosition, LayerNorm, GEGLU>)) {
  FloatNet<TestType> net(small_config<TestType>());
  net.eval();
  const Index B = 3, T = 20, k = 5;
  const auto tokens = random_tokens(B, T, kVocab, 4);
  Mask mask(B, T);
  std::vector<std::vector<Index>> padded(B);
  for (Index t = T - k; t < T; ++t) padded[0].push_back(t);  // row 0: the last k positions
  for (Index t = 0; t < 4; ++t) padded[1].push_back(t);      // row 1: left padding (meaningful for a decoder)
  padded[1].push_back(9);                                    //         and a hole
  // row 2: no padding
  for (Index b = 0; b < B; ++b)
    for (Index t : padded[b]) mask(b, t) = 0;
  auto changed = tokens;
  for (Index b = 0; b < B; ++b)
    for (Index t : padded[b]) changed(b, t) = (changed(b, t) + 7) % std::int32_t(kVocab);

  const auto base = forward_copy(net, tokens, mask);
  const auto after = forward_copy(net, changed, mask);
  const auto unmasked = forward_copy(net, changed);
  const auto unmasked_base = forward_copy(net, tokens);
  double moved_without_mask = 0;
  for (Index b = 0; b < B; ++b)
    for (Index t = 0; t < T; ++t) {
      if (std::find(padded[b].begin(), padded[b].end(), t) != padded[b].end()) continue;
      const Index r = b * T + t;
      INFO("batch " << b << ", position " << t);
      REQUIRE(max_diff(base.row(r), after.row(r), kVocab) <= 1e-6 * std::max(1.0, max_abs(base.row(r), kVocab)));
      if (b < 2)
        moved_without_mask = std::max(moved_without_mask, max_diff(unmasked.row(r), unmasked_base.row(r), kVocab));
    }
  CHECK(moved_without_mask > 1e-3);  // the same change without the mask does reach unpadded positions
  for (float x : after.v) REQUIRE(std::isfinite(x));

  SECTION("a row with every key masked stays finite") {
    Mask all(B, T);
    for (Index t = 0; t < T; ++t) all(1, t) = 0;
    const auto l = forward_copy(net, tokens, all);
    for (float x : l.v) REQUIRE(std::isfinite(x));
    // rows 0 and 2 are unaffected by row 1's mask
    const auto free = forward_copy(net, tokens);
    for (Index b : {Index(0), Index(2)})
      REQUIRE(max_diff(l.row(b * T), free.row(b * T), T * kVocab) <=
              1e-6 * std::max(1.0, max_abs(free.row(b * T), T * kVocab)));
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// 3. KV-cached decoding vs full recomputation

TEMPLATE_TEST_CASE("KV cache: cached logits equal the full forward at every position / greedy tokens match",
                   "[properties][cache]", (Decoder<Rotary, LayerNorm, GELU>),
                   (Decoder<AbsoluteLearned, RMSNorm, SwiGLU>), (Decoder<NoPosition, LayerNorm, GEGLU>)) {
  using Net = FloatNet<TestType>;
  Net net(small_config<TestType>());
  net.eval();
  const Index B = 3, L = 40, prefill = 6, chunk = 4;
  const auto seq = random_tokens(B, L, kVocab, 5);
  const auto full = forward_copy(net, seq);
  auto cache = net.make_cache(B);
  Index pos = 0;
  double worst = 0;
  auto feed = [&](Index n) {
    TokenBatch part(B, n);
    for (Index b = 0; b < B; ++b)
      for (Index t = 0; t < n; ++t) part(b, t) = seq(b, pos + t);
    const auto out = net.forward_cached(part, cache);
    REQUIRE(out.rows() == B);
    REQUIRE(out.cols() == kVocab);
    pos += n;
    REQUIRE(cache.position == pos);
    REQUIRE(cache.length == pos);
    for (Index b = 0; b < B; ++b) {
      const float* want = full.row(b * L + pos - 1);
      const double err = max_diff(out.data() + b * kVocab, want, kVocab) / std::max(1.0, max_abs(want, kVocab));
      INFO("after " << pos << " tokens, batch " << b << ": relative error " << err);
      REQUIRE(err <= kLogitTol);
      worst = std::max(worst, err);
    }
  };
  feed(prefill);            // prefill several tokens at once
  feed(chunk);              // a multi-token chunk after a prefill (q_len > 1 with q_offset)
  while (pos < L) feed(1);  // then one token at a time
  INFO(Net::describe() << ": worst relative error cached vs full " << worst);  // measured ≈ 5e-7
  CHECK(worst <= kLogitTol);

  SECTION("greedy generation: the same tokens with and without the cache") {
    const SerialOpenMP serial;
    AutoregressiveWrapper<Net> model(net);
    const auto prompts = random_tokens(B, 5, kVocab, 6);
    const auto cached = model.generate(prompts, 30, {.temperature = 0, .cache_kv = true});
    const auto recomputed = model.generate(prompts, 30, {.temperature = 0, .cache_kv = false});
    REQUIRE(cached.batch == B);
    REQUIRE(cached.length == 30);
    CHECK(cached.data == recomputed.data);
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// 4. Past max_seq_len

TEMPLATE_TEST_CASE("KV cache past max_seq_len: the window slides / with one layer it equals recomputing the window",
                   "[properties][cache]", (Decoder<Rotary, LayerNorm, GELU>), (Decoder<NoPosition, LayerNorm, GEGLU>)) {
  // With depth 1 the cached keys depend only on (token, position), and rotary scores only on relative positions,
  // so decoding with a sliding cache must equal a full forward of the last ≤ max_seq_len tokens. Rotary angles are
  // float32(pos)·inv_freq in float32 (as in x-transformers): at positions ~130 they carry up to ~1e-5 rad of
  // rounding, hence a looser tolerance there (measured ≈ 5e-7 for both).
  using Net = FloatNet<TestType>;
  const SerialOpenMP serial;
  Net net(small_config<TestType>(0, 1));
  net.eval();
  const Index B = 2, total = 3 * kMaxLen - 7;
  const auto seq = random_tokens(B, total, kVocab, 8);
  auto cache = net.make_cache(B);
  const double tol = std::is_same_v<typename TestType::position, Rotary> ? 2e-5 : kLogitTol;
  double worst = 0;
  for (Index pos = 0; pos < total;) {
    const Index n = std::min(total - pos, pos == 0 ? Index(10) : (pos % 17 == 0 ? Index(3) : Index(1)));  // a prefill,
    // then mostly single tokens and some chunks
    TokenBatch part(B, n);
    for (Index b = 0; b < B; ++b)
      for (Index t = 0; t < n; ++t) part(b, t) = seq(b, pos + t);
    const auto out = net.forward_cached(part, cache);
    std::vector<float> got(out.data(), out.data() + out.size());
    pos += n;
    REQUIRE(cache.length == std::min(pos, kMaxLen));
    REQUIRE(cache.position == pos);
    REQUIRE(cache.start + cache.length <= cache.capacity);
    const Index w = std::min(pos, kMaxLen);
    TokenBatch window(B, w);
    for (Index b = 0; b < B; ++b)
      for (Index t = 0; t < w; ++t) window(b, t) = seq(b, pos - w + t);
    const auto full = forward_copy(net, window);
    for (Index b = 0; b < B; ++b) {
      const float* want = full.row(b * w + w - 1);
      const double err = max_diff(got.data() + b * kVocab, want, kVocab) / std::max(1.0, max_abs(want, kVocab));
      INFO("after " << pos << " tokens, batch " << b);
      REQUIRE(err <= tol);
      worst = std::max(worst, err);
    }
  }
  INFO(Net::describe() << ", depth 1, sliding window: worst relative error " << worst);  // measured ≈ 5e-7
  CHECK(worst <= tol);
}

TEST_CASE("generation past max_seq_len: Rotary slides the cache / AbsoluteLearned recomputes the window",
          "[properties][cache]") {
  const SerialOpenMP serial;
  SECTION(
      "Rotary, depth 2: generates 2·max_seq_len tokens with the cache, including a prompt longer than "
      "max_seq_len") {
    using Net = FloatNet<Decoder<Rotary, LayerNorm, GELU>>;
    AutoregressiveWrapper<Net> model(Net(small_config<Decoder<Rotary, LayerNorm, GELU>>()));
    for (Index P : {Index(5), kMaxLen + 7}) {
      const auto prompts = random_tokens(3, P, kVocab, 9);
      const auto out = model.generate(prompts, 2 * kMaxLen, {.temperature = 1.0, .cache_kv = true, .seed = 3});
      REQUIRE(out.length == 2 * kMaxLen);
      for (auto t : out.data) REQUIRE((t >= 0 && t < kVocab));
    }
    // forward_cached directly: the cache never holds more than max_seq_len keys
    Net net(small_config<Decoder<Rotary, LayerNorm, GELU>>());
    auto cache = net.make_cache(1);
    const auto seq = random_tokens(1, 3 * kMaxLen, kVocab, 10);
    for (Index t = 0; t < seq.length; ++t) {
      net.forward_cached(TokensView{seq.data.data() + t, 1, 1}, cache);
      REQUIRE(cache.length <= kMaxLen);
    }
    REQUIRE(cache.position == 3 * kMaxLen);
  }
  SECTION("AbsoluteLearned: cache_kv = true equals cache_kv = false past max_seq_len") {
    using Layers = Decoder<AbsoluteLearned, RMSNorm, SwiGLU>;
    using Net = FloatNet<Layers>;
    AutoregressiveWrapper<Net> model(Net(small_config<Layers>()));
    const auto prompts = random_tokens(3, 5, kVocab, 11);
    const auto cached = model.generate(prompts, 60, {.temperature = 0, .cache_kv = true});
    const auto recomputed = model.generate(prompts, 60, {.temperature = 0, .cache_kv = false});
    CHECK(cached.data == recomputed.data);
    const auto long_prompt = random_tokens(2, kMaxLen + 3, kVocab, 12);  // prompt alone exceeds max_seq_len
    CHECK(model.generate(long_prompt, 10, {.temperature = 0, .cache_kv = true}).data ==
          model.generate(long_prompt, 10, {.temperature = 0, .cache_kv = false}).data);
    // the cache itself refuses positions past max_seq_len, naming the limit
    auto cache = model.net.make_cache(1);
    const auto seq = random_tokens(1, kMaxLen, kVocab, 13);
    model.net.forward_cached(seq, cache);
    const TokenBatch one(1, 1, 2);
    REQUIRE_THROWS_WITH(model.net.forward_cached(one, cache),
                        Contains("absolute positions end at max_seq_len 48") && Contains("position 48"));
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// 5. Batched vs one-by-one

TEMPLATE_TEST_CASE("batched vs one-by-one: forward rows and greedy generation agree", "[properties][batch]",
                   (Decoder<Rotary, LayerNorm, GELU>), (Decoder<AbsoluteLearned, RMSNorm, SwiGLU>),
                   (Decoder<NoPosition, LayerNorm, GEGLU>)) {
  using Net = FloatNet<TestType>;
  Net net(small_config<TestType>());
  net.eval();
  const Index B = 3, T = 30;
  const auto tokens = random_tokens(B, T, kVocab, 14);
  Mask mask(B, T);
  mask(1, 0) = mask(1, 1) = 0;
  for (Index t = 25; t < T; ++t) mask(2, t) = 0;
  for (bool masked : {false, true}) {
    const auto batched = forward_copy(net, tokens, masked ? MaskView(mask) : MaskView{});
    for (Index b = 0; b < B; ++b) {
      TokenBatch one(1, T);
      Mask one_mask(1, T);
      for (Index t = 0; t < T; ++t) one(0, t) = tokens(b, t), one_mask(0, t) = mask(b, t);
      const auto alone = forward_copy(net, one, masked ? MaskView(one_mask) : MaskView{});
      const double err =
          max_diff(alone.row(0), batched.row(b * T), T * kVocab) / std::max(1.0, max_abs(alone.row(0), T * kVocab));
      INFO("row " << b << (masked ? " with mask" : ""));
      CHECK(err <= kLogitTol);
    }
  }
  const SerialOpenMP serial;
  AutoregressiveWrapper<Net> model(net);
  const auto prompts = random_tokens(B, 6, kVocab, 15);
  for (bool cache_kv : {true, false}) {
    const auto together = model.generate(prompts, 25, {.temperature = 0, .cache_kv = cache_kv});
    for (Index b = 0; b < B; ++b) {
      TokenBatch one(1, 6);
      for (Index t = 0; t < 6; ++t) one(0, t) = prompts(b, t);
      const auto alone = model.generate(one, 25, {.temperature = 0, .cache_kv = cache_kv});
      INFO("row " << b << ", cache_kv " << cache_kv);
      CHECK(alone.row(0) == together.row(b));
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// 6. Training vs inference mode

TEMPLATE_TEST_CASE("train vs eval: eval() is deterministic and equals a dropout-free model / train() applies dropout",
                   "[properties][dropout]", (Decoder<Rotary, LayerNorm, GELU>),
                   (Decoder<AbsoluteLearned, RMSNorm, SwiGLU>), (Encoder<NoPosition, LayerNorm, GEGLU>)) {
  using Net = FloatNet<TestType>;
  Net with_dropout(small_config<TestType>(0.25));
  Net without(small_config<TestType>(0.0));
  REQUIRE(with_dropout.parameters().count() == without.parameters().count());
  for (Index i = 0; i < without.parameters().count(); ++i)
    REQUIRE(with_dropout.parameters().values()[i] == without.parameters().values()[i]);  // same seed, same weights
  const auto tokens = random_tokens(2, 20, kVocab, 16);
  const Index n = 2 * 20 * kVocab;

  with_dropout.eval();
  const auto e1 = forward_copy(with_dropout, tokens);
  const auto e2 = forward_copy(with_dropout, tokens);
  without.train();  // rate 0: training mode changes nothing
  const auto reference = forward_copy(without, tokens);
  CHECK(e1.v == e2.v);
  CHECK(max_diff(e1.v.data(), reference.v.data(), n) <= 1e-6 * std::max(1.0, max_abs(reference.v.data(), n)));

  with_dropout.train();
  const auto t1 = forward_copy(with_dropout, tokens);
  const auto t2 = forward_copy(with_dropout, tokens);
  CHECK(max_diff(t1.v.data(), e1.v.data(), n) > 1e-2);
  CHECK(max_diff(t1.v.data(), t2.v.data(), n) > 1e-2);  // a fresh mask each forward
  with_dropout.eval();
  CHECK(forward_copy(with_dropout, tokens).v == e1.v);

  if constexpr (TestType::causal) {  // generation runs in eval mode and restores training mode afterwards
    with_dropout.train();
    AutoregressiveWrapper<Net> a(with_dropout), b(without);
    const auto prompts = random_tokens(2, 4, kVocab, 17);
    CHECK(a.generate(prompts, 12, {.temperature = 0}).data == b.generate(prompts, 12, {.temperature = 0}).data);
    CHECK(a.net.training());
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// 7. Sampling

namespace {
std::vector<double> softmax(const std::vector<double>& z, double temperature = 1.0) {
  const double m = *std::max_element(z.begin(), z.end());
  std::vector<double> p(z.size());
  double s = 0;
  for (std::size_t i = 0; i < z.size(); ++i) s += p[i] = std::exp((z[i] - m) / temperature);
  for (auto& x : p) x /= s;
  return p;
}

/// x-transformers' top_p: sort descending, remove sorted index i > 0 when the cumulative probability before it > thres.
std::vector<bool> top_p_kept(const std::vector<double>& z, double thres) {
  const auto p = softmax(z);
  std::vector<std::size_t> order(z.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](auto a, auto b) { return z[a] > z[b]; });
  std::vector<bool> kept(z.size(), true);
  double before = 0;
  for (std::size_t i = 0; i < order.size(); ++i) {
    if (i > 0 && before > thres) kept[order[i]] = false;
    before += p[order[i]];
  }
  return kept;
}

/// Draws `n` samples; returns the count per token.
std::vector<Index> draw_counts(const Sampling& s, const std::vector<double>& z, Index n) {
  const Index V = Index(z.size());
  Sampler sampler(s, V);
  std::vector<Index> counts(sz(V), 0);
  for (Index i = 0; i < n; ++i) {
    const auto t = sampler(z.data(), std::uint64_t(i));
    REQUIRE((t >= 0 && t < V));
    ++counts[sz(t)];
  }
  return counts;
}

/// Every token's empirical frequency within 4.5 standard errors of `p` (and tokens with p = 0 never drawn).
void require_frequencies(const std::vector<Index>& counts, const std::vector<double>& p, Index n) {
  for (std::size_t i = 0; i < p.size(); ++i) {
    const double f = double(counts[i]) / double(n), se = std::sqrt(p[i] * (1 - p[i]) / double(n));
    INFO("token " << i << ": frequency " << f << ", probability " << p[i] << ", standard error " << se);
    if (p[i] == 0)
      REQUIRE(counts[i] == 0);
    else
      REQUIRE(std::abs(f - p[i]) <= 4.5 * se);
  }
}

std::vector<double> renormalised(const std::vector<double>& p, const std::vector<bool>& kept) {
  std::vector<double> q(p.size(), 0.0);
  double s = 0;
  for (std::size_t i = 0; i < p.size(); ++i)
    if (kept[i]) s += q[i] = p[i];
  for (auto& x : q) x /= s;
  return q;
}
}  // namespace

TEST_CASE("sampling: greedy, top_k, top_p, min_p, temperature, seeds", "[properties][sampling]") {
  const Index V = 20, n = 20000;
  SECTION("temperature 0 is argmax; top_k = 1 is argmax at any temperature") {
    for (std::uint64_t row = 0; row < 30; ++row) {
      const auto z = random_values(V, 100 + row, 2.0);
      const auto argmax = std::int32_t(std::max_element(z.begin(), z.end()) - z.begin());
      Sampler greedy({.temperature = 0}, V);
      REQUIRE(greedy(z.data(), row) == argmax);
      for (double temperature : {0.5, 1.0, 5.0}) {
        Sampler top1({.temperature = temperature, .top_k = 1, .seed = row}, V);
        for (std::uint64_t d = 0; d < 50; ++d) REQUIRE(top1(z.data(), d) == argmax);
      }
    }
  }
  SECTION("temperature 1 and 2 with no filter: frequencies match softmax(z / temperature)") {
    const auto z = random_values(6, 200, 1.0);
    for (double temperature : {1.0, 2.0}) {
      INFO("temperature " << temperature);
      require_frequencies(draw_counts({.temperature = temperature, .top_k = 0, .seed = 5}, z, n),
                          softmax(z, temperature), n);
    }
  }
  SECTION("default filter: top_k = ceil(0.1 · num_tokens)") {
    const auto z = random_values(kVocab, 201, 0.3);  // nearly flat: without the filter every token would appear
    std::vector<std::size_t> order(sz(kVocab));
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](auto a, auto b) { return z[a] > z[b]; });
    std::vector<bool> kept(sz(kVocab), false);
    for (Index i = 0; i < 4; ++i) kept[order[sz(i)]] = true;  // ceil(3.7) = 4
    require_frequencies(draw_counts({.seed = 6}, z, n), renormalised(softmax(z), kept), n);
  }
  SECTION("top_p: probabilities [0.5, 0.3, 0.15, 0.05] (shuffled) with thres 0.7 keep the first two") {
    std::vector<double> z = {std::log(0.15), std::log(0.5), std::log(0.05), std::log(0.3)};
    const auto kept = top_p_kept(z, 0.7);
    REQUIRE(kept == std::vector<bool>{false, true, false, true});
    const auto counts = draw_counts({.top_p = 0.7, .seed = 7}, z, n);
    require_frequencies(counts, {0.0, 0.5 / 0.8, 0.0, 0.3 / 0.8}, n);
    // thres below the top probability still keeps the top token
    REQUIRE(draw_counts({.top_p = 0.1, .seed = 8}, z, 200)[1] == 200);
  }
  SECTION("top_p on random logits equals the shifted-cumulative rule of x-transformers") {
    for (double thres : {0.3, 0.6, 0.9}) {
      const auto z = random_values(V, 202 + std::uint64_t(thres * 10), 1.5);
      const auto kept = top_p_kept(z, thres);
      INFO("thres " << thres);
      require_frequencies(draw_counts({.top_p = thres, .seed = 9}, z, n), renormalised(softmax(z), kept), n);
    }
  }
  SECTION("min_p removes tokens with probability below min_p · max probability") {
    std::vector<double> p = {0.06, 0.3, 0.04, 0.4, 0.2};
    std::vector<double> z;
    for (double x : p) z.push_back(std::log(x) + 3.0);
    const auto counts = draw_counts({.min_p = 0.2, .seed = 10}, z, n);  // limit 0.08: 0.06 and 0.04 go
    require_frequencies(counts, {0.0, 0.3 / 0.9, 0.0, 0.4 / 0.9, 0.2 / 0.9}, n);
  }
  SECTION("the same seed gives the same samples; another seed other samples") {
    const auto z = random_values(V, 203, 0.5);
    Sampler a({.top_k = 0, .seed = 42}, V), b({.top_k = 0, .seed = 42}, V), c({.top_k = 0, .seed = 43}, V);
    Index differ = 0;
    for (std::uint64_t d = 0; d < 200; ++d) {
      const auto x = a(z.data(), d);
      REQUIRE(x == b(z.data(), d));
      REQUIRE(x == a(z.data(), d));  // a draw is addressed by its index, not by call order
      differ += x != c(z.data(), d);
    }
    CHECK(differ > 100);
  }
}

TEST_CASE("generation with eos: pad_value after a row's eos / generation stops once every row is done",
          "[properties][sampling]") {
  using Layers = Decoder<Rotary, LayerNorm, GELU>;
  using Net = FloatNet<Layers>;
  const SerialOpenMP serial;
  AutoregressiveWrapper<Net> model(Net(small_config<Layers>()), {.pad_value = -1});
  const Index length = 20;
  const auto prompts = random_tokens(3, 4, kVocab, 18);
  const auto free = model.generate(prompts, length, {.temperature = 0});
  const std::int32_t eos = free(0, 3);  // a token row 0 does produce
  const auto stopped = model.generate(prompts, length, {.temperature = 0, .eos_token = eos});
  REQUIRE(stopped.length == length);
  for (Index b = 0; b < 3; ++b) {
    bool seen = false;
    for (Index t = 0; t < length; ++t) {
      INFO("batch " << b << ", step " << t);
      REQUIRE(stopped(b, t) == (seen ? -1 : free(b, t)));
      seen = seen || free(b, t) == eos;
    }
  }
  REQUIRE(std::find(stopped.data.begin(), stopped.data.end(), -1) != stopped.data.end());

  // identical rows finish together: the prefill plus one forward per step up to the eos, no more
  Index first = 0;
  while (free(0, first) != eos) ++first;
  TokenBatch same(3, 4);
  for (Index b = 0; b < 3; ++b)
    for (Index t = 0; t < 4; ++t) same(b, t) = prompts(0, t);
  const auto before = model.net.forward_count();
  const auto out = model.generate(same, length, {.temperature = 0, .eos_token = eos});
  CHECK(model.net.forward_count() - before == std::uint64_t(1 + first));
  for (Index b = 0; b < 3; ++b) CHECK(out.row(b) == stopped.row(0));
  const auto count_before_free = model.net.forward_count();
  (void)model.generate(same, length, {.temperature = 0});
  CHECK(model.net.forward_count() - count_before_free == std::uint64_t(length));  // without eos: every step
}

// ---------------------------------------------------------------------------------------------------------------------
// 8. Error paths

TEST_CASE("errors name the offending value and the limit", "[properties][errors]") {
  using Layers = Decoder<Rotary, LayerNorm, GELU>;
  using Net = FloatNet<Layers>;
  Net net(small_config<Layers>());

  SECTION("token ids out of range") {
    auto tokens = random_tokens(2, 8, kVocab, 19);
    tokens(1, 5) = 37;
    REQUIRE_THROWS_WITH(net.forward(tokens), Contains("token id 37 >= num_tokens 37 at batch 1, position 5"));
    tokens(1, 5) = 0;
    tokens(0, 2) = -3;
    REQUIRE_THROWS_WITH(net.forward(tokens), Contains("token id -3 < 0 at batch 0, position 2"));
    REQUIRE_THROWS_AS(net.forward(tokens), xtr::Error);
    auto cache = net.make_cache(2);
    REQUIRE_THROWS_WITH(net.forward_cached(tokens, cache), Contains("token id -3 < 0 at batch 0, position 2"));
    AutoregressiveWrapper<Net> model(net);
    REQUIRE_THROWS_WITH(model(tokens), Contains("token id -3 < 0 at batch 0, position 2"));
    tokens(0, 2) = 40;
    REQUIRE_THROWS_WITH(model(tokens), Contains("token id 40 >= num_tokens 37 at batch 0, position 2"));
    REQUIRE_THROWS_WITH(model.generate(tokens, 3),
                        Contains("prompt token id 40") && Contains("num_tokens 37") && Contains("batch 0, position 2"));
  }
  SECTION("sequence longer than max_seq_len") {
    const auto tokens = random_tokens(1, kMaxLen + 1, kVocab, 20);
    REQUIRE_THROWS_WITH(net.forward(tokens), Contains("sequence length 49 > max_seq_len 48"));
    auto cache = net.make_cache(1);
    REQUIRE_THROWS_WITH(net.forward_cached(tokens, cache), Contains("49") && Contains("max_seq_len 48"));
    AutoregressiveWrapper<Net> model(net);
    const auto rows = random_tokens(1, kMaxLen + 2, kVocab, 21);
    REQUIRE_THROWS_WITH(model(rows), Contains("seq_len 49 <= max_seq_len 48"));
    REQUIRE_NOTHROW(model(random_tokens(1, kMaxLen + 1, kVocab, 22)));  // seq_len + 1 tokens is the limit
  }
  SECTION("mask shape mismatch") {
    const auto tokens = random_tokens(2, 6, kVocab, 23);
    Mask mask(2, 5);
    REQUIRE_THROWS_WITH(net.forward(tokens, mask), Contains("mask shape (2, 5) does not match tokens (2, 6)"));
    Mask mask_b(3, 6);
    REQUIRE_THROWS_WITH(net.forward(tokens, mask_b), Contains("mask shape (3, 6)"));
    AutoregressiveWrapper<Net> model(net);
    REQUIRE_THROWS_WITH(model(tokens, mask), Contains("mask shape (2, 5) does not match the batch (2, 6)"));
  }
  SECTION("batches of the wrong shape and empty batches") {
    AutoregressiveWrapper<Net> model(net);
    const auto one = random_tokens(2, 1, kVocab, 24);
    REQUIRE_THROWS_WITH(model(one), Contains("at least 2 tokens per row") && Contains("got 1"));
    const TokenBatch empty(0, 5);
    REQUIRE_THROWS_WITH(net.forward(empty), Contains("empty token batch (0, 5)"));
    REQUIRE_THROWS_WITH(net.forward(TokenBatch(2, 0)), Contains("empty token batch (2, 0)"));
    REQUIRE_THROWS_WITH(model(empty), Contains("empty batch"));
    REQUIRE_THROWS_WITH(model.generate(empty, 4), Contains("empty prompt batch (0, 5)"));
    REQUIRE_THROWS_WITH(model.generate(one, -1), Contains("length must be >= 0, got -1"));
    auto cache = net.make_cache(3);
    REQUIRE_THROWS_WITH(net.forward_cached(one, cache), Contains("cache holds 3 sequences, tokens have batch 2"));
  }
  SECTION("invalid configurations") {
    auto bad = [](auto edit) {
      auto c = small_config<Layers>();
      edit(c);
      return c;
    };
    REQUIRE_THROWS_WITH(Net(bad([](auto& c) { c.layers.dim = 0; })), Contains("layers.dim must be > 0, got 0"));
    REQUIRE_THROWS_WITH(Net(bad([](auto& c) { c.num_tokens = 0; })), Contains("num_tokens must be > 0, got 0"));
    REQUIRE_THROWS_WITH(Net(bad([](auto& c) { c.max_seq_len = -4; })), Contains("max_seq_len must be > 0, got -4"));
    REQUIRE_THROWS_WITH(Net(bad([](auto& c) { c.layers.depth = 0; })), Contains("layers.depth must be > 0, got 0"));
    REQUIRE_THROWS_WITH(Net(bad([](auto& c) { c.layers.kv_heads = 3; })),
                        Contains("layers.heads 4 must be a multiple of layers.kv_heads 3"));
    REQUIRE_THROWS_WITH(Net(bad([](auto& c) { c.layers.attn_dropout = 1.0; })),
                        Contains("dropout rates must be in [0, 1), got 1"));
    REQUIRE_THROWS_WITH(Net(bad([](auto& c) { c.emb_dropout = -0.1; })),
                        Contains("dropout rates must be in [0, 1), got -0.1"));
    REQUIRE_THROWS_WITH(Net(bad([](auto& c) { c.layers.rotary_dim = 3; })),
                        Contains("layers.rotary_dim 3 must be even") && Contains("dim_head 8"));
    REQUIRE_THROWS_WITH(Net(bad([](auto& c) { c.layers.rotary_dim = 10; })),
                        Contains("layers.rotary_dim 10") && Contains("at most dim_head 8"));
  }
  SECTION("sampling options out of range") {
    REQUIRE_THROWS_WITH(Sampler({.temperature = -1}, kVocab), Contains("temperature must be >= 0, got -1"));
    REQUIRE_THROWS_WITH(Sampler({.top_k = -2}, kVocab), Contains("top_k must be >= 0") && Contains("got -2"));
    REQUIRE_THROWS_WITH(Sampler({.top_p = 1.5}, kVocab), Contains("top_p must be in [0, 1], got 1.5"));
    REQUIRE_THROWS_WITH(Sampler({.min_p = -0.1}, kVocab), Contains("min_p must be in [0, 1], got -0.1"));
    AutoregressiveWrapper<Net> model(net);
    const auto prompts = random_tokens(1, 3, kVocab, 25);
    REQUIRE_THROWS_WITH(model.generate(prompts, 2, {.top_p = 2}), Contains("top_p must be in [0, 1], got 2"));
  }
  SECTION("backward() on a stale loss, and after generation") {
    AutoregressiveWrapper<Net> model(net);
    const auto x = random_tokens(2, 9, kVocab, 26), y = random_tokens(2, 9, kVocab, 27);
    auto first = model(x);
    auto second = model(y);
    REQUIRE_THROWS_WITH(first.backward(), Contains("backward() on a loss whose forward pass was replaced"));
    REQUIRE_NOTHROW(second.backward());
    (void)model.generate(random_tokens(1, 3, kVocab, 28), 2);
    REQUIRE_THROWS_WITH(second.backward(), Contains("backward() on a loss whose forward pass was replaced"));
    REQUIRE_THROWS_WITH(model.net.backward(1.0f), Contains("backward() needs a training forward() first"));
    REQUIRE_THROWS_WITH(Loss().backward(), Contains("this loss has no backward"));
  }
}

TEST_CASE("generate() that throws on its options leaves the training mode as it was", "[properties][errors]") {
  using Layers = Decoder<Rotary, LayerNorm, GELU>;
  using Net = FloatNet<Layers>;
  AutoregressiveWrapper<Net> model(Net(small_config<Layers>(0.1)));
  model.train();
  const auto prompts = random_tokens(1, 3, kVocab, 29);
  REQUIRE_THROWS_WITH(model.generate(prompts, 2, {.temperature = -1}), Contains("temperature must be >= 0, got -1"));
  CHECK(model.net.training());  // else later training steps silently run without dropout
  (void)model.generate(prompts, 2);
  CHECK(model.net.training());
}

TEST_CASE("backward() twice on one forward pass is an error / generate() without a seed varies per call", "[errors]") {
  using Net = TransformerWrapper<Decoder<Rotary, LayerNorm, GELU>>;
  AutoregressiveWrapper<Net> model(Net({.num_tokens = 20, .max_seq_len = 16,
                                        .layers = {.dim = 16, .depth = 1, .heads = 2, .dim_head = 8}}));
  const auto x = xtr::testing::random_tokens(2, 9, 20, 3);
  auto loss = model(x);
  loss.backward();
  REQUIRE_THROWS_WITH(loss.backward(), Catch::Contains("backward() called twice for the same forward pass"));
  const TokenBatch prompt{{1, 2, 3}};
  const auto a = model.generate(prompt, 24, {.top_k = 0}), b = model.generate(prompt, 24, {.top_k = 0});
  REQUIRE(a.data != b.data);
  const auto c = model.generate(prompt, 24, {.top_k = 0, .seed = 5}), d = model.generate(prompt, 24, {.top_k = 0, .seed = 5});
  REQUIRE(c.data == d.data);
}

TEST_CASE("bfloat16 rounding is to nearest even and keeps NaN", "[decode][bf16]") {
  REQUIRE(cpu::float_to_bf16(1.0f) == 0x3F80);
  REQUIRE(cpu::bf16_to_float(0x3F80) == 1.0f);
  // 1 + 2^-8 is halfway between bf16 1.0 (even) and 1 + 2^-7: rounds to even; a hair more rounds up
  REQUIRE(cpu::float_to_bf16(1.0f + 0x1p-8f) == 0x3F80);
  REQUIRE(cpu::float_to_bf16(1.0f + 0x1p-8f + 0x1p-20f) == 0x3F81);
  REQUIRE(cpu::float_to_bf16(1.0f + 3 * 0x1p-8f) == 0x3F82);  // halfway above odd 0x3F81: up to even
  REQUIRE(std::isnan(cpu::bf16_to_float(cpu::float_to_bf16(std::nanf("")))));
  for (float f : {3.14159f, -2.5e-3f, 6.0e4f})
    REQUIRE(std::abs(cpu::bf16_to_float(cpu::float_to_bf16(f)) - f) <= std::abs(f) * 0x1p-8f);
}

TEST_CASE("decoding from bfloat16 weights tracks float decoding within the rounding", "[decode][bf16]") {
  using Net = TransformerWrapper<Decoder<Rotary, LayerNorm, GELU>>;
  Net net({.num_tokens = 64, .max_seq_len = 40, .layers = {.dim = 64, .depth = 2, .heads = 4, .dim_head = 16}});
  net.eval();
  const auto prompt = random_tokens(3, 12, 64, 21), step = random_tokens(3, 1, 64, 22);
  auto exact = net.make_cache(3), rounded = net.make_cache(3);
  net.round_weights_to_bf16(rounded);
  for (const auto& tokens : {prompt, step, step}) {  // a prefill (widened bf16 GEMM), then two single tokens (GEMV)
    auto a = net.forward_cached(tokens, exact);
    const std::vector<float> reference(a.data(), a.data() + a.size());
    auto b = net.forward_cached(tokens, rounded);
    double worst = 0, scale = 0, moved = 0;
    for (std::size_t i = 0; i < reference.size(); ++i) {
      worst = std::max(worst, double(std::abs(b.data()[i] - reference[i])));
      scale = std::max(scale, double(std::abs(reference[i])));
      moved += b.data()[i] != reference[i];
    }
    INFO("worst " << worst << " of scale " << scale);
    REQUIRE(worst <= 3e-2 * scale);  // weights carry 8 significant bits
    REQUIRE(moved > 0);              // the rounded weights were really used
  }
  AutoregressiveWrapper<Net> model(std::move(net));
  REQUIRE_THROWS_WITH(model.generate(prompt, 4, {.cache_kv = false, .bf16_weights = true}),
                      Contains("bf16_weights applies to KV-cached decoding"));
  const auto greedy = model.generate(prompt, 8, {.temperature = 0, .bf16_weights = true});
  REQUIRE(greedy.batch == 3);
  REQUIRE(greedy.length == 8);
}

}  // namespace test_properties
