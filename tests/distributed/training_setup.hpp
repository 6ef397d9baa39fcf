#pragma once
// The small model, text and batch sizes the data-parallel checks train on: tests/distributed/data_parallel_check.cpp
// (over MPI) and kernels/nccl_tests.cpp (over NCCL) compare N ranks with one process on exactly these.
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "xtr/xtr.hpp"

namespace xtr::testing::data_parallel {

/// Failed checks so far; check() prints each verdict at once (a rank that dies later has said what it saw).
inline int failures = 0;
inline void check(bool ok, const std::string& what) {
  if (!ok) ++failures;
  std::printf("%s: %s\n", ok ? "ok" : "FAIL", what.c_str());
  std::fflush(stdout);
}

inline TransformerConfig small_config(double dropout, Index dim = 32) {
  return {.num_tokens = 64,
          .max_seq_len = 32,
          .emb_dropout = dropout,
          .layers = {.dim = dim, .depth = 2, .heads = 2, .dim_head = 16, .attn_dropout = dropout, .ff_dropout = dropout},
          .seed = 3};
}

/// 3000 words from five, drawn from a fixed stream, as bytes below 64.
inline TextDataset synthetic_text() {
  std::vector<std::uint8_t> bytes;
  const std::string words[] = {"the cat ", "sat on ", "a mat. ", "dogs run ", "fast! "};
  RandomStream rs{9, 0};
  for (int i = 0; i < 3000; ++i)
    for (char c : words[rs.below(std::uint64_t(i), 5)]) bytes.push_back(std::uint8_t(c) % 64);
  return TextDataset(std::move(bytes));
}

inline constexpr Index kBatch = 3, kSeqLen = 24, kAccumulate = 2;

/// One optimizer step of the loop train_enwik8 runs: kAccumulate micro-batches (through `dp` when it is not null: the
/// last one synchronises the gradients), clipping at 0.5. Returns this rank's loss summed over the micro-batches.
template <class Model, class Optimizer, class DP>
double train_step(Model& model, BatchLoader& loader, Optimizer& optimizer, DP* dp) {
  double loss_sum = 0;
  for (Index m = 0; m < kAccumulate; ++m) {
    auto loss = model(loader.next()) / double(kAccumulate);
    loss_sum += loss.item();
    if (dp)
      dp->backward(loss, m == kAccumulate - 1);
    else
      loss.backward();
  }
  clip_grad_norm(model.parameters(), 0.5);
  optimizer.step();
  optimizer.zero_grad();
  return loss_sum;
}

}  // namespace xtr::testing::data_parallel
