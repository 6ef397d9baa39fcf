// Generation strategies beyond sampling: beam search (exhaustive optimality, beams = 1 is greedy, cached = recomputed,
// eos, stochastic beams, XTransformer), contrastive decoding (a hand-computed loop, several amateurs), ragged prompts
// (each row as it would be alone), mask_prob (statistics, hidden keys, gradients), their errors, and golden checks
// against x-transformers 2.31.10 (tools/xt_fixture_generation.py).
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <vector>

#include "fixture_io.hpp"
#include "testing.hpp"
#include "xtr/xtr.hpp"

namespace test_generation {  // this file's names (the test executable may compile the files as one unit)

using namespace xtr;
using Catch::Contains;
using xtr::testing::random_tokens;
using xtr::testing::SerialOpenMP;
namespace st = xtr::safetensors;
namespace xt = xtr::x_transformers;

namespace {

using RotaryLayers = Decoder<Rotary, LayerNorm, GELU>;
using AbsoluteLayers = Decoder<AbsoluteLearned, RMSNorm, GELU>;
template <class Layers, class T = double>
using Model = AutoregressiveWrapper<TransformerWrapper<Layers, Cpu<T>>>;

TransformerConfig config(Index vocab, Index max_len, Index depth = 2, std::uint64_t seed = 5) {
  return {.num_tokens = vocab,
          .max_seq_len = max_len,
          .layers = {.dim = 16, .depth = depth, .heads = 2, .dim_head = 8},
          .seed = seed};
}

/// Spreads the logits (a fresh model's are nearly uniform): beams then have distinct scores.
template <class Store>
void sharpen(Store& params, std::uint64_t seed, double scale = 0.6) {
  const auto noise = xtr::testing::random_values(params.count(), seed, scale);
  for (Index i = 0; i < params.count(); ++i) params.values()[i] += noise[std::size_t(i)];
}

/// log p(continuation | prompt) from full forward passes (no cache), stopping after an eos when given.
template <class M>
double sequence_log_prob(M& model, const std::vector<std::int32_t>& prompt, const std::vector<std::int32_t>& tokens,
                         std::optional<std::int32_t> eos = {}) {
  std::vector<std::int32_t> seq = prompt;
  double total = 0;
  for (std::int32_t t : tokens) {
    const auto logits = model.net.forward({seq.data(), 1, Index(seq.size())});
    const Index V = logits.cols();
    const auto* row = logits.data() + (Index(seq.size()) - 1) * V;
    double m = -1e300, sum = 0;
    for (Index v = 0; v < V; ++v) m = std::max(m, double(row[v]));
    for (Index v = 0; v < V; ++v) sum += std::exp(double(row[v]) - m);
    total += double(row[t]) - m - std::log(sum);
    seq.push_back(t);
    if (eos && t == *eos) break;
  }
  return total;
}

/// A one-layer KV cache (batch, heads, capacity, dim_head) = `shape` in `format` whose K and V hold the value i at
/// element i, rows [start, start + length) of each head live; cached_value(c.k, c.k_half, i) reads either storage back.
KVCache<double> numbered_cache(KVFormat format, Shape shape, Index start, Index length) {
  KVCache<double> c;
  c.batch = shape.extent[0];
  c.capacity = shape.extent[2];
  c.start = start;
  c.length = length;
  c.format = format;
  if (format == KVFormat::f32) {
    c.k.emplace_back(shape);
    c.v.emplace_back(shape);
    for (Index i = 0; i < shape.numel(); ++i) c.k[0][i] = c.v[0][i] = double(i);
  } else {
    c.k_half.emplace_back(shape, Uninitialized{});
    c.v_half.emplace_back(shape, Uninitialized{});
    for (Index i = 0; i < shape.numel(); ++i)
      c.k_half[0][i] = c.v_half[0][i] = {xtr::detail::float_to_half_bits_nearest(float(i))};
  }
  return c;
}
double cached_value(const std::vector<Tensor<double>>& layers, const std::vector<Tensor<Half>>& halves, Index i) {
  return layers.empty() ? double(xtr::detail::half_bits_to_float(halves[0][i].bits)) : layers[0][i];
}

template <class M>
TokenBatch greedy(M& model, TokensView prompts, Index n, bool cache = true) {
  return model.generate(prompts, n, {.temperature = 0, .cache_kv = cache});
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------------
// Beam search

TEST_CASE("beam search with beams >= V^length finds the most probable sequence, and ranks every hypothesis",
          "[generation][beam]") {
  const SerialOpenMP serial;
  Model<RotaryLayers> model(TransformerWrapper<RotaryLayers, Cpu<double>>(config(3, 16)));
  sharpen(model.parameters(), 9);
  const std::vector<std::int32_t> prompt = {2, 0, 1};
  const TokenBatch prompts({{2, 0, 1}});
  const Index length = 3, V = 3;
  // every continuation, scored by full forward passes
  std::vector<std::pair<double, std::vector<std::int32_t>>> all;
  for (Index code = 0; code < 27; ++code) {
    std::vector<std::int32_t> seq = {std::int32_t(code / 9), std::int32_t(code / 3 % 3), std::int32_t(code % 3)};
    all.push_back({sequence_log_prob(model, prompt, seq), seq});
  }
  std::sort(all.begin(), all.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  for (bool cache : {true, false}) {
    INFO("cache_kv " << cache);
    const auto r = model.beam_search(prompts, length, {.beams = 27, .cache_kv = cache});
    REQUIRE(r.beams.size() == 27);
    CHECK(r.tokens.row(0) == all[0].second);
    for (std::size_t j = 0; j < all.size(); ++j) {
      INFO("beam " << j);
      CHECK(r.beams[j].row(0) == all[j].second);
      CHECK(r.scores[j][0] == Approx(all[j].first).epsilon(1e-10));
    }
    // fewer beams than sequences: the best still scores no more than the optimum, and its score is its log p
    const auto narrow = model.beam_search(prompts, length, {.beams = 2, .cache_kv = cache});
    CHECK(narrow.scores[0][0] <= all[0].first + 1e-12);
    CHECK(narrow.scores[0][0] == Approx(sequence_log_prob(model, prompt, narrow.tokens.row(0))).epsilon(1e-10));
  }
  (void)V;
}

TEST_CASE("beam search with an eos token: finished hypotheses leave the beam, exhaustive search ranks them all",
          "[generation][beam]") {
  const SerialOpenMP serial;
  Model<RotaryLayers> model(TransformerWrapper<RotaryLayers, Cpu<double>>(config(3, 16)), {.pad_value = -1});
  sharpen(model.parameters(), 4);
  const std::vector<std::int32_t> prompt = {1, 2};
  const TokenBatch prompts({{1, 2}});
  const std::int32_t eos = 0;
  // hypotheses: sequences ending at their first eos (length 1 … 3) and eos-free sequences of length 3
  std::vector<std::pair<double, std::vector<std::int32_t>>> all;
  for (Index code = 0; code < 27; ++code) {
    std::vector<std::int32_t> seq = {std::int32_t(code / 9), std::int32_t(code / 3 % 3), std::int32_t(code % 3)};
    const auto first = std::find(seq.begin(), seq.end(), eos);
    if (first != seq.end()) {
      if (std::find(first + 1, seq.end(), 1) != seq.end() || std::find(first + 1, seq.end(), 2) != seq.end() ||
          std::count(first, seq.end(), eos) != seq.end() - first)
        continue;  // count each eos-ended prefix once: its tail is all eos
      seq.erase(first + 1, seq.end());
    }
    all.push_back({sequence_log_prob(model, prompt, seq, eos), seq});
  }
  REQUIRE(all.size() == 15);
  for (double penalty : {0.0, 1.0}) {
    auto ranked = all;
    for (auto& [score, seq] : ranked) score /= std::pow(double(seq.size()), penalty);
    std::stable_sort(ranked.begin(), ranked.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
    for (bool cache : {true, false}) {
      INFO("length_penalty " << penalty << ", cache_kv " << cache);
      const auto r = model.beam_search(prompts, 3, {.beams = 27, .eos_token = eos, .length_penalty = penalty,
                                                    .cache_kv = cache});
      for (std::size_t j = 0; j < ranked.size(); ++j) {
        INFO("beam " << j);
        auto expected = ranked[j].second;
        expected.resize(3, -1);  // pad_value after the eos
        CHECK(r.beams[j].row(0) == expected);
        CHECK(r.scores[j][0] == Approx(ranked[j].first).epsilon(1e-10));
      }
      for (std::size_t j = ranked.size(); j < 27; ++j) CHECK(r.scores[j][0] == -std::numeric_limits<double>::infinity());
    }
  }
}

TEST_CASE("beam search: beams = 1 is greedy decoding, cached = recomputed, the cache moves with the beams",
          "[generation][beam]") {
  const SerialOpenMP serial;
  Model<RotaryLayers> model(TransformerWrapper<RotaryLayers, Cpu<double>>(config(29, 24, 2, 8)));
  sharpen(model.parameters(), 2, 0.3);
  const auto prompts = random_tokens(3, 5, 29, 41);
  for (bool cache : {true, false}) {
    const auto one = model.beam_search(prompts, 12, {.beams = 1, .cache_kv = cache});
    CHECK(one.tokens.data == greedy(model, prompts, 12, cache).data);
  }
  const auto cached = model.beam_search(prompts, 19, {.beams = 4, .cache_kv = true});
  const auto recomputed = model.beam_search(prompts, 19, {.beams = 4, .cache_kv = false});
  for (std::size_t j = 0; j < 4; ++j) {
    CHECK(cached.beams[j].data == recomputed.beams[j].data);
    for (Index b = 0; b < 3; ++b) CHECK(cached.scores[j][std::size_t(b)] == Approx(recomputed.scores[j][std::size_t(b)]).epsilon(1e-10));
  }
  // past max_seq_len (24) with one layer: the sliding cache holds what recomputing the last 24 tokens computes
  Model<RotaryLayers> shallow(TransformerWrapper<RotaryLayers, Cpu<double>>(config(29, 24, 1, 8)));
  sharpen(shallow.parameters(), 2, 0.3);
  const auto slid = shallow.beam_search(prompts, 30, {.beams = 4, .cache_kv = true});
  const auto window = shallow.beam_search(prompts, 30, {.beams = 4, .cache_kv = false});
  for (std::size_t j = 0; j < 4; ++j) {
    CHECK(slid.beams[j].data == window.beams[j].data);
    for (Index b = 0; b < 3; ++b) CHECK(slid.scores[j][std::size_t(b)] == Approx(window.scores[j][std::size_t(b)]).epsilon(1e-8));  // rotary angles of other positions
  }
  // scores are descending and each is its hypothesis' log-probability
  for (Index b = 0; b < 3; ++b) {
    for (std::size_t j = 1; j < 4; ++j) CHECK(cached.scores[j][std::size_t(b)] <= cached.scores[j - 1][std::size_t(b)]);
    const auto short_run = model.beam_search(prompts, 6, {.beams = 4});
    CHECK(short_run.scores[0][std::size_t(b)] ==
          Approx(sequence_log_prob(model, prompts.row(b), short_run.tokens.row(b))).epsilon(1e-10));
  }
  // the row reordering of the cache itself: rows continue their parents' keys and values, (batch 4, 2 heads,
  // capacity 3, dim_head 2), live rows 1 and 2 of each head; a cache of halves moves the same way
  const auto at = [](Index r, Index h, Index j, Index d) { return ((r * 2 + h) * 3 + j) * 2 + d; };
  const std::vector<Index> parent = {1, 1, 3, 2};
  std::vector<std::byte> scratch;
  for (const KVFormat format : {KVFormat::f32, KVFormat::f16}) {
    INFO(kv_format_name(format));
    KVCache<double> c = numbered_cache(format, Shape{4, 2, 3, 2}, 1, 2);
    c.reorder_rows(parent, 2, scratch);
    for (Index r = 0; r < 4; ++r)
      for (Index h = 0; h < 2; ++h)
        for (Index j = 0; j < 3; ++j)
          for (Index d = 0; d < 2; ++d) {
            const Index from = j == 0 ? r : parent[std::size_t(r)];  // rows outside the live ones are not touched
            CHECK(cached_value(c.k, c.k_half, at(r, h, j, d)) == double(at(from, h, j, d)));
            CHECK(cached_value(c.v, c.v_half, at(r, h, j, d)) == double(at(from, h, j, d)));
          }
    const std::vector<Index> across = {2, 1, 3, 2};
    REQUIRE_THROWS_WITH(c.reorder_rows(across, 2, scratch), Contains("row 0 cannot continue row 2 (outside its group of 2"));
  }
}

TEST_CASE("the KV cache grows with what is decoded: doubled up to its full size, the live rows kept, then slides",
          "[generation]") {
  SECTION("make_room: 3 live rows at row 2 of a 5-row run move to the front of a 10-row one, for floats and halves") {
    const auto at = [](Index capacity, Index r, Index h, Index j) { return (r * 2 + h) * capacity + j; };  // dim_head 1
    for (const KVFormat format : {KVFormat::f32, KVFormat::f16}) {
      INFO(kv_format_name(format));
      KVCache<double> c = numbered_cache(format, Shape{2, 2, 5, 1}, 2, 3);
      c.make_room(0, 12);  // fits: nothing moves
      CHECK(c.capacity == 5);
      CHECK(c.start == 2);
      c.make_room(1, 12);  // 2 + 3 + 1 > 5: doubled to 10, the live rows at the front
      REQUIRE(c.capacity == 10);
      CHECK(c.start == 0);
      CHECK(c.length == 3);
      const auto& t = format == KVFormat::f32 ? c.v[0].shape() : c.v_half[0].shape();
      CHECK(t.extent[2] == 10);
      for (Index r = 0; r < 2; ++r)
        for (Index h = 0; h < 2; ++h)
          for (Index j = 0; j < 3; ++j) {
            CHECK(cached_value(c.k, c.k_half, at(10, r, h, j)) == double(at(5, r, h, j + 2)));
            CHECK(cached_value(c.v, c.v_half, at(10, r, h, j)) == double(at(5, r, h, j + 2)));
          }
      c.make_room(8, 12);  // 3 + 8 rows: grown to the full size, 12, not 20
      CHECK(c.capacity == 12);
      CHECK(c.start == 0);
      for (Index r = 0; r < 2; ++r)
        for (Index h = 0; h < 2; ++h)
          for (Index j = 0; j < 3; ++j) CHECK(cached_value(c.v, c.v_half, at(12, r, h, j)) == double(at(5, r, h, j + 2)));
      c.start = 8;  // at its full size the live rows (rows 8…10 here) move to the front of the same run
      const double* before = format == KVFormat::f32 ? c.v[0].data() : nullptr;
      c.make_room(2, 12);
      CHECK(c.capacity == 12);
      CHECK(c.start == 0);
      if (before) CHECK(c.v[0].data() == before);
      CHECK_THROWS_WITH(c.make_room(10, 12), Contains("3 live rows and 10 new ones exceed its 12 rows"));
    }
  }
  SECTION("a model's cache: empty when made, then as long as the decoded rows need, until 2 · max_seq_len") {
    const SerialOpenMP serial;
    TransformerWrapper<RotaryLayers, Cpu<double>> net(config(17, 8));  // full size: 16 rows per head
    auto cache = net.make_cache(1);
    CHECK(cache.capacity == 0);
    const auto tokens = random_tokens(1, 40, 17, 2);
    const auto step = [&](Index from, Index n) {
      (void)net.forward_cached(TokensView{tokens.data.data() + from, 1, n}, cache);
    };
    step(0, 3);
    CHECK(cache.capacity == 3);
    step(3, 1);
    CHECK(cache.capacity == 6);
    step(4, 3);
    CHECK(cache.capacity == 12);
    for (Index i = 7; i < 30; ++i) step(i, 1);  // the window slides over a buffer of its full size
    CHECK(cache.capacity == 16);
    CHECK(cache.length == 8);
    // the rows a caller expects (generate: prompt and new tokens) are the first size, at most the full one
    CHECK(net.make_cache(2, 5).capacity == 5);
    CHECK(net.make_cache(2, 50).capacity == 16);
    CHECK_THROWS_WITH(net.make_cache(2, -1), Contains("make_cache: rows -1 < 0"));
  }
}

TEST_CASE("stochastic beam search: seeded, varies with the seed, scores are log-probabilities, temperature 0 is "
          "deterministic beam search", "[generation][beam]") {
  const SerialOpenMP serial;
  Model<RotaryLayers> model(TransformerWrapper<RotaryLayers, Cpu<double>>(config(29, 24, 2, 8)));
  const auto prompts = random_tokens(2, 4, 29, 3);
  const BeamSearchOptions o{.beams = 3, .stochastic = true, .temperature = 1.0, .seed = 7};
  const auto a = model.beam_search(prompts, 8, o), b = model.beam_search(prompts, 8, o);
  CHECK(a.tokens.data == b.tokens.data);
  bool differs = false;
  for (std::uint64_t seed = 8; seed < 14 && !differs; ++seed) {
    auto other = o;
    other.seed = seed;
    differs = model.beam_search(prompts, 8, other).tokens.data != a.tokens.data;
  }
  CHECK(differs);
  for (Index r = 0; r < 2; ++r)
    CHECK(a.scores[0][std::size_t(r)] == Approx(sequence_log_prob(model, prompts.row(r), a.tokens.row(r))).epsilon(1e-10));
  auto cold = o;
  cold.temperature = 0;
  CHECK(model.beam_search(prompts, 8, cold).tokens.data == model.beam_search(prompts, 8, {.beams = 3}).tokens.data);
}

/// A small encoder-decoder over 13 tokens with sharpened weights (decisive greedy choices).
using SmallSeq2Seq = XTransformer<Encoder<Rotary, LayerNorm, GELU>, Decoder<Rotary, LayerNorm, GELU, CrossAttend>,
                                  Cpu<double>>;
SmallSeq2Seq small_seq2seq(std::uint64_t seed, Index decoder_max_seq_len) {
  SmallSeq2Seq model({.dim = 16,
                      .encoder = {.num_tokens = 13, .max_seq_len = 12, .layers = {.depth = 1, .heads = 2, .dim_head = 8}},
                      .decoder = {.num_tokens = 13, .max_seq_len = decoder_max_seq_len,
                                  .layers = {.depth = 2, .heads = 2, .dim_head = 8}},
                      .seed = seed});
  sharpen(model.parameters(), 5, 0.4);
  return model;
}

TEST_CASE("XTransformer beam search: beams = 1 is greedy, cached = recomputed", "[generation][beam][seq2seq]") {
  const SerialOpenMP serial;
  auto model = small_seq2seq(3, 12);
  const auto src = random_tokens(2, 7, 13, 1);
  Mask src_mask(2, 7);
  src_mask(1, 6) = src_mask(1, 5) = 0;
  const auto start = random_tokens(2, 1, 13, 2);
  const auto greedy_out = model.generate(src, start, 9, src_mask, {.temperature = 0});
  CHECK(model.beam_search(src, start, 9, src_mask, {.beams = 1}).tokens.data == greedy_out.data);
  const auto cached = model.beam_search(src, start, 9, src_mask, {.beams = 3, .cache_kv = true});
  const auto recomputed = model.beam_search(src, start, 9, src_mask, {.beams = 3, .cache_kv = false});
  for (std::size_t j = 0; j < 3; ++j) {
    CHECK(cached.beams[j].data == recomputed.beams[j].data);
    for (std::size_t b = 0; b < 2; ++b) CHECK(cached.scores[j][b] == Approx(recomputed.scores[j][b]).epsilon(1e-10));
  }
}

TEST_CASE("XTransformer generation: ragged start tokens, streaming, a contrastive amateur and a draft",
          "[generation][seq2seq]") {
  // The encoder-decoder's generate() takes the same Sampling as AutoregressiveWrapper: every strategy runs with the
  // encoding as the decoder's context. Amateurs and drafts are decoder-only language models over the target tokens
  // (they see the target prefix, not the source).
  const SerialOpenMP serial;
  auto model = small_seq2seq(4, 16);
  const auto src = random_tokens(2, 7, 13, 1);
  Mask src_mask(2, 7);
  src_mask(1, 6) = 0;
  const auto start = random_tokens(2, 3, 13, 2);
  for (const bool cache : {true, false}) {
    INFO("cache_kv " << cache);
    const auto plain = model.generate(src, start, 8, src_mask, {.temperature = 0, .cache_kv = cache});
    // ragged: row 1's start is its first token only; each row equals that row generated alone
    Sampling ragged{.temperature = 0, .cache_kv = cache};
    ragged.prompt_lens = {3, 1};
    const auto both = model.generate(src, start, 8, src_mask, ragged);
    for (Index r = 0; r < 2; ++r) {
      const Index len = r == 0 ? 3 : 1;
      TokenBatch src_r(1, 7), start_r(1, len);
      Mask mask_r(1, 7);
      for (Index t = 0; t < 7; ++t) {
        src_r.data[std::size_t(t)] = src.data[std::size_t(r * 7 + t)];
        mask_r(0, t) = src_mask(r, t);
      }
      for (Index t = 0; t < len; ++t) start_r.data[std::size_t(t)] = start.data[std::size_t(r * 3 + t)];
      const auto alone = model.generate(src_r, start_r, 8, mask_r, {.temperature = 0, .cache_kv = cache});
      CHECK(both.row(r) == alone.row(0));
    }
    // streaming: the callback sees exactly the tokens returned, in order
    Sampling streamed{.temperature = 0, .cache_kv = cache};
    std::vector<std::vector<std::int32_t>> seen(2);
    streamed.on_tokens = [&](Index row, std::span<const std::int32_t> t) {
      seen[std::size_t(row)].insert(seen[std::size_t(row)].end(), t.begin(), t.end());
      return true;
    };
    (void)model.generate(src, start, 8, src_mask, streamed);
    for (Index r = 0; r < 2; ++r) CHECK(seen[std::size_t(r)] == plain.row(r));
    // a decoder-only model over the target vocabulary as amateur (β = 0 leaves greedy unchanged) and as draft
    // (greedy speculative decoding gives the model's own tokens)
    Model<RotaryLayers> lm(TransformerWrapper<RotaryLayers, Cpu<double>>(
        {.num_tokens = 13, .max_seq_len = 16, .layers = {.dim = 16, .depth = 1, .heads = 2, .dim_head = 8}, .seed = 9}));
    Sampling contrastive{.temperature = 0, .cache_kv = cache};
    contrastive.amateurs.emplace_back(lm, 0.1, 0.0);
    CHECK(model.generate(src, start, 8, src_mask, contrastive).data == plain.data);
    contrastive.amateurs.clear();
    contrastive.amateurs.emplace_back(lm, 0.1, 0.5);
    const auto contrasted = model.generate(src, start, 8, src_mask, contrastive);
    CHECK(contrasted.batch == 2);
    Sampling speculative{.temperature = 0, .cache_kv = cache};
    speculative.draft.emplace(lm);
    speculative.draft_tokens = 3;
    CHECK(model.generate(src, start, 8, src_mask, speculative).data == plain.data);
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// Contrastive decoding

TEST_CASE("contrastive decoding: the step formula, greedy against a hand-written loop, one and two amateurs",
          "[generation][contrastive]") {
  const SerialOpenMP serial;
  // the formula on fixed numbers: max e = 2, log 0.5 + 2 = 1.307: e = 1 is cut, e = 1.5 and 2 are contrasted
  const double e[3] = {1.0, 1.5, 2.0}, a[3] = {0.0, 3.0, 1.0};
  double c[3];
  contrastive_logits(e, a, 3, 0.5, 0.25, c);
  CHECK(c[0] == -std::numeric_limits<double>::max());
  CHECK(c[1] == Approx(1.25 * 1.5 - 0.25 * 3.0));
  CHECK(c[2] == Approx(1.25 * 2.0 - 0.25 * 1.0));

  const Index V = 17;
  Model<RotaryLayers> expert(TransformerWrapper<RotaryLayers, Cpu<double>>(config(V, 20, 2, 1)));
  Model<AbsoluteLayers> amateur(TransformerWrapper<AbsoluteLayers, Cpu<double>>(config(V, 20, 1, 2)));
  TransformerWrapper<RotaryLayers, Cpu<float>> second(config(V, 20, 1, 3));
  sharpen(expert.parameters(), 1, 0.4);
  sharpen(amateur.parameters(), 2, 0.4);
  const auto prompts = random_tokens(2, 3, V, 6);
  const Index n = 8;
  auto by_hand = [&](bool two) {
    TokenBatch out(2, n);
    for (Index b = 0; b < 2; ++b) {
      std::vector<std::int32_t> seq = prompts.row(b);
      for (Index t = 0; t < n; ++t) {
        const Index L = Index(seq.size());
        std::vector<double> z(static_cast<std::size_t>(V)), za(static_cast<std::size_t>(V));
        const auto le = expert.net.forward({seq.data(), 1, L});
        std::copy_n(le.data() + (L - 1) * V, V, z.begin());
        const auto la = amateur.net.forward({seq.data(), 1, L});
        std::copy_n(la.data() + (L - 1) * V, V, za.begin());
        contrastive_logits(z.data(), za.data(), V, 0.1, 0.5, z.data());
        if (two) {
          const auto l2 = second.forward({seq.data(), 1, L});
          std::vector<float> z2(l2.data() + (L - 1) * V, l2.data() + L * V);
          contrastive_logits(z.data(), z2.data(), V, 0.2, 1.0, z.data());
        }
        const auto token = std::int32_t(std::max_element(z.begin(), z.end()) - z.begin());
        out(b, t) = token;
        seq.push_back(token);
      }
    }
    return out;
  };
  for (bool cache : {true, false}) {
    INFO("cache_kv " << cache);
    Sampling s{.temperature = 0, .cache_kv = cache};
    s.amateurs.emplace_back(amateur);  // the wrapper: its net, as x-transformers
    const auto one = expert.generate(prompts, n, s);
    CHECK(one.data == by_hand(false).data);
    CHECK(one.data != greedy(expert, prompts, n).data);
    s.amateurs.emplace_back(second, 0.2, 1.0);  // another scalar type
    CHECK(expert.generate(prompts, n, s).data == by_hand(true).data);
  }
  // sampled contrastive decoding is seeded and reproducible, and the amateurs keep their modes
  amateur.train();
  Sampling sampled{.temperature = 1.0, .seed = 4};
  sampled.amateurs.emplace_back(amateur);
  CHECK(expert.generate(prompts, n, sampled).data == expert.generate(prompts, n, sampled).data);
  CHECK(amateur.net.training());
}

// ---------------------------------------------------------------------------------------------------------------------
// Ragged prompts

TEST_CASE("ragged prompts: every row generates what its prompt generates alone (rotary, absolute, no position, "
          "cached and recomputed, sampling, beams and contrastive)", "[generation][ragged]") {
  const SerialOpenMP serial;
  const Index V = 23;
  const std::vector<std::vector<std::int32_t>> prompts = {{3, 8, 13, 18, 1}, {7, 1}, {11, 16, 21}, {4}};
  auto check = [&](auto& model) {
    for (bool cache : {true, false}) {
      INFO("cache_kv " << cache);
      const auto together = model.generate(prompts, 9, {.temperature = 0, .cache_kv = cache});
      const auto sampled = model.generate(prompts, 9, {.temperature = 1.0, .cache_kv = cache, .seed = 3});
      const auto beams = model.beam_search(prompts, 5, {.beams = 3, .cache_kv = cache});
      for (std::size_t b = 0; b < prompts.size(); ++b) {
        INFO("row " << b);
        const TokenBatch alone(1, Index(prompts[b].size()));
        TokenBatch one(1, Index(prompts[b].size()));
        one.data = prompts[b];
        CHECK(together.row(Index(b)) == model.generate(one, 9, {.temperature = 0, .cache_kv = cache}).row(0));
        const auto beam_alone = model.beam_search(one, 5, {.beams = 3, .cache_kv = cache});
        for (std::size_t j = 0; j < 3; ++j) {
          CHECK(beams.beams[j].row(Index(b)) == beam_alone.beams[j].row(0));
          CHECK(beams.scores[j][b] == Approx(beam_alone.scores[j][0]).epsilon(1e-9));
        }
        (void)alone;
      }
      // sampling draws per (step, row): a padded batch samples like the same rows all full-length
      CHECK(sampled.length == 9);
    }
    // the padded-matrix form with prompt_lens is the same call
    TokenBatch padded(4, 5);
    std::vector<Index> lens;
    for (std::size_t b = 0; b < prompts.size(); ++b) {
      std::copy(prompts[b].begin(), prompts[b].end(), padded.data.begin() + std::ptrdiff_t(b * 5));
      lens.push_back(Index(prompts[b].size()));
    }
    Sampling s{.temperature = 0};
    s.prompt_lens = lens;
    CHECK(model.generate(padded, 9, s).data == model.generate(prompts, 9, {.temperature = 0}).data);
  };
  SECTION("rotary") {
    Model<RotaryLayers> model(TransformerWrapper<RotaryLayers, Cpu<double>>(config(V, 24, 2, 4)));
    sharpen(model.parameters(), 3, 0.3);
    check(model);
  }
  SECTION("absolute positions") {
    Model<AbsoluteLayers> model(TransformerWrapper<AbsoluteLayers, Cpu<double>>(config(V, 24, 2, 5)));
    sharpen(model.parameters(), 4, 0.3);
    check(model);
  }
  SECTION("no position (ALiBi)") {
    using Layers = Decoder<NoPosition, LayerNorm, GELU, ALiBi>;
    Model<Layers> model(TransformerWrapper<Layers, Cpu<double>>(config(V, 24, 2, 6)));
    sharpen(model.parameters(), 5, 0.3);
    check(model);
  }
  SECTION("contrastive decoding with ragged prompts") {
    Model<RotaryLayers> expert(TransformerWrapper<RotaryLayers, Cpu<double>>(config(V, 24, 2, 4)));
    Model<AbsoluteLayers> amateur(TransformerWrapper<AbsoluteLayers, Cpu<double>>(config(V, 24, 1, 5)));
    sharpen(expert.parameters(), 3, 0.3);
    sharpen(amateur.parameters(), 4, 0.3);
    Sampling s{.temperature = 0};
    s.amateurs.emplace_back(amateur, 0.1, 0.5);
    const auto together = expert.generate(prompts, 7, s);
    for (std::size_t b = 0; b < prompts.size(); ++b) {
      TokenBatch one(1, Index(prompts[b].size()));
      one.data = prompts[b];
      CHECK(together.row(Index(b)) == expert.generate(one, 7, s).row(0));
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// mask_prob

TEST_CASE("mask_prob: each row hides floor(p · (seq_len + 1)) keys, never the first, uniformly, the loss is the "
          "masked forward's", "[generation][mask_prob]") {
  const SerialOpenMP serial;
  Model<RotaryLayers> model(TransformerWrapper<RotaryLayers, Cpu<double>>(config(19, 32)), {.mask_prob = 0.3});
  const Index B = 600, T = 20;
  REQUIRE(model.hidden_keys(T + 1) == 6);  // floor(0.3 · 21)
  const auto m = model.draw_kv_mask(B, T, 6);
  std::vector<Index> hidden(std::size_t(T), 0);
  for (Index b = 0; b < B; ++b) {
    Index count = 0;
    for (Index t = 0; t < T; ++t) {
      count += m.data[b * T + t] == 0;
      hidden[std::size_t(t)] += m.data[b * T + t] == 0;
    }
    REQUIRE(count == 6);
  }
  CHECK(hidden[0] == 0);
  const double expected = double(B) * 6.0 / double(T - 1), sd = std::sqrt(expected * (1 - 6.0 / double(T - 1)));
  for (Index t = 1; t < T; ++t) {
    INFO("position " << t << ": hidden " << hidden[std::size_t(t)] << " times, expected " << expected);
    CHECK(std::abs(double(hidden[std::size_t(t)]) - expected) < 5 * sd);
  }
  CHECK(model.hidden_keys(2) == 0);  // one input token: nothing to hide
  Model<RotaryLayers> all(TransformerWrapper<RotaryLayers, Cpu<double>>(config(19, 32)), {.mask_prob = 0.99});
  CHECK(all.hidden_keys(11) == 9);   // at most seq_len − 1: the first key stays

  // the loss is the cross-entropy of the forward with the mask the wrapper draws next
  const auto x = random_tokens(3, 11, 19, 8);
  std::vector<std::uint8_t> mask_copy;
  {
    const auto next = model.draw_kv_mask(3, 10, model.hidden_keys(11));
    mask_copy.assign(next.data, next.data + 30);
  }
  const double loss = model(x).item();
  TokenBatch input(3, 10);
  for (Index b = 0; b < 3; ++b)
    for (Index t = 0; t < 10; ++t) input(b, t) = x(b, t);
  const auto logits = model.net.forward_with_kv_mask(input, {}, {mask_copy.data(), 3, 10});
  double ce = 0;
  for (Index b = 0; b < 3; ++b)
    for (Index t = 0; t < 10; ++t) {
      const double* row = logits.data() + (b * 10 + t) * 19;
      double mx = -1e300, sum = 0;
      for (Index v = 0; v < 19; ++v) mx = std::max(mx, row[v]);
      for (Index v = 0; v < 19; ++v) sum += std::exp(row[v] - mx);
      ce -= row[x(b, t + 1)] - mx - std::log(sum);
    }
  CHECK(loss == Approx(ce / 30).epsilon(1e-12));
  Model<RotaryLayers> plain(TransformerWrapper<RotaryLayers, Cpu<double>>(config(19, 32)));
  CHECK(plain(x).item() != Approx(loss).epsilon(1e-6));
}

TEST_CASE("self_attn_kv_mask: hidden keys change no other position's logits, finite-difference gradients",
          "[generation][mask_prob][gradient]") {
  const SerialOpenMP serial;
  TransformerWrapper<RotaryLayers, Cpu<double>> net(config(13, 16));
  sharpen(net.parameters(), 2, 0.2);
  auto tokens = random_tokens(2, 9, 13, 4);
  Mask kv(2, 9);
  kv(0, 3) = kv(0, 6) = kv(1, 2) = 0;
  const auto before = net.forward_with_kv_mask(tokens, {}, kv);
  const std::vector<double> reference(before.data(), before.data() + before.size());
  tokens(0, 3) = (tokens(0, 3) + 5) % 13;
  const auto after = net.forward_with_kv_mask(tokens, {}, kv);
  for (Index t = 0; t < 9; ++t)
    for (Index v = 0; v < 13; ++v) {
      const double d = std::abs(after.data()[t * 13 + v] - reference[std::size_t(t * 13 + v)]);
      if (t == 3) continue;  // its own row sees its new token
      CHECK(d < 1e-12);
    }
  // the query row of a hidden key is not zeroed: its logits still depend on its token
  double own = 0;
  for (Index v = 0; v < 13; ++v) own = std::max(own, std::abs(after.data()[3 * 13 + v] - reference[std::size_t(3 * 13 + v)]));
  CHECK(own > 1e-6);

  const auto R = xtr::testing::random_values(2 * 9 * 13, 6);
  auto loss = [&] {
    auto logits = net.forward_with_kv_mask(tokens, {}, kv);
    double s = 0;
    for (Index i = 0; i < logits.size(); ++i) s += logits.data()[i] * R[std::size_t(i)];
    return s;
  };
  net.parameters().zero_grad();
  auto logits = net.forward_with_kv_mask(tokens, {}, kv);
  net.backward(ConstView<double>(R.data(), logits.rows(), logits.cols()), 1.0);
  xtr::testing::require_parameter_gradients(net.parameters(), loss, 10);
}

// ---------------------------------------------------------------------------------------------------------------------
// Errors

TEST_CASE("generation errors name the value and the limit", "[generation][errors]") {
  Model<RotaryLayers> model(TransformerWrapper<RotaryLayers, Cpu<double>>(config(11, 16)));
  const auto prompts = random_tokens(2, 3, 11, 1);
  REQUIRE_THROWS_WITH(model.beam_search(prompts, 4, {.beams = 0}), Contains("beams must be >= 1, got 0"));
  REQUIRE_THROWS_WITH(model.beam_search(prompts, 4, {.beams = -2}), Contains("beams must be >= 1, got -2"));
  REQUIRE_THROWS_WITH(model.beam_search(prompts, 4, {.eos_token = 11}), Contains("eos_token 11 outside [0, num_tokens 11)"));
  REQUIRE_THROWS_WITH(model.beam_search(prompts, 4, {.stochastic = true, .top_p = 1.5}),
                      Contains("top_p must be in [0, 1], got 1.5"));
  REQUIRE_THROWS_WITH(model.beam_search(prompts, -1), Contains("length must be >= 0, got -1"));
  Model<RotaryLayers> other(TransformerWrapper<RotaryLayers, Cpu<double>>(config(12, 16)));
  Sampling s{.temperature = 0};
  s.amateurs.emplace_back(other);
  REQUIRE_THROWS_WITH(model.generate(prompts, 3, s),
                      Contains("amateur 0 has 12 logits per position, the expert 11: contrastive decoding needs one vocabulary"));
  Model<RotaryLayers> same(TransformerWrapper<RotaryLayers, Cpu<double>>(config(11, 16)));
  Sampling filtered{.top_k = 5};
  filtered.amateurs.emplace_back(same);
  REQUIRE_THROWS_WITH(model.generate(prompts, 3, filtered), Contains("contrastive decoding samples without a filter"));
  REQUIRE_THROWS_WITH(Amateur(same, 0.0), Contains("alpha must be in (0, 1], got 0"));
  REQUIRE_THROWS_WITH(Amateur(same, 0.1, -1), Contains("beta must be >= 0, got -1"));
  using Net = TransformerWrapper<RotaryLayers, Cpu<double>>;
  REQUIRE_THROWS_WITH(AutoregressiveWrapper<Net>(Net(config(11, 16)), {.mask_prob = 1.0}),
                      Contains("mask_prob must be in [0, 1), got 1"));
  REQUIRE_THROWS_WITH(AutoregressiveWrapper<Net>(Net(config(11, 16)), {.mask_prob = -0.1}),
                      Contains("mask_prob must be in [0, 1), got -0.1"));
  Sampling lens{.temperature = 0};
  lens.prompt_lens = {3, 4};
  REQUIRE_THROWS_WITH(model.generate(prompts, 3, lens), Contains("prompt_lens[1] = 4 outside [1, 3] (the prompt length)"));
  lens.prompt_lens = {3};
  REQUIRE_THROWS_WITH(model.generate(prompts, 3, lens), Contains("prompt_lens has 1 entries for 2 prompts"));
  const std::vector<std::vector<std::int32_t>> with_empty = {{1, 2}, {}};
  REQUIRE_THROWS_WITH(model.generate(with_empty, 3), Contains("prompt 1 is empty"));
  // left-padded rows: a start past a row's last token is an error (a prompt longer than the context is not one: it is
  // windowed to the last max_seq_len tokens as x-transformers' restrict_to_max_seq_len, cached = recomputed, tested in
  // test_properties.cpp "past max_seq_len"; examples/generate refuses it, ctest example.generate.long_prompt)
  TransformerWrapper<RotaryLayers, Cpu<double>> ragged_net(config(11, 16));
  const std::vector<Index> bad_start = {0, 3};
  REQUIRE_THROWS_WITH(ragged_net.forward_left_padded(prompts, bad_start),
                      Contains("seq_start_pos[1] = 3 outside [0, 3): every sequence needs at least one real token"));
  const std::vector<Index> ok_start = {0, 1};
  auto lp = ragged_net.forward_left_padded(prompts, ok_start);
  REQUIRE_THROWS_WITH(ragged_net.backward(ConstView<double>(lp.data(), lp.rows(), lp.cols()), 1.0),
                      Contains("backward() of forward_left_padded() is not supported"));
}

// ---------------------------------------------------------------------------------------------------------------------
// Golden: x-transformers 2.31.10

TEST_CASE("golden: beam search, contrastive decoding and ragged prompts as x-transformers 2.31.10",
          "[generation][golden]") {
  const SerialOpenMP serial;
  const st::File expert_file = st::read(xtr::testing::fixture_path("generation_expert"));
  const st::File amateur_file = st::read(xtr::testing::fixture_path("generation_amateur"));
  const st::File absolute_file = st::read(xtr::testing::fixture_path("generation_absolute"));
  const auto expert_d = xt::parse_description(xtr::testing::description_of(expert_file));
  const auto amateur_d = xt::parse_description(xtr::testing::description_of(amateur_file));
  const auto absolute_d = xt::parse_description(xtr::testing::description_of(absolute_file));
  using Net = TransformerWrapper<xt::AnyDecoder, Cpu<double>>;
  using FloatNet = TransformerWrapper<xt::AnyDecoder, Cpu<float>>;
  auto load = [](const auto& description, const st::File& file, auto tag) {
    using N = typename decltype(tag)::type;
    N net(description.config);
    xt::load(net, xtr::testing::model_tensors(file), "fixture", description.conventions);
    return AutoregressiveWrapper<N>(std::move(net));
  };
  auto expert = load(expert_d, expert_file, std::type_identity<Net>{});
  auto amateur = load(amateur_d, amateur_file, std::type_identity<Net>{});
  const auto prompts = xtr::testing::tokens_of(expert_file, "fixture.prompts");
  const auto& beam_tokens = expert_file.at("fixture.beam_tokens");  // (beams, B, n)
  const auto expected_tokens = st::to_vector<std::int32_t>(beam_tokens);
  const auto expected_scores = st::to_vector<double>(expert_file.at("fixture.beam_scores"));
  const Index K = beam_tokens.shape[0], B = beam_tokens.shape[1], n = beam_tokens.shape[2];
  for (bool cache : {true, false}) {
    INFO("cache_kv " << cache);
    const auto r = expert.beam_search(prompts, n, {.beams = K, .cache_kv = cache});
    for (Index j = 0; j < K; ++j)
      for (Index b = 0; b < B; ++b) {
        INFO("beam " << j << ", prompt " << b);
        CHECK(r.beams[std::size_t(j)].row(b) ==
              std::vector<std::int32_t>(expected_tokens.begin() + (j * B + b) * n,
                                        expected_tokens.begin() + (j * B + b + 1) * n));
        CHECK(r.scores[std::size_t(j)][std::size_t(b)] == Approx(expected_scores[std::size_t(j * B + b)]).epsilon(1e-6));  // its scores accumulate in float32
      }
    CHECK(greedy(expert, prompts, n, cache).data == xtr::testing::tokens_of(expert_file, "fixture.greedy").data);
    Sampling s{.temperature = 0, .cache_kv = cache};
    s.amateurs.emplace_back(amateur, 0.05, 1.0);
    CHECK(expert.generate(prompts, n, s).data == xtr::testing::tokens_of(expert_file, "fixture.contrastive_greedy").data);
  }
  // contrastive_decode_fn on fixed float32 logits, the −finfo.max fill included
  const auto cd_e = st::to_vector<float>(expert_file.at("fixture.cd_expert"));
  const auto cd_a = st::to_vector<float>(expert_file.at("fixture.cd_amateur"));
  const auto cd_out = st::to_vector<float>(expert_file.at("fixture.cd_out"));
  const Index V = expert_file.at("fixture.cd_expert").shape[1];
  std::vector<float> ours(cd_e.size());
  for (Index r = 0; r < Index(cd_e.size()) / V; ++r)
    contrastive_logits(cd_e.data() + r * V, cd_a.data() + r * V, V, 0.2, 0.7, ours.data() + r * V);
  for (std::size_t i = 0; i < ours.size(); ++i) {
    INFO("entry " << i);
    if (cd_out[i] == -std::numeric_limits<float>::max()) {
      CHECK(ours[i] == cd_out[i]);
    } else {
      CHECK(ours[i] == Approx(cd_out[i]).epsilon(1e-6));
    }
  }
  // ragged prompts (float32, as the fixture), rotary and absolute positions
  for (const auto* file : {&expert_file, &absolute_file}) {
    const auto& d = file == &expert_file ? expert_d : absolute_d;
    auto model = load(d, *file, std::type_identity<FloatNet>{});
    const auto padded = xtr::testing::tokens_of(*file, "fixture.ragged_prompts");
    const auto lens64 = st::to_vector<std::int64_t>(file->at("fixture.ragged_lens"));
    const auto expected = xtr::testing::tokens_of(*file, "fixture.ragged_greedy");
    for (bool cache : {true, false}) {
      Sampling s{.temperature = 0, .cache_kv = cache};
      s.prompt_lens.assign(lens64.begin(), lens64.end());
      CHECK(model.generate(padded, expected.length, s).data == expected.data);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// Speculative decoding and streaming

TEST_CASE("speculative decoding, greedy: the same tokens as the model alone, for every draft length, cached or not",
          "[generation][speculative]") {
  const SerialOpenMP serial;
  const Index V = 19;
  Model<RotaryLayers> model(TransformerWrapper<RotaryLayers, Cpu<double>>(config(V, 40, 2, 3)));
  Model<AbsoluteLayers> draft(TransformerWrapper<AbsoluteLayers, Cpu<double>>(config(V, 40, 1, 4)));
  sharpen(model.parameters(), 1, 0.3);
  sharpen(draft.parameters(), 2, 0.3);
  const std::vector<std::vector<std::int32_t>> prompts = {{3, 8, 13, 1}, {7}, {11, 16, 2}};
  for (bool cache : {true, false}) {
    const auto plain = model.generate(prompts, 30, {.temperature = 0, .cache_kv = cache});
    for (Index k : {1, 3, 6}) {
      INFO("cache_kv " << cache << ", draft_tokens " << k);
      Sampling s{.temperature = 0, .cache_kv = cache};
      s.draft.emplace(draft);
      s.draft_tokens = k;
      CHECK(model.generate(prompts, 30, s).data == plain.data);
    }
  }
  // the model itself as its own draft accepts every proposal: (k + 1) tokens per forward of the model
  Sampling self{.temperature = 0};
  self.draft.emplace(model);
  self.draft_tokens = 4;
  const auto before = model.speculative_counts();
  TokenBatch one(1, 4);
  one.data = prompts[0];
  CHECK(model.generate(one, 25, self).data == model.generate(one, 25, {.temperature = 0}).data);
  const auto after = model.speculative_counts();
  CHECK(after.first - before.first == 25);
  CHECK(after.second - before.second == 5);  // 5 rounds of 5 tokens
}

TEST_CASE("speculative decoding, sampled: the output is distributed as the model's own sampling",
          "[generation][speculative]") {
  const SerialOpenMP serial;
  const Index V = 3, N = 6000;
  Model<RotaryLayers> model(TransformerWrapper<RotaryLayers, Cpu<double>>(config(V, 16, 1, 7)));
  Model<RotaryLayers> draft(TransformerWrapper<RotaryLayers, Cpu<double>>(config(V, 16, 1, 8)));
  sharpen(model.parameters(), 3, 0.8);
  sharpen(draft.parameters(), 4, 0.8);
  const std::vector<std::int32_t> prompt = {1, 2};
  // the model's exact distribution of two tokens (no filter, temperature 0.9)
  const double temperature = 0.9;
  std::vector<double> exact(std::size_t(V * V));
  auto probs_after = [&](const std::vector<std::int32_t>& seq) {
    const auto logits = model.net.forward({seq.data(), 1, Index(seq.size())});
    std::vector<double> pr(static_cast<std::size_t>(V));
    double m = -1e300, total = 0;
    for (Index v = 0; v < V; ++v) m = std::max(m, logits.data()[(Index(seq.size()) - 1) * V + v] / temperature);
    for (Index v = 0; v < V; ++v)
      total += pr[std::size_t(v)] = std::exp(logits.data()[(Index(seq.size()) - 1) * V + v] / temperature - m);
    for (auto& x : pr) x /= total;
    return pr;
  };
  const auto first = probs_after(prompt);
  for (std::int32_t a = 0; a < V; ++a) {
    auto seq = prompt;
    seq.push_back(a);
    const auto second = probs_after(seq);
    for (std::int32_t c = 0; c < V; ++c) exact[std::size_t(a * V + c)] = first[std::size_t(a)] * second[std::size_t(c)];
  }
  TokenBatch prompts(N, 2);
  for (Index r = 0; r < N; ++r) std::copy(prompt.begin(), prompt.end(), prompts.data.begin() + r * 2);
  Sampling s{.temperature = temperature, .top_k = 0, .seed = 11};
  s.draft.emplace(draft);
  s.draft_tokens = 2;
  const auto out = model.generate(prompts, 2, s);
  std::vector<double> count(std::size_t(V * V), 0);
  for (Index r = 0; r < N; ++r) count[std::size_t(out(r, 0) * V + out(r, 1))] += 1;
  for (std::size_t i = 0; i < count.size(); ++i) {
    const double expected = exact[i] * double(N), sd = std::sqrt(expected * (1 - exact[i]));
    INFO("pair " << i / V << ", " << i % V << ": " << count[i] << " draws, expected " << expected);
    CHECK(std::abs(count[i] - expected) < 5 * sd + 1);
  }
}

TEST_CASE("streaming: on_tokens receives every row's tokens as produced, false, eos and stop sequences end a row",
          "[generation][streaming]") {
  const SerialOpenMP serial;
  Model<RotaryLayers> model(TransformerWrapper<RotaryLayers, Cpu<double>>(config(11, 40, 2, 3)), {.pad_value = -1});
  sharpen(model.parameters(), 5, 0.3);
  const auto prompts = random_tokens(3, 4, 11, 2);
  const auto plain = model.generate(prompts, 20, {.temperature = 0});
  std::vector<std::vector<std::int32_t>> streamed(3);
  Sampling s{.temperature = 0};
  s.on_tokens = [&](Index row, std::span<const std::int32_t> tokens) {
    streamed[std::size_t(row)].insert(streamed[std::size_t(row)].end(), tokens.begin(), tokens.end());
    return !(row == 1 && streamed[1].size() >= 7);  // row 1 stops after 7 tokens
  };
  const auto out = model.generate(prompts, 20, s);
  for (Index b = 0; b < 3; ++b) {
    INFO("row " << b);
    auto expected = plain.row(b);
    if (b == 1) {
      expected.resize(7);
      CHECK(out.row(1) == [&] { auto r = expected; r.resize(20, -1); return r; }());
    } else {
      CHECK(out.row(b) == expected);
    }
    CHECK(streamed[std::size_t(b)] == expected);
  }
  // a stop sequence: the two tokens row 0 produces at 5 and 6
  Sampling stop{.temperature = 0};
  stop.stop_sequences = {{plain(0, 5), plain(0, 6)}};
  const auto stopped = model.generate(prompts, 20, stop);
  Index end = 1;  // where the pair first ends in row 0 (at 6 at the latest)
  while (!(plain(0, end - 1) == plain(0, 5) && plain(0, end) == plain(0, 6))) ++end;
  REQUIRE(end <= 6);
  for (Index t = 0; t < 20; ++t) CHECK(stopped(0, t) == (t <= end ? plain(0, t) : -1));
  // with speculative decoding several tokens arrive at once, in order, and the stop applies inside a round
  Model<RotaryLayers> draft(TransformerWrapper<RotaryLayers, Cpu<double>>(config(11, 40, 1, 4)));
  std::vector<std::vector<std::int32_t>> spec(3);
  Sampling both{.temperature = 0};
  both.draft.emplace(draft);
  both.stop_sequences = stop.stop_sequences;
  both.on_tokens = [&](Index row, std::span<const std::int32_t> tokens) {
    spec[std::size_t(row)].insert(spec[std::size_t(row)].end(), tokens.begin(), tokens.end());
    return true;
  };
  CHECK(model.generate(prompts, 20, both).data == stopped.data);
  for (Index b = 0; b < 3; ++b) {
    auto expected = stopped.row(b);
    expected.erase(std::remove(expected.begin(), expected.end(), -1), expected.end());
    CHECK(spec[std::size_t(b)] == expected);
  }
}

TEST_CASE("speculative decoding and streaming errors", "[generation][errors]") {
  Model<RotaryLayers> model(TransformerWrapper<RotaryLayers, Cpu<double>>(config(11, 16)));
  Model<RotaryLayers> other(TransformerWrapper<RotaryLayers, Cpu<double>>(config(12, 16)));
  const auto prompts = random_tokens(2, 3, 11, 1);
  Sampling s{.temperature = 0};
  s.draft.emplace(other);
  REQUIRE_THROWS_WITH(model.generate(prompts, 3, s), Contains("the draft model has 12 logits per position, the model 11"));
  s.draft.emplace(model);
  s.draft_tokens = 0;
  REQUIRE_THROWS_WITH(model.generate(prompts, 3, s), Contains("draft_tokens must be >= 1, got 0"));
  s.draft_tokens = 2;
  s.amateurs.emplace_back(model);
  s.top_k = -1;
  REQUIRE_THROWS_WITH(model.generate(prompts, 3, s), Contains("contrastive and speculative decoding together"));
  Sampling empty_stop;
  empty_stop.stop_sequences = {{1}, {}};
  REQUIRE_THROWS_WITH(model.generate(prompts, 3, empty_stop), Contains("stop sequence 1 is empty"));
}

}  // namespace test_generation
