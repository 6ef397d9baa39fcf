#pragma once
// What a layer's sublayers read besides the residual stream: the layer's index (dropout sites), the rotary table,
// the context of a cross-attending stack (and where its gradient goes), and while decoding, the cache.
#include <cstdint>

#include "xtr/backend/ops.hpp"
#include "xtr/core/view.hpp"
#include "xtr/layers/kv_cache.hpp"

namespace xtr {

template <class Backend>
struct LayerInputs {
  using T = typename Backend::scalar;
  using RotaryTable = typename kernel<Backend, ops::Rotate>::Table;

  Index layer = 0, depth = 0;
  const RotaryTable* rotary = nullptr;
  // CrossAttend
  ConstView<T> context{};                     // (B·S, dim_context)
  const std::uint8_t* context_mask = nullptr;  // (B, S) or null
  Index context_length = 0;
  T* context_grad = nullptr;                  // (B·S, dim_context), += in the backward
  // the score bias of the stack (ScoreBias): table (heads, stride), bias(h, i, j) = table[h · stride + j − i − q_offset
  // + zero]; its gradient adds into score_bias_grad in the backward
  const T* score_bias = nullptr;
  Index score_bias_stride = 0, score_bias_zero = 0;
  T* score_bias_grad = nullptr;
  // value residual: the first layer's values (rows ld apart), where later layers add their gradient, and where the
  // first layer puts its values
  const T* first_values = nullptr;
  Index first_values_ld = 0;
  T* first_values_grad = nullptr;
  ConstView<T>* values_out = nullptr;
  // decoding
  KVCache<T>* cache = nullptr;
};

}  // namespace xtr
