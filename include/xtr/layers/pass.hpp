#pragma once
// What every sublayer needs during one pass of a model: where activations go (the backend's arena), the parameters,
// the batch shape, the key mask, whether dropout is on and which random streams it draws from, and, while decoding
// with a bfloat16 copy of the weights, that copy. The model fills one Pass per forward, backward or decode step and
// hands it down; sublayers never reach into the model.
#include <cstdint>
#include <string>

#include "xtr/backend/ops.hpp"
#include "xtr/core/arena.hpp"
#include "xtr/core/weight_format.hpp"
#include "xtr/core/parameters.hpp"
#include "xtr/core/rng.hpp"
#include "xtr/core/view.hpp"

namespace xtr {

template <class Backend>
struct Pass {
  using T = typename Backend::scalar;

  Arena& arena;
  ParameterStore<T>& params;
  Index batch = 0, length = 0;          // the stack sees batch · length rows
  const std::uint8_t* mask = nullptr;   // (batch, length) key padding (1 = real), or null
  const std::uint8_t* self_key_mask = nullptr;  // (batch, length) keys self-attention sees, when not `mask`
                                                // (x-transformers' self_attn_kv_mask, combined with the padding)
  bool dropout = false;                 // training mode: dropout is drawn
  std::uint64_t dropout_seed = 0, forward_count = 0;
  const std::uint16_t* bf16 = nullptr;  // decoding from a bfloat16 copy of every parameter (same offsets), or null
  const WeightCopy* copy = nullptr;     // decoding from the model's bf16 / int8 / q4 copy (quantize()), or null
  Index position = 0;                   // position of row 0 of each sequence (decoding: the cache's position)
  Index sequence_offset = 0;            // global index of this batch's first sequence (data-parallel ranks)

  [[nodiscard]] Index rows() const { return batch * length; }

  /// Dropout streams: (forward pass, site); sites: 0 embeddings, 3l+1 attention, 3l+2 feed-forward, 3·depth + l
  /// cross-attention of layer l. A site draws `per_sequence` numbers for each sequence of the batch, so the stream
  /// starts at draw sequence_offset · per_sequence: a rank's rows of a global batch get the masks one process would.
  [[nodiscard]] RandomStream dropout_stream(std::uint64_t site, Index per_sequence) const {
    return RandomStream{dropout_seed, 1}.fork(forward_count).fork(site).from(std::uint64_t(sequence_offset) *
                                                                           std::uint64_t(per_sequence));
  }
  /// The rate to apply: p while training, 0 otherwise.
  [[nodiscard]] double rate(double p) const { return dropout ? p : 0.0; }

  /// Fresh (rows, cols) backend memory, uninitialised.
  [[nodiscard]] View<T> allocate(Index rows, Index cols) { return {arena.allocate<T>(rows * cols), rows, cols}; }

  /// A parameter (or `rows` rows of adjacent parameters starting at `first`) as GEMM weights, with the bfloat16 copy
  /// while decoding with one.
  [[nodiscard]] ops::Weights<T> weights(ParameterId first, Index rows = -1) const {
    const auto& e = params.entry(first);
    const Index r = rows < 0 ? e.shape.rows() : rows, c = e.shape.cols();
    ops::Weights<T> w{ConstView<T>(params.values().data() + e.offset, r, c), bf16 ? bf16 + e.offset : nullptr};
    if (copy && copy->format == WeightFormat::bf16 && copy->holds(first.index)) w.bf16 = copy->bf16.data() + e.offset;
    if (copy && copy->quantized()) {
      // every entry the rows span (q, k and v are read as one block) must be in the copy
      for (Index covered = 0, i = first.index; covered < r; covered += params.entries()[std::size_t(i++)].shape.rows())
        require(copy->holds(int(i)), "parameter '", params.entries()[std::size_t(i)].name, "' ",
                params.entries()[std::size_t(i)].shape.str(), " is a GEMM's weights but its rows of ",
                params.entries()[std::size_t(i)].shape.cols(), " values are not whole groups of ", copy->group,
                ": it cannot be read as ", format_name(copy->format), " (quantize with a group that divides ",
                params.entries()[std::size_t(i)].shape.cols(), ")");
      const auto entry = std::size_t(first.index);
      if (copy->format == WeightFormat::int8) w.q8 = copy->q8.data() + e.offset;
      else w.q4 = copy->q4.data() + copy->q4_offset[entry];
      w.scales = copy->scales.data() + copy->scale_offset[entry];
      w.group = copy->group;
      w.int8_activations = copy->activations == ActivationFormat::int8;
    }
    return w;
  }
  [[nodiscard]] const T* value(ParameterId id) const { return id.index < 0 ? nullptr : params.values().data() + params.entry(id).offset; }
  [[nodiscard]] T* grad(ParameterId id) const { return id.index < 0 ? nullptr : params.grads().data() + params.entry(id).offset; }
};

}  // namespace xtr
