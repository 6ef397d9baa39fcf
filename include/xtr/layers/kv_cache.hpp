#pragma once
// What a decoder keeps between generation steps: per layer K and V of the tokens seen so far (and, cross-attending,
// the context's keys and values, projected once).
#include <cstdint>
#include <vector>

#include "xtr/core/tensor.hpp"

namespace xtr {

template <class T>
struct KVCache {
  Index batch = 0, capacity = 0;  // rows per sequence held (2 · max_seq_len: a sliding window moves rarely)
  Index start = 0, length = 0;    // live rows [start, start + length)
  Index position = 0;             // position of the next token (keeps counting past max_seq_len)
  std::vector<Tensor<T>> k, v;    // per layer (batch, capacity, kv_heads · dim_head)
  std::vector<std::uint16_t> bf16_weights;  // when set: the parameters rounded to bfloat16, same layout
  // CrossAttend: the context's keys and values, projected once per sequence
  Index context_length = 0;
  std::vector<Tensor<T>> context_kv;        // per layer (batch, context_length, 2 · kv_heads · dim_head) [k | v]
  std::vector<std::uint8_t> context_mask;   // (batch, context_length), empty = every key
  // DynamicPositionBias: its MLP's output by distance (rows, heads), kept across steps
  std::vector<T> score_bias_memo;
};

}  // namespace xtr
