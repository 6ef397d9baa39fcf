#pragma once
// What a decoder keeps between generation steps: per layer K and V of the tokens seen so far (and, cross-attending,
// the context's keys and values, projected once).
// Beam search moves sequences between rows: repeat_rows() makes each row `times` consecutive rows (after the prompt)
// and reorder_rows() makes row r continue row parent[r], copying only the live keys of the rows that change.
// The keys and values are of T, or halves (KVFormat::f16: k_half and v_half instead of k and v); every move below
// treats both alike.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <type_traits>
#include <vector>

#include "xtr/core/error.hpp"
#include "xtr/core/half.hpp"
#include "xtr/core/tensor.hpp"
#include "xtr/core/weight_format.hpp"

namespace xtr {

template <class T>
struct KVCache {
  Index batch = 0, capacity = 0;  // rows per head's run: grown with what is decoded (make_room), at most
                                  // 2 · max_seq_len (+ memory tokens: a sliding window moves rarely)
  Index start = 0, length = 0;    // live rows [start, start + length)
  Index position = 0;             // position of the next token (keeps counting past max_seq_len)
  std::vector<Tensor<T>> k, v;    // per layer (batch, kv_heads, capacity, dim_head): each head's rows together,
                                  // read as one run per head; rows outside the live ones are undefined (never read)
  KVFormat format = KVFormat::f32;         // f16: the keys and values are in k_half and v_half (k and v empty)
  std::vector<Tensor<Half>> k_half, v_half;  // per layer, the layout of k and v
  std::vector<std::uint16_t> bf16_weights;  // when set: the parameters rounded to bfloat16, same layout
  const void* checked_weights = nullptr;     // the weight copy found fresh (not stale) at this cache's first step
  // CrossAttend: the context's keys and values, projected once per sequence
  Index context_length = 0;
  std::vector<Tensor<T>> context_kv;        // per layer (batch, context_length, 2 · kv_heads · dim_head) [k | v]
  std::vector<std::uint8_t> context_mask;   // (batch, context_length), empty = every key
  // DynamicPositionBias: its MLP's output by distance (rows, heads), kept across steps
  std::vector<T> score_bias_memo;
  // Left-padded sequences (x-transformers' seq_start_pos): the position of each sequence's first real token; keys
  // before it are hidden and absolute positions count from it. Empty = every sequence starts at 0.
  std::vector<Index> seq_start;

  /// Row 0 of head h of sequence b in a per-layer K or V tensor (batch, kv_heads, capacity, dim_head): each head's
  /// rows are consecutive, `capacity` rows of dim_head values.
  template <class E>
  static E* head_rows(Tensor<E>& t, Index b, Index h) {
    const Index heads = t.shape().extent[1], rows = t.shape().extent[2], dh = t.shape().extent[3];
    return t.data() + (b * heads + h) * rows * dh;
  }

  /// The live rows moved to the front of each head's run (start = 0): the sliding window reached the buffer's end.
  void slide_to_front() {
    for_each_layer_tensor([&](auto& t) {
      const Index heads = t.shape().extent[1], dh = t.shape().extent[3];
      for (Index b = 0; b < batch; ++b)
        for (Index h = 0; h < heads; ++h) {
          auto* base = head_rows(t, b, h);
          std::memmove(base, base + start * dh, sizeof(*base) * std::size_t(length * dh));
        }
    });
    start = 0;
  }

  /// Room for `rows` more rows after the live ones in every head's run of at most `full` rows: a buffer at its full
  /// size moves the live rows to the front (slide_to_front); a smaller one grows (doubles, at least to fit, at most
  /// to `full`) with the live rows copied to the front of the new one. A cache starts at the rows its maker expects
  /// (make_cache's `rows`; generate() passes prompt + new tokens) or empty, so a short prompt's generate() touches a
  /// small buffer, which the allocator recycles from call to call, rather than first-touching pages of a
  /// 2 · max_seq_len one on every call (bench/RESULTS.md, issue 15's eleventh part).
  void make_room(Index rows, Index full) {
    require(length + rows <= full, "KV cache: ", length, " live rows and ", rows, " new ones exceed its ", full,
            " rows");
    if (start + length + rows <= capacity) return;
    if (capacity >= full) return slide_to_front();
    const Index grown = std::min(full, std::max(2 * capacity, length + rows));
    copy_live_rows(1, grown, 0);
    capacity = grown;
    start = 0;
  }

  /// Row b becomes rows [b · times, (b + 1) · times), each a copy (the context's keys and values too).
  void repeat_rows(Index times) {
    require(times >= 1, "repeat_rows: times must be >= 1, got ", times);
    if (times == 1) return;
    auto repeat = [&](Tensor<T>& t, Index rows_per_sequence, Index first_row, Index rows) {
      const Index width = t.shape().extent[t.shape().rank - 1];
      Tensor<T> out(Shape{batch * times, rows_per_sequence, width}, Uninitialized{}, t.memory());
      for (Index b = 0; b < batch; ++b)
        for (Index i = 0; i < times; ++i)
          std::copy_n(t.data() + (b * rows_per_sequence + first_row) * width, rows * width,
                      out.data() + ((b * times + i) * rows_per_sequence + first_row) * width);
      t = std::move(out);
    };
    copy_live_rows(times, capacity, start);
    for (auto& t : context_kv) repeat(t, context_length, 0, context_length);
    if (!context_mask.empty()) {
      std::vector<std::uint8_t> mask(std::size_t(batch * times * context_length));
      for (Index b = 0; b < batch; ++b)
        for (Index i = 0; i < times; ++i)
          std::copy_n(context_mask.data() + b * context_length, context_length,
                      mask.data() + (b * times + i) * context_length);
      context_mask = std::move(mask);
    }
    if (!seq_start.empty()) {
      std::vector<Index> starts(std::size_t(batch * times));
      for (Index r = 0; r < batch * times; ++r) starts[std::size_t(r)] = seq_start[std::size_t(r / times)];
      seq_start = std::move(starts);
    }
    batch *= times;
  }

  /// Row r continues the sequence of row parent[r] (parent.size() == batch). Parents stay within groups of `group`
  /// consecutive rows (the beams of one prompt), whose context is the same and is not copied. Only rows whose parent
  /// is another row are written; the live keys of the rows they read are saved first (`scratch`, reused).
  void reorder_rows(std::span<const Index> parent, Index group, std::vector<std::byte>& scratch) {
    require(Index(parent.size()) == batch, "reorder_rows: ", parent.size(), " parents for a cache of ", batch,
            " rows");
    require(group >= 1 && batch % group == 0, "reorder_rows: group ", group, " does not divide the batch ", batch);
    std::vector<Index> source;  // rows read by another row, in order of first use
    std::vector<Index> slot(std::size_t(batch), -1);
    for (Index r = 0; r < batch; ++r) {
      const Index p = parent[std::size_t(r)];
      require(p >= 0 && p < batch && p / group == r / group, "reorder_rows: row ", r, " cannot continue row ", p,
              " (outside its group of ", group, " rows)");
      if (p != r && slot[std::size_t(p)] < 0) {
        slot[std::size_t(p)] = Index(source.size());
        source.push_back(p);
      }
    }
    if (source.empty()) return;
    if (!seq_start.empty()) {
      const std::vector<Index> starts = seq_start;
      for (Index r = 0; r < batch; ++r) seq_start[std::size_t(r)] = starts[std::size_t(parent[std::size_t(r)])];
    }
    if (length == 0) return;
    for_each_layer_tensor([&](auto& t) {
      const Index heads = t.shape().extent[1], dh = t.shape().extent[3];
      const std::size_t live = sizeof(*t.data()) * std::size_t(length * dh);  // bytes of one head's live rows
      const auto rows_of = [&](Index sequence, Index h) { return head_rows(t, sequence, h) + start * dh; };
      scratch.resize(source.size() * std::size_t(heads) * live);
      const auto saved = [&](Index s, Index h) { return scratch.data() + std::size_t(s * heads + h) * live; };
      for (std::size_t s = 0; s < source.size(); ++s)
        for (Index h = 0; h < heads; ++h) std::memcpy(saved(Index(s), h), rows_of(source[s], h), live);
      for (Index r = 0; r < batch; ++r) {
        const Index p = parent[std::size_t(r)];
        if (p != r)
          for (Index h = 0; h < heads; ++h) std::memcpy(rows_of(r, h), saved(slot[std::size_t(p)], h), live);
      }
    });
  }

 private:
  /// Every layer's K and V into new tensors of `rows` rows per head's run: the live rows of sequence b copied to
  /// sequences b · times … (b + 1) · times − 1, from row `to` of each run (the other rows undefined, as ever).
  void copy_live_rows(Index times, Index rows, Index to) {
    for_each_layer_tensor([&](auto& t) {
      const Index heads = t.shape().extent[1], dh = t.shape().extent[3];
      std::remove_reference_t<decltype(t)> out(Shape{batch * times, heads, rows, dh}, Uninitialized{}, t.memory());
      for (Index b = 0; b < batch; ++b)
        for (Index i = 0; i < times; ++i)
          for (Index h = 0; h < heads; ++h)
            std::copy_n(head_rows(t, b, h) + start * dh, length * dh, head_rows(out, b * times + i, h) + to * dh);
      t = std::move(out);
    });
  }

  /// f(t) for every layer's K and V tensor, of T or of halves.
  template <class F>
  void for_each_layer_tensor(F&& f) {
    for (auto* layers : {&k, &v})
      for (auto& t : *layers) f(t);
    for (auto* layers : {&k_half, &v_half})
      for (auto& t : *layers) f(t);
  }
};

}  // namespace xtr
