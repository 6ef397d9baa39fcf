// Sequence-to-sequence batches: the reusable generator and x-transformers' copy task, fixed and variable length.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdint>
#include <set>
#include <span>
#include <vector>

#include "xtr/data/paired_sequences.hpp"

namespace test_paired_sequences {  // this file's names (the test executable may compile the files as one unit)

using Catch::Contains;
using xtr::Index;

namespace {

/// Every field of a batch, for equality checks.
bool same(const xtr::PairedBatch& a, const xtr::PairedBatch& b) {
  return a.src.data == b.src.data && a.tgt.data == b.tgt.data && a.src_mask.data == b.src_mask.data &&
         a.src.batch == b.src.batch && a.src.length == b.src.length && a.tgt.length == b.tgt.length;
}

void check_shapes(const xtr::PairedBatch& batch, Index B, Index S, Index T) {
  REQUIRE(batch.src.batch == B);
  REQUIRE(batch.src.length == S);
  REQUIRE(batch.src.data.size() == static_cast<std::size_t>(B * S));
  REQUIRE(batch.src_mask.batch == B);
  REQUIRE(batch.src_mask.length == S);
  REQUIRE(batch.src_mask.data.size() == static_cast<std::size_t>(B * S));
  REQUIRE(batch.tgt.batch == B);
  REQUIRE(batch.tgt.length == T);
  REQUIRE(batch.tgt.data.size() == static_cast<std::size_t>(B * T));
}

/// The number of real (mask 1) tokens in row b; also checks the mask is a prefix of ones.
Index mask_length(const xtr::PairedBatch& batch, Index b) {
  const Index S = batch.src_mask.length;
  Index L = 0;
  while (L < S && batch.src_mask.data[static_cast<std::size_t>(b * S + L)] == 1) ++L;
  for (Index t = L; t < S; ++t) REQUIRE(batch.src_mask.data[static_cast<std::size_t>(b * S + t)] == 0);
  return L;
}

}  // namespace

TEST_CASE("copy task batches have the shapes of x-transformers' enc-dec example", "[data]") {
  xtr::PairedBatchGenerator gen = xtr::copy_task({}, 1);  // defaults: batch 32, src_len 32, num_tokens 18
  CHECK(gen.batch_size() == 32);
  CHECK(gen.src_len() == 32);
  CHECK(gen.tgt_len() == 65);
  check_shapes(gen.next(), 32, 32, 65);

  xtr::PairedBatchGenerator small = xtr::copy_task({.batch = 3, .src_len = 5, .num_tokens = 7, .min_len = 2}, 1);
  check_shapes(small.next(), 3, 5, 11);
  xtr::PairedBatch out;
  small.next(out);
  check_shapes(out, 3, 5, 11);
}

TEST_CASE("fixed-length copy task: tgt is 1 then src twice, ids in 2 .. num_tokens - 1", "[data]") {
  const Index B = 16, S = 9, V = 7;
  xtr::PairedBatchGenerator gen = xtr::copy_task({.batch = B, .src_len = S, .num_tokens = V}, 2024);
  std::set<std::int32_t> ids;
  const std::int32_t* buffer = nullptr;
  for (int k = 0; k < 20; ++k) {
    const xtr::PairedBatch& batch = gen.next();
    check_shapes(batch, B, S, 2 * S + 1);
    if (k == 0) buffer = batch.src.data.data();
    CHECK(batch.src.data.data() == buffer);  // next() reuses its buffer
    for (Index b = 0; b < B; ++b) {
      REQUIRE(batch.tgt(b, 0) == 1);
      for (Index t = 0; t < S; ++t) {
        const std::int32_t id = batch.src(b, t);
        REQUIRE(id >= 2);
        REQUIRE(id < V);
        REQUIRE(batch.tgt(b, 1 + t) == id);
        REQUIRE(batch.tgt(b, 1 + S + t) == id);
        REQUIRE(batch.src_mask.data[static_cast<std::size_t>(b * S + t)] == 1);
        ids.insert(id);
      }
    }
  }
  CHECK(ids.size() == static_cast<std::size_t>(V - 2));  // every payload id occurs
}

TEST_CASE("variable-length copy task pads src with 0 and tgt with target_pad", "[data]") {
  const Index B = 8, S = 6, V = 10, min_len = 2;
  const std::int32_t target_pad = -7;
  xtr::PairedBatchGenerator gen =
      xtr::copy_task({.batch = B, .src_len = S, .num_tokens = V, .min_len = min_len, .target_pad = target_pad}, 99);
  std::vector<int> length_hits(static_cast<std::size_t>(S + 1), 0);
  for (int k = 0; k < 100; ++k) {
    const xtr::PairedBatch& batch = gen.next();
    check_shapes(batch, B, S, 2 * S + 1);
    for (Index b = 0; b < B; ++b) {
      const Index L = mask_length(batch, b);
      REQUIRE(L >= min_len);
      REQUIRE(L <= S);
      ++length_hits[static_cast<std::size_t>(L)];
      REQUIRE(batch.tgt(b, 0) == 1);
      for (Index t = 0; t < L; ++t) {
        const std::int32_t id = batch.src(b, t);
        REQUIRE(id >= 2);
        REQUIRE(id < V);
        REQUIRE(batch.tgt(b, 1 + t) == id);
        REQUIRE(batch.tgt(b, 1 + L + t) == id);
      }
      for (Index t = L; t < S; ++t) REQUIRE(batch.src(b, t) == 0);
      for (Index t = 2 * L + 1; t < 2 * S + 1; ++t) REQUIRE(batch.tgt(b, t) == target_pad);
    }
  }
  // 800 examples over 5 lengths: each expected 160 times; both ends must occur.
  for (Index L = 0; L <= S; ++L) {
    INFO("length " << L);
    if (L < min_len) {
      CHECK(length_hits[static_cast<std::size_t>(L)] == 0);
    } else {
      CHECK(length_hits[static_cast<std::size_t>(L)] > 100);
    }
  }

  SECTION("the default target_pad is -100, the ignore_index") {
    xtr::PairedBatchGenerator dflt = xtr::copy_task({.batch = 64, .src_len = 4, .min_len = 1}, 5);
    const xtr::PairedBatch& batch = dflt.next();
    bool padded = false;
    for (Index b = 0; b < 64; ++b) {
      const Index L = mask_length(batch, b);
      if (L < 4) {
        padded = true;
        CHECK(batch.tgt(b, 8) == -100);
      }
    }
    CHECK(padded);
  }
  SECTION("min_len = src_len is fixed length") {
    xtr::PairedBatchGenerator full = xtr::copy_task({.batch = 4, .src_len = 3, .min_len = 3}, 5);
    const xtr::PairedBatch& batch = full.next();
    for (Index b = 0; b < 4; ++b) CHECK(mask_length(batch, b) == 3);
    CHECK(std::count(batch.tgt.data.begin(), batch.tgt.data.end(), -100) == 0);
  }
}

TEST_CASE("paired batches are a pure function of (seed, stream, i)", "[data]") {
  const xtr::CopyTaskConfig config{.batch = 5, .src_len = 7, .num_tokens = 12, .min_len = 1};
  xtr::PairedBatchGenerator a = xtr::copy_task(config, 42), b = xtr::copy_task(config, 42);
  std::vector<xtr::PairedBatch> seen;
  for (int k = 0; k < 6; ++k) {
    CHECK(a.position() == static_cast<std::uint64_t>(k));
    seen.push_back(a.next());
    CHECK(same(b.next(), seen.back()));
  }
  CHECK(!same(seen[0], seen[1]));
  CHECK(a.position() == 6);

  SECTION("seek(i) then next() gives batch i of a fresh generator") {
    xtr::PairedBatchGenerator resumed = xtr::copy_task(config, 42);
    resumed.seek(3);
    for (std::size_t k = 3; k < 6; ++k) CHECK(same(resumed.next(), seen[k]));
    CHECK(resumed.position() == 6);
    resumed.seek(1);
    xtr::PairedBatch out;
    resumed.next(out);
    CHECK(same(out, seen[1]));
    CHECK(resumed.position() == 2);
    resumed.fill(4, out);  // fill into storage that held another batch
    CHECK(same(out, seen[4]));
    CHECK(resumed.position() == 2);  // fill does not move the position
  }
  SECTION("other seeds and streams give other batches") {
    xtr::PairedBatchGenerator other_seed = xtr::copy_task(config, 43), other_stream = xtr::copy_task(config, 42, 1);
    CHECK(!same(other_seed.next(), seen[0]));
    CHECK(!same(other_stream.next(), seen[0]));
  }
  SECTION("example b of batch i is drawn from RandomStream{seed, stream}.fork(i).fork(b)") {
    const xtr::RandomStream expected = xtr::RandomStream{42, 0}.fork(2).fork(3);
    const xtr::RandomStream got = a.example_rng(2, 3);
    CHECK(got.seed == expected.seed);
    CHECK(got.stream == expected.stream);
    // Draw 0 gives L = min_len + below(0, src_len - min_len + 1); draw 1 + t gives src token t.
    const Index L = 1 + static_cast<Index>(expected.below(0, 7));
    CHECK(mask_length(seen[2], 3) == L);
    for (Index t = 0; t < L; ++t) {
      CHECK(seen[2].src(3, t) == 2 + static_cast<std::int32_t>(expected.below(1 + static_cast<std::uint64_t>(t), 10)));
    }
  }
}

TEST_CASE("PairedBatchGenerator runs a custom example function: reversal", "[data]") {
  const Index B = 4, S = 6, V = 20;
  auto reverse = [](const xtr::RandomStream& rng, std::span<std::int32_t> src, std::span<std::uint8_t> src_mask,
                    std::span<std::int32_t> tgt) {
    REQUIRE(src.size() == static_cast<std::size_t>(S));
    REQUIRE(src_mask.size() == static_cast<std::size_t>(S));
    REQUIRE(tgt.size() == static_cast<std::size_t>(S + 1));
    REQUIRE(std::all_of(src_mask.begin(), src_mask.end(), [](std::uint8_t m) { return m == 1; }));  // arrives as 1
    REQUIRE(std::all_of(tgt.begin(), tgt.end(), [](std::int32_t id) { return id == 0; }));          // arrives as 0
    tgt[0] = 1;
    for (std::size_t t = 0; t < src.size(); ++t) {
      src[t] = static_cast<std::int32_t>(2 + rng.below(t, V - 2));
      tgt[src.size() - t] = src[t];
    }
  };
  xtr::PairedBatchGenerator gen(B, S, S + 1, reverse, 7);
  CHECK(gen.tgt_len() == S + 1);
  xtr::PairedBatch batch;
  for (int k = 0; k < 3; ++k) {
    gen.next(batch);
    check_shapes(batch, B, S, S + 1);
    for (Index b = 0; b < B; ++b) {
      CHECK(batch.tgt(b, 0) == 1);
      for (Index t = 0; t < S; ++t) REQUIRE(batch.tgt(b, S - t) == batch.src(b, t));
      for (Index t = 0; t < S; ++t) REQUIRE(batch.src_mask.data[static_cast<std::size_t>(b * S + t)] == 1);
    }
  }
  CHECK(batch.src.row(0) != batch.src.row(1));  // examples of one batch differ
}

TEST_CASE("copy task and generator reject bad sizes, naming the value and the limit", "[data]") {
  REQUIRE_THROWS_WITH(xtr::copy_task({.num_tokens = 2}, 0), Contains("num_tokens 2") && Contains("at least 3"));
  REQUIRE_THROWS_WITH(xtr::copy_task({.num_tokens = -5}, 0), Contains("num_tokens -5") && Contains("at least 3"));
  REQUIRE_THROWS_WITH(xtr::copy_task({.num_tokens = Index{1} << 32}, 0),
                    Contains("num_tokens 4294967296") && Contains("2147483648"));
  REQUIRE_THROWS_WITH(xtr::copy_task({.src_len = 0}, 0), Contains("src_len 0") && Contains("at least 1"));
  REQUIRE_THROWS_WITH(xtr::copy_task({.batch = 0}, 0), Contains("batch 0") && Contains("at least 1"));
  REQUIRE_THROWS_WITH(xtr::copy_task({.batch = -3}, 0), Contains("batch -3"));
  REQUIRE_THROWS_WITH(xtr::copy_task({.src_len = 4, .min_len = 5}, 0),
                    Contains("min_len 5") && Contains("src_len 4"));
  REQUIRE_THROWS_WITH(xtr::copy_task({.min_len = -1}, 0), Contains("min_len -1") && Contains("at least 0"));
  CHECK_THROWS_AS(xtr::copy_task({.batch = 0}, 0), xtr::Error);
  REQUIRE_THROWS_WITH(xtr::copy_task({.batch = 0}, 0), Catch::StartsWith("xtr: "));
  CHECK_NOTHROW(xtr::copy_task({.src_len = 1, .num_tokens = 3, .min_len = 1}, 0).next());

  const auto noop = [](const xtr::RandomStream&, std::span<std::int32_t>, std::span<std::uint8_t>,
                       std::span<std::int32_t>) {};
  REQUIRE_THROWS_WITH(xtr::PairedBatchGenerator(0, 4, 4, noop, 0), Contains("batch size 0") && Contains("at least 1"));
  REQUIRE_THROWS_WITH(xtr::PairedBatchGenerator(2, 0, 4, noop, 0), Contains("src_len 0") && Contains("at least 1"));
  REQUIRE_THROWS_WITH(xtr::PairedBatchGenerator(2, 4, 0, noop, 0), Contains("tgt_len 0") && Contains("at least 1"));
  REQUIRE_THROWS_WITH(xtr::PairedBatchGenerator(2, 4, 4, nullptr, 0), Contains("example function") && Contains("empty"));
}

}  // namespace test_paired_sequences
