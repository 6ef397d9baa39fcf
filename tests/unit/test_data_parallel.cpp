// What data-parallel training rests on, checked in one process (the multi-process runs are tests/distributed, under
// mpirun): a random stream addressed from an offset, BatchLoader shards that together are the global batch, dropout
// of a rank's rows equal to the same rows of the whole batch, and gradient-ready reports that are final, disjoint
// and cover every parameter.
#include <catch2/catch.hpp>

#include <algorithm>
#include <map>
#include <vector>

#include "testing.hpp"
#include "xtr/distributed.hpp"
#include "xtr/xtr.hpp"

namespace test_data_parallel {  // this file's names (the test executable may compile the files as one unit)

using namespace xtr;

namespace {

TransformerConfig dp_config(double dropout, bool tie = false, Index memory = 0) {
  return {.num_tokens = 23,
          .max_seq_len = 12,
          .emb_dropout = dropout,
          .layers = {.dim = 16, .depth = 3, .heads = 2, .dim_head = 8, .attn_dropout = dropout, .ff_dropout = dropout},
          .seed = 4,
          .tie_embedding = tie,
          .num_memory_tokens = memory};
}

TextDataset counting_text(Index n) {
  std::vector<std::uint8_t> bytes(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i) bytes[std::size_t(i)] = std::uint8_t((i * 7 + i / 13) % 23);
  return TextDataset(std::move(bytes));
}

/// Records every gradient-ready report with a copy of the gradients it declares final.
struct ReadyLog {
  std::vector<std::pair<Index, Index>> ranges;
  std::vector<std::vector<double>> at_report;
  template <class Net, class Store>
  void attach(Net& net, Store& store) {
    net.on_gradients_ready([this, &store](Index begin, Index end) {
      ranges.emplace_back(begin, end);
      at_report.emplace_back(store.grads().data() + begin, store.grads().data() + end);
    });
  }
  /// Disjoint, covering [0, total), and each range's gradients unchanged since its report.
  template <class Store>
  void check(const Store& store) const {
    std::vector<int> covered(std::size_t(store.count()), 0);
    for (std::size_t r = 0; r < ranges.size(); ++r) {
      const auto [begin, end] = ranges[r];
      REQUIRE(begin < end);
      for (Index i = begin; i < end; ++i) ++covered[std::size_t(i)];
      for (Index i = begin; i < end; ++i) REQUIRE(at_report[r][std::size_t(i - begin)] == double(store.grads()[i]));
    }
    CHECK(std::all_of(covered.begin(), covered.end(), [](int c) { return c == 1; }));
  }
};

}  // namespace

TEST_CASE("RandomStream::from(o) draws what the stream draws from o on", "[data][distributed]") {
  const RandomStream s = RandomStream{17, 3}.fork(5);
  for (std::uint64_t o : {0ull, 1ull, 3ull, 4ull, 1001ull, (1ull << 40) + 3})
    for (std::uint64_t i = 0; i < 9; ++i) {
      REQUIRE(s.from(o).uniform(i) == s.uniform(o + i));
      REQUIRE(s.from(o).bits64(i) == s.bits64(o + i));
      REQUIRE(s.from(o).from(2).bits(i) == s.bits(o + 2 + i));
    }
  CHECK(s.from(7).fork(1).uniform(0) == s.fork(1).uniform(0));  // a fork starts its own stream at draw 0
}

TEST_CASE("BatchLoader shards: the ranks' rows together are one loader's global batch", "[data][distributed]") {
  const TextDataset text = counting_text(5000);
  const Index B = 3, ranks = 3;
  BatchLoader whole(text, B * ranks, 10, 8, 1);
  std::vector<BatchLoader> parts;
  for (int r = 0; r < ranks; ++r) parts.emplace_back(text, B, 10, 8, 1, BatchShard{r, int(ranks)});
  for (int k = 0; k < 4; ++k) {
    const TokenBatch all = whole.next();
    for (int r = 0; r < ranks; ++r) {
      const TokenBatch& part = parts[std::size_t(r)].next();
      REQUIRE(part.batch == B);
      for (Index b = 0; b < B; ++b) REQUIRE(part.row(b) == all.row(r * B + b));
    }
  }
  CHECK(BatchLoader(text, B, 10, 8, 1, BatchShard{0, 1}).start(2, 1) == BatchLoader(text, B, 10, 8, 1).start(2, 1));
  CHECK_THROWS_WITH(BatchLoader(text, B, 10, 8, 1, BatchShard{3, 3}), Catch::Contains("shard rank 3 must lie in [0, ranks 3)"));
  CHECK_THROWS_WITH(BatchLoader(text, B, 10, 8, 1, BatchShard{0, 0}), Catch::Contains("shard rank 0"));
}

TEST_CASE("dropout of a rank's rows equals the same rows of the whole batch", "[distributed][dropout]") {
  using Net = TransformerWrapper<Decoder<Rotary, LayerNorm, GELU>, Cpu<double>>;
  using Model = AutoregressiveWrapper<Net>;
  const auto tokens = testing::random_tokens(4, 9, 23, 2);
  Model whole(Net(dp_config(0.3)));
  whole.train();
  const auto all = whole.net.forward(tokens);
  std::vector<double> expected(all.data() + 2 * 9 * 23, all.data() + 4 * 9 * 23);  // rows 2 and 3
  Model part(Net(dp_config(0.3)));
  part.train();
  part.net.set_sequence_offset(2);
  TokenBatch rows(2, 9);
  std::copy(tokens.data.begin() + 2 * 9, tokens.data.end(), rows.data.begin());
  const auto mine = part.net.forward(rows);
  double worst = 0;
  for (std::size_t i = 0; i < expected.size(); ++i) worst = std::max(worst, std::abs(mine.data()[i] - expected[i]));
  CHECK(worst < 1e-12);
  // and without the offset they are different masks
  Model unshifted(Net(dp_config(0.3)));
  unshifted.train();
  const auto other = unshifted.net.forward(rows);
  double changed = 0;
  for (std::size_t i = 0; i < expected.size(); ++i) changed = std::max(changed, std::abs(other.data()[i] - expected[i]));
  CHECK(changed > 1e-3);
  CHECK_THROWS_WITH(part.net.set_sequence_offset(-1), Catch::Contains("sequence offset -1 must be >= 0"));
}

TEST_CASE("gradient-ready reports are final, disjoint and cover every parameter", "[distributed][backward]") {
  SECTION("decoder, tied embedding and memory tokens, with dropout") {
    using Net = TransformerWrapper<Decoder<Rotary, LayerNorm, GELU>, Cpu<double>>;
    AutoregressiveWrapper<Net> model(Net(dp_config(0.1, true, 2)));
    ReadyLog log;
    log.attach(model.net, model.parameters());
    model.parameters().zero_grad();
    model(testing::random_tokens(3, 10, 23, 6)).backward();
    CHECK(log.ranges.size() >= 5);  // logits, final norm, three blocks, embeddings
    log.check(model.parameters());
  }
  SECTION("a T5 relative position bias shared by every layer") {
    using Net = TransformerWrapper<Decoder<AbsoluteLearned, RMSNorm, SwiGLU, RelativePositionBias>, Cpu<double>>;
    AutoregressiveWrapper<Net> model(Net(dp_config(0)));
    ReadyLog log;
    log.attach(model.net, model.parameters());
    model.parameters().zero_grad();
    model(testing::random_tokens(2, 10, 23, 7)).backward();
    log.check(model.parameters());
  }
  SECTION("encoder-decoder with tied token embeddings: both nets report") {
    using Model = XTransformer<Encoder<>, Decoder<>, Cpu<double>>;
    XTransformerConfig c;
    c.dim = 8;
    c.encoder = {.num_tokens = 11, .max_seq_len = 7, .layers = {.depth = 2, .heads = 2, .dim_head = 4}};
    c.decoder = {.num_tokens = 11, .max_seq_len = 9, .layers = {.depth = 2, .heads = 2, .dim_head = 4}};
    c.tie_token_emb = true;
    Model model(c);
    ReadyLog log;
    log.attach(model.decoder.net, model.parameters());
    log.attach(model.encoder, model.parameters());
    model.parameters().zero_grad();
    model(testing::random_tokens(2, 5, 11, 4), testing::random_tokens(2, 7, 11, 5)).backward();
    log.check(model.parameters());
  }
}

TEST_CASE("DataParallel on one process is plain training and restores the model", "[distributed]") {
  using Net = TransformerWrapper<Decoder<Rotary, LayerNorm, GELU>, Cpu<double>>;
  using Model = AutoregressiveWrapper<Net>;
  Model a(Net(dp_config(0.1))), b(Net(dp_config(0.1)));
  const auto tokens = testing::random_tokens(2, 10, 23, 9);
  distributed::Communicator one;
  CHECK(one.size() == 1);
  CHECK(one.rank() == 0);
  CHECK_FALSE(one.uses_mpi());
  {
    distributed::DataParallel dp(one, a, 2, {.bucket_mib = 0.001});
    CHECK(dp.global_batch_size() == 2);
    CHECK(dp.shard().ranks == 1);
    a.train();
    dp.backward(a(tokens), true);
    CHECK(dp.stats().buckets >= 1);
    CHECK(dp.parameters_in_sync());
  }
  b.train();
  b(tokens).backward();
  for (Index i = 0; i < a.parameters().count(); ++i) REQUIRE(a.parameters().grads()[i] == b.parameters().grads()[i]);
  CHECK_THROWS_WITH(distributed::DataParallel(one, a, 0), Catch::Contains("batch size per rank 0 must be at least 1"));
  CHECK_THROWS_WITH(distributed::DataParallel(one, a, 2, {.bucket_mib = 0}), Catch::Contains("bucket_mib 0"));
}

}  // namespace test_data_parallel
