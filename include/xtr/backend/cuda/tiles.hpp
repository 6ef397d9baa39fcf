#pragma once
// The tile algorithms of flash attention, written once for the host and the device (XTR_HOST_DEVICE): the CUDA
// kernels (kernels/attention_tiles.cu) call them per element, per row or per tile, and the host drivers at the end of
// this header compose them in the order a kernel does, so the CPU tests (tests/unit/test_cuda_tiles.cpp) check the
// algorithm against the reference backend without a GPU.
//   online softmax of one query row over key tiles S (scores after the score bias and the masks):
//     m' = max(m, rowmax S);  α = e^{m − m'};  P = e^{S − m'};  l' = α l + rowsum P;  o' = α o + drop(P) V
//     finish: O = o / l,  lse = m + log l   (l = 0: nothing visible, O = 0 and lse = +∞, the CPU backend's convention:
//     the backward's P = e^{S − lse} is then 0 for every key)
//   merge of two partial states (a, b), the split-KV combine (associative and commutative up to rounding):
//     m = max(ma, mb);  l = e^{ma − m} la + e^{mb − m} lb;  o = e^{ma − m} oa + e^{mb − m} ob
//   score of query i (position i + q_offset) with key j of head h, batch b (ops::AttentionProblem's modifiers):
//     s = scale · q·k + table[h · bias_stride + bias_zero + j − i − q_offset]   (ALiBi, T5 buckets, dynamic bias)
//     −∞ where causal and j > i + q_offset, or key_mask[b, j] = 0
//   backward of one tile: P = e^{S − lse};  dV += drop(P)ᵀ dO;  dP = drop(dO Vᵀ);  dS = P ⊙ (dP − Δ),
//     Δ = rowsum(dO ⊙ O);  dQ += scale · dS K;  dK += scale · dSᵀ Q;  d table += dS
// Device-callable functions take plain pointers and sizes (no Eigen, no std containers); the drivers are host-only.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#if defined(__CUDACC__)
// nvcc warns (#554) that ops::HeadsView<const T>'s conversion to HeadsView<const T> is never called: it is constrained
// away (requires !is_const_v<T>), which nvcc's front end does not take into account.
#pragma nv_diagnostic push
#pragma nv_diag_suppress 554
#endif
#include "xtr/backend/ops.hpp"
#if defined(__CUDACC__)
#pragma nv_diagnostic pop
#endif
#include "xtr/core/error.hpp"

#ifndef XTR_HOST_DEVICE  // also defined, identically, by core/rng.hpp
#if defined(__CUDACC__)
#define XTR_HOST_DEVICE __host__ __device__
#else
#define XTR_HOST_DEVICE
#endif
#endif

namespace xtr::cuda::tiles {

template <class T>
XTR_HOST_DEVICE constexpr T infinity() {
  return T(__builtin_huge_val());
}

template <class T>
XTR_HOST_DEVICE inline T exp_of(T x) {
#if defined(__CUDA_ARCH__)
  if constexpr (std::is_same_v<T, float>) return ::expf(x);
  else return ::exp(x);
#else
  return std::exp(x);
#endif
}

template <class T>
XTR_HOST_DEVICE inline T log_of(T x) {
#if defined(__CUDA_ARCH__)
  if constexpr (std::is_same_v<T, float>) return ::logf(x);
  else return ::log(x);
#else
  return std::log(x);
#endif
}

template <class T>
XTR_HOST_DEVICE constexpr T max_of(T a, T b) {
  return a < b ? b : a;
}

// ---------------------------------------------------------------------------------------------------------------------
// Online softmax of one query row

/// Running statistics of one query row: m = the largest score seen, l = Σ e^{s − m} over the keys seen. The row's
/// unnormalised output o = Σ e^{s − m} v (dim_head values) lives beside it, in the caller's storage (registers,
/// shared memory); it is 0 while l is 0.
template <class T>
struct RowSoftmax {
  T m = -infinity<T>();
  T l = T(0);
};

/// Moves the state to the maximum over a tile whose largest score is `tile_max` and returns the factor α = e^{m − m'}
/// by which the caller scales its o (l is scaled here). α = 1 while every key so far is masked (m' = −∞): o and l
/// are 0 and stay so.
template <class T>
XTR_HOST_DEVICE inline T rescale(RowSoftmax<T>& s, T tile_max) {
  const T m_new = max_of(s.m, tile_max);
  if (m_new == -infinity<T>()) return T(1);
  const T alpha = exp_of(s.m - m_new);  // s.m = −∞: 0
  s.l *= alpha;
  s.m = m_new;
  return alpha;
}

/// e^{score − m} after rescale(); 0 for a masked score and while every key so far is masked.
template <class T>
XTR_HOST_DEVICE inline T probability(const RowSoftmax<T>& s, T score) {
  return s.m == -infinity<T>() ? T(0) : exp_of(score - s.m);
}

/// One key tile's scores of the row (n of them, −∞ where masked) into the state: scores become P = e^{S − m'}, l
/// gains rowsum P; returns α for the row's o (accumulate()).
template <class T>
XTR_HOST_DEVICE inline T absorb(RowSoftmax<T>& s, T* scores, int n) {
  T tile_max = -infinity<T>();
  for (int c = 0; c < n; ++c) tile_max = max_of(tile_max, scores[c]);
  const T alpha = rescale(s, tile_max);
  T sum = T(0);
  for (int c = 0; c < n; ++c) sum += scores[c] = probability(s, scores[c]);
  s.l += sum;
  return alpha;
}

/// o ← α o + Σ_c p[c] v[c] over n value rows `v_ld` apart, `dim` values each.
template <class T>
XTR_HOST_DEVICE inline void accumulate(T* o, T alpha, const T* p, int n, const T* v, std::int64_t v_ld, int dim) {
  for (int d = 0; d < dim; ++d) {
    T acc = o[d] * alpha;
    for (int c = 0; c < n; ++c) acc += p[c] * v[c * v_ld + d];
    o[d] = acc;
  }
}

/// absorb() then accumulate(): one key tile (scores of n keys, values V) into the row's state and o.
template <class T>
XTR_HOST_DEVICE inline void update(RowSoftmax<T>& s, T* o, T* scores, int n, const T* v, std::int64_t v_ld, int dim) {
  const T alpha = absorb(s, scores, n);
  accumulate(o, alpha, scores, n, v, v_ld, dim);
}

/// a ← a ∪ b: the state of both key sets from the states of each (the split-KV combine); b empty leaves a as it is.
template <class T>
XTR_HOST_DEVICE inline void merge(RowSoftmax<T>& a, T* oa, const RowSoftmax<T>& b, const T* ob, int dim) {
  const T m = max_of(a.m, b.m);
  if (m == -infinity<T>()) return;  // both empty
  const T ca = exp_of(a.m - m), cb = exp_of(b.m - m);
  a.l = a.l * ca + b.l * cb;
  for (int d = 0; d < dim; ++d) oa[d] = oa[d] * ca + ob[d] * cb;
  a.m = m;
}

/// O = o / l in place; returns lse = m + log l. A row that saw no visible key (l = 0) gets O = 0 and lse = +∞.
template <class T>
XTR_HOST_DEVICE inline T finish(const RowSoftmax<T>& s, T* o, int dim) {
  if (!(s.l > T(0))) {
    for (int d = 0; d < dim; ++d) o[d] = T(0);
    return infinity<T>();
  }
  const T inv = T(1) / s.l;
  for (int d = 0; d < dim; ++d) o[d] *= inv;
  return s.m + log_of(s.l);
}

// ---------------------------------------------------------------------------------------------------------------------
// Split-KV reduction (flash-decoding): the keys of a row are cut into `splits` ranges, each gives a partial state
// (m[s], l[s], o[s]) from its own pass; the row's output is their merge.

/// Column d of the combined output, O_d = Σ_s e^{m_s − M} o_s[d] / Σ_s e^{m_s − M} l_s with M = max_s m_s, from the
/// column's values o_column[s · o_ld]; 0 when every split is empty. Equals merge() over the splits then finish().
template <class T>
XTR_HOST_DEVICE inline T combine_splits(const T* m, const T* l, const T* o_column, std::int64_t o_ld, int splits) {
  T big = -infinity<T>();
  for (int s = 0; s < splits; ++s) big = max_of(big, m[s]);
  if (big == -infinity<T>()) return T(0);
  T num = T(0), den = T(0);
  for (int s = 0; s < splits; ++s) {
    const T w = exp_of(m[s] - big);  // an empty split: m = −∞, w = 0
    num += w * o_column[s * o_ld];
    den += w * l[s];
  }
  return num / den;
}

/// The combined log-sum-exp of the splits; +∞ when every split is empty (finish()'s convention).
template <class T>
XTR_HOST_DEVICE inline T combine_splits_lse(const T* m, const T* l, int splits) {
  T big = -infinity<T>();
  for (int s = 0; s < splits; ++s) big = max_of(big, m[s]);
  if (big == -infinity<T>()) return infinity<T>();
  T den = T(0);
  for (int s = 0; s < splits; ++s) den += exp_of(m[s] - big) * l[s];
  return big + log_of(den);
}

/// Keys [first, end) of split s of n_keys cut into `splits` contiguous ranges of ⌈n_keys / splits⌉ (the last ones may
/// be short or empty).
XTR_HOST_DEVICE inline void split_range(std::int64_t n_keys, int splits, int s, std::int64_t* first,
                                        std::int64_t* end) {
  const std::int64_t chunk = (n_keys + splits - 1) / splits;
  const std::int64_t a = s * chunk, b = a + chunk;
  *first = a < n_keys ? a : n_keys;
  *end = b < n_keys ? b : n_keys;
}

// ---------------------------------------------------------------------------------------------------------------------
// Masks and score bias of a (query tile, key tile) pair. Queries i are rows of the call (positions i + q_offset:
// decoding with a cache), keys j are regular keys 0..k_len − 1 (memory keys have no mask and no bias).

/// What a (query tile, key tile) pair needs: nothing visible (skip it), everything visible (no per-element mask),
/// or the mask per element.
enum class TileKind : std::uint8_t { masked, visible, partial };

/// The causal geometry alone: queries i0 .. i0 + rows − 1 against keys j0 .. j0 + cols − 1 (rows, cols ≥ 1), query i
/// seeing keys j ≤ i + q_offset.
XTR_HOST_DEVICE constexpr TileKind classify_causal(bool causal, std::int64_t q_offset, std::int64_t i0,
                                                   std::int64_t rows, std::int64_t j0, std::int64_t cols) {
  if (!causal) return TileKind::visible;
  if (j0 > i0 + rows - 1 + q_offset) return TileKind::masked;  // the first key is beyond the last query's reach
  if (j0 + cols - 1 <= i0 + q_offset) return TileKind::visible;  // the last key is within the first query's
  return TileKind::partial;
}

/// The tile's kind with the causal mask and batch b's key padding mask (its cols bytes are read): masked when no
/// element is visible by either mask alone, visible when every element is, partial otherwise (then some element is
/// masked; with both masks, possibly all).
template <class T>
XTR_HOST_DEVICE inline TileKind classify(const ops::AttentionProblem<T>& p, std::int64_t b, std::int64_t i0,
                                         std::int64_t rows, std::int64_t j0, std::int64_t cols) {
  const TileKind kind = classify_causal(p.causal, p.q_offset, i0, rows, j0, cols);
  if (kind == TileKind::masked || p.key_mask == nullptr) return kind;
  std::int64_t seen = 0;
  for (std::int64_t c = 0; c < cols; ++c) seen += p.key_mask[b * p.key_mask_stride + j0 + c] != 0;
  if (seen == 0) return TileKind::masked;
  return seen < cols ? TileKind::partial : kind;
}

/// Keys [0, key_end) can be visible to queries i0 .. i0 + rows − 1: the key tiles from there on are skipped.
template <class T>
XTR_HOST_DEVICE inline std::int64_t key_end(const ops::AttentionProblem<T>& p, std::int64_t i0, std::int64_t rows) {
  if (!p.causal) return p.k_len;
  const std::int64_t reach = i0 + rows + p.q_offset;
  return reach < 0 ? 0 : (reach < p.k_len ? reach : p.k_len);
}

/// The first query that can see key j (the backward's first query tile for a key tile).
template <class T>
XTR_HOST_DEVICE inline std::int64_t first_query(const ops::AttentionProblem<T>& p, std::int64_t j) {
  if (!p.causal) return 0;
  return j - p.q_offset > 0 ? j - p.q_offset : 0;
}

/// Whether query i sees regular key j of batch b.
template <class T>
XTR_HOST_DEVICE inline bool visible(const ops::AttentionProblem<T>& p, std::int64_t b, std::int64_t i,
                                    std::int64_t j) {
  if (p.causal && j > i + p.q_offset) return false;
  return p.key_mask == nullptr || p.key_mask[b * p.key_mask_stride + j] != 0;
}

/// The score bias of head h for query i and key j, read from the relative-position table (ALiBi, T5 buckets and the
/// dynamic position bias all come as one; layers/score_bias.hpp fills it once per pass); 0 without a table.
template <class T>
XTR_HOST_DEVICE inline T table_bias(const ops::AttentionProblem<T>& p, std::int64_t h, std::int64_t i,
                                    std::int64_t j) {
  return p.bias ? p.bias[h * p.bias_stride + p.bias_zero + j - i - p.q_offset] : T(0);
}

/// ALiBi without a table: −|j − i − q_offset| · slope_h, in T, as layers/score_bias.hpp computes the table's entry
/// (slope 0 for the heads beyond alibi_num_heads). A kernel may use it instead of reading the table.
template <class T>
XTR_HOST_DEVICE inline T alibi_bias(T slope, std::int64_t i, std::int64_t j, std::int64_t q_offset) {
  const std::int64_t d = j - i - q_offset;
  return -T(d < 0 ? -d : d) * slope;
}

/// The modified score of (query i, regular key j) in a tile of `kind`: + bias, then −∞ where masked (checked only in
/// a partial tile). The order is the CPU backend's (bias_tile, then mask_tile).
template <class T>
XTR_HOST_DEVICE inline T modify_score(const ops::AttentionProblem<T>& p, TileKind kind, std::int64_t b,
                                      std::int64_t h, std::int64_t i, std::int64_t j, T s) {
  if (p.bias) s += table_bias(p, h, i, j);
  if (kind == TileKind::partial && !visible(p, b, i, j)) return -infinity<T>();
  return s;
}

/// modify_score() over a (rows, cols) tile of scores `ld` apart, queries i0.., regular keys j0...
template <class T>
XTR_HOST_DEVICE inline void modify_tile(const ops::AttentionProblem<T>& p, TileKind kind, std::int64_t b,
                                        std::int64_t h, std::int64_t i0, std::int64_t j0, int rows, int cols, T* s,
                                        std::int64_t ld) {
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) s[r * ld + c] = modify_score(p, kind, b, h, i0 + r, j0 + c, s[r * ld + c]);
}

/// RandomStream::uniform(index), the word picked without indexing the Philox block by a run-time value (which puts
/// the block in local memory on the device).
XTR_HOST_DEVICE inline float uniform_draw(const RandomStream& rng, std::uint64_t index) {
  index += rng.first;
  const Philox::Words w = rng.words(index >> 2);
  const unsigned word = unsigned(index & 3);
  const std::uint32_t bits = word == 0 ? w[0] : (word == 1 ? w[1] : (word == 2 ? w[2] : w[3]));
  return float(bits >> 8) * (1.0f / 16777216.0f);
}

/// Dropout's factor for the probability of (b, h, query i, key column `key`; memory keys first): 1/(1 − p) when kept,
/// 0 when dropped, kept iff uniform(((b·H + h)·Tq + i)·(M + Tk) + key) ≥ float(p), the CPU backend's draw.
template <class T>
XTR_HOST_DEVICE inline T dropout_factor(const ops::AttentionProblem<T>& p, std::int64_t b, std::int64_t h,
                                        std::int64_t i, std::int64_t key) {
  if (!(p.dropout > 0)) return T(1);
  const std::uint64_t index =
      ((std::uint64_t(b) * std::uint64_t(p.heads) + std::uint64_t(h)) * std::uint64_t(p.q_len) + std::uint64_t(i)) *
          std::uint64_t(p.mem_len + p.k_len) +
      std::uint64_t(key);
  return uniform_draw(p.dropout_stream, index) >= float(p.dropout) ? T(1.0 / (1.0 - p.dropout)) : T(0);
}

/// Whether query row i of batch b is padding (query_mask 0): O = 0, lse = +∞, no gradient.
template <class T>
XTR_HOST_DEVICE inline bool query_padded(const ops::AttentionProblem<T>& p, std::int64_t b, std::int64_t i) {
  return p.query_mask != nullptr && p.query_mask[b * p.query_mask_stride + i] == 0;
}

/// Element (b, t, head, 0) of an operand of heads (ops::HeadsView::at, device-callable).
template <class T>
XTR_HOST_DEVICE inline T* row_of(ops::HeadsView<T> x, std::int64_t b, std::int64_t t, std::int64_t head,
                                 std::int64_t dim_head) {
  return x.data + b * x.batch_stride + t * x.row_stride + head * (x.head_stride ? x.head_stride : dim_head);
}

// ---------------------------------------------------------------------------------------------------------------------
// Backward elements

/// P = e^{s − lse} from the forward's lse (+∞ for a row with nothing visible or a padded query: P = 0).
template <class T>
XTR_HOST_DEVICE inline T probability_from_lse(T s, T lse) {
  return exp_of(s - lse);
}

/// dS = P (dP − Δ), Δ = rowsum(dO ⊙ O) of the row.
template <class T>
XTR_HOST_DEVICE inline T score_gradient(T p, T dp, T delta) {
  return p * (dp - delta);
}

// ---------------------------------------------------------------------------------------------------------------------
// Host drivers: the tiles composed as the kernels compose them (one query tile of one (batch, head) at a time, key
// tiles in order, masked tiles skipped), in plain loops. They are what the CPU tests compare with the reference
// backend; they are not a fast path (the Cpu backend's Eigen kernel is).

/// Tile sizes of a driver run (any sizes ≥ 1; T need not be a multiple).
struct TileShape {
  int q = 64, k = 64;
};

namespace detail {
/// scale · q·k over dim values.
template <class T>
inline T dot(const T* q, const T* k, std::int64_t dim, T scale) {
  T s = T(0);
  for (std::int64_t d = 0; d < dim; ++d) s += q[d] * k[d];
  return scale * s;
}
template <class T>
ops::HeadsView<const T> memory_keys(const ops::AttentionProblem<T>& p) {
  return {p.mem_k, 0, p.memory_ld()};
}
template <class T>
ops::HeadsView<const T> memory_values(const ops::AttentionProblem<T>& p) {
  return {p.mem_v, 0, p.memory_ld()};
}
template <class T>
void check_problem(const ops::AttentionProblem<T>& p, TileShape tiles) {
  require(tiles.q >= 1 && tiles.k >= 1, "tiles: tile sizes must be >= 1, got ", tiles.q, " x ", tiles.k);
  require(p.kv_heads >= 1 && p.heads % p.kv_heads == 0, "tiles: kv_heads ", p.kv_heads, " must divide heads ",
          p.heads);
}

/// One query tile of head h through the keys [key_first, key_last) of the regular keys (and the memory keys when
/// `memory`): the forward's inner loop. state and acc (rows × dim_head) accumulate.
template <class T>
void visit_keys(const ops::AttentionProblem<T>& p, TileShape tiles, ops::HeadsView<const T> q,
                ops::HeadsView<const T> k, ops::HeadsView<const T> v, std::int64_t b, std::int64_t h, std::int64_t i0,
                int rows, bool memory, std::int64_t key_first, std::int64_t key_last, RowSoftmax<T>* state, T* acc,
                T* s) {
  const std::int64_t dh = p.dim_head, g = h % p.kv_heads;
  auto tile = [&](ops::HeadsView<const T> keys, ops::HeadsView<const T> values, std::int64_t j0, int cols,
                  bool regular, TileKind kind) {
    for (int r = 0; r < rows; ++r)
      for (int c = 0; c < cols; ++c)
        s[r * tiles.k + c] = dot(row_of(q, b, i0 + r, h, dh), row_of(keys, b, j0 + c, g, dh), dh, p.scale);
    if (regular) modify_tile(p, kind, b, h, i0, j0, rows, cols, s, tiles.k);
    for (int r = 0; r < rows; ++r) {
      T* pr = s + r * tiles.k;
      const T alpha = absorb(state[r], pr, cols);
      if (p.dropout > 0)
        for (int c = 0; c < cols; ++c) pr[c] *= dropout_factor(p, b, h, i0 + r, (regular ? p.mem_len : 0) + j0 + c);
      accumulate(acc + r * dh, alpha, pr, cols, row_of(values, b, j0, g, dh), values.row_stride, int(dh));
    }
  };
  if (memory)
    for (std::int64_t j0 = 0; j0 < p.mem_len; j0 += tiles.k)
      tile(memory_keys(p), memory_values(p), j0, int(std::min<std::int64_t>(tiles.k, p.mem_len - j0)), false,
           TileKind::visible);
  for (std::int64_t j0 = key_first; j0 < key_last; j0 += tiles.k) {
    const int cols = int(std::min<std::int64_t>(tiles.k, key_last - j0));
    const TileKind kind = classify(p, b, i0, rows, j0, cols);
    if (kind == TileKind::masked) continue;
    tile(k, v, j0, cols, true, kind);
  }
}
}  // namespace detail

/// O (batch, q_len, heads · dim_head) and lse (batch, heads, q_len; may be null) as the forward kernel computes them:
/// per (batch, head, query tile), the memory keys, then the key tiles up to key_end(), masked ones skipped, each
/// absorbed into the rows' states; finish(). Query head h reads kv head h mod kv_heads.
template <class T>
void forward(const ops::AttentionProblem<T>& p, ops::HeadsView<const T> q, ops::HeadsView<const T> k,
             ops::HeadsView<const T> v, ops::HeadsView<T> o, T* lse, TileShape tiles = {}) {
  detail::check_problem(p, tiles);
  const std::int64_t dh = p.dim_head;
  std::vector<T> s(std::size_t(tiles.q) * std::size_t(tiles.k)), acc(std::size_t(tiles.q) * std::size_t(dh));
  std::vector<RowSoftmax<T>> state(std::size_t(tiles.q));
  for (std::int64_t b = 0; b < p.batch; ++b)
    for (std::int64_t h = 0; h < p.heads; ++h)
      for (std::int64_t i0 = 0; i0 < p.q_len; i0 += tiles.q) {
        const int rows = int(std::min<std::int64_t>(tiles.q, p.q_len - i0));
        std::fill(state.begin(), state.end(), RowSoftmax<T>{});
        std::fill(acc.begin(), acc.end(), T(0));
        detail::visit_keys(p, tiles, q, k, v, b, h, i0, rows, true, 0, key_end(p, i0, rows), state.data(),
                           acc.data(), s.data());
        for (int r = 0; r < rows; ++r) {
          T* out = row_of(o, b, i0 + r, h, dh);
          T row_lse;
          if (query_padded(p, b, i0 + r)) {
            for (std::int64_t d = 0; d < dh; ++d) out[d] = T(0);
            row_lse = infinity<T>();
          } else {
            row_lse = finish(state[std::size_t(r)], acc.data() + r * dh, int(dh));
            for (std::int64_t d = 0; d < dh; ++d) out[d] = acc[std::size_t(r * dh + d)];
          }
          if (lse) lse[(b * p.heads + h) * p.q_len + i0 + r] = row_lse;
        }
      }
}

/// The decoding forward (flash-decoding): per query row, the regular keys cut into `splits` ranges (split_range),
/// each a partial state from its own pass over its key tiles; the memory keys are one more partial; the row's O and
/// lse combined from the partials (combine_splits). No dropout (decoding is inference).
template <class T>
void forward_split(const ops::AttentionProblem<T>& p, ops::HeadsView<const T> q, ops::HeadsView<const T> k,
                   ops::HeadsView<const T> v, ops::HeadsView<T> o, T* lse, int splits, TileShape tiles = {}) {
  detail::check_problem(p, tiles);
  require(splits >= 1, "tiles::forward_split: splits must be >= 1, got ", splits);
  require(p.dropout == 0, "tiles::forward_split: decoding takes no attention dropout, got p = ", p.dropout);
  const std::int64_t dh = p.dim_head;
  const int parts = splits + 1;  // part 0: the memory keys
  const auto n_parts = static_cast<std::size_t>(parts);
  std::vector<T> m(n_parts), l(n_parts), partial(n_parts * static_cast<std::size_t>(dh));
  std::vector<T> s(static_cast<std::size_t>(tiles.k));
  for (std::int64_t b = 0; b < p.batch; ++b)
    for (std::int64_t h = 0; h < p.heads; ++h)
      for (std::int64_t i = 0; i < p.q_len; ++i) {
        const std::int64_t reach = key_end(p, i, 1);
        for (int part = 0; part < parts; ++part) {
          RowSoftmax<T> state;
          T* acc = partial.data() + part * dh;
          std::fill(acc, acc + dh, T(0));
          if (part == 0) {
            detail::visit_keys(p, {1, tiles.k}, q, k, v, b, h, i, 1, true, 0, 0, &state, acc, s.data());
          } else {
            std::int64_t first = 0, end = 0;
            split_range(p.k_len, splits, part - 1, &first, &end);
            detail::visit_keys(p, {1, tiles.k}, q, k, v, b, h, i, 1, false, first, std::min(end, reach), &state,
                               acc, s.data());
          }
          m[std::size_t(part)] = state.m;
          l[std::size_t(part)] = state.l;
        }
        T* out = row_of(o, b, i, h, dh);
        const bool padded = query_padded(p, b, i);
        for (std::int64_t d = 0; d < dh; ++d)
          out[d] = padded ? T(0) : combine_splits(m.data(), l.data(), partial.data() + d, dh, parts);
        if (lse) lse[(b * p.heads + h) * p.q_len + i] = padded ? infinity<T>() : combine_splits_lse(m.data(), l.data(), parts);
      }
}

/// dQ, dK, dV (added to; zero them first) from dO, with O and lse from the forward, as the backward kernel computes
/// them: Δ per row, then per (batch, kv head, key tile), for each query head of the group and each query tile from
/// the first that can see the key tile (masked tiles skipped): P = e^{S − lse}, dV, dP, dS, dQ, dK. The gradients of
/// the memory keys and values and of the bias table add into `extra` (each may be null).
template <class T>
void backward(const ops::AttentionProblem<T>& p, ops::HeadsView<const T> q, ops::HeadsView<const T> k,
              ops::HeadsView<const T> v, ops::HeadsView<const T> o, const T* lse, ops::HeadsView<const T> dout,
              ops::HeadsView<T> dq, ops::HeadsView<T> dk, ops::HeadsView<T> dv,
              const ops::AttentionExtraGradients<T>& extra = {}, TileShape tiles = {}) {
  detail::check_problem(p, tiles);
  const std::int64_t dh = p.dim_head, group = p.heads / p.kv_heads;
  std::vector<T> delta(std::size_t(p.batch * p.heads * p.q_len));
  for (std::int64_t b = 0; b < p.batch; ++b)
    for (std::int64_t h = 0; h < p.heads; ++h)
      for (std::int64_t i = 0; i < p.q_len; ++i) {
        const T* a = row_of(dout, b, i, h, dh);
        const T* c = row_of(o, b, i, h, dh);
        T sum = T(0);
        for (std::int64_t d = 0; d < dh; ++d) sum += a[d] * c[d];
        delta[std::size_t((b * p.heads + h) * p.q_len + i)] = sum;
      }
  const std::size_t tile = std::size_t(tiles.q) * std::size_t(tiles.k);
  std::vector<T> P(tile);
  const ops::HeadsView<T> dmem_k{extra.mem_k, 0, p.memory_ld()}, dmem_v{extra.mem_v, 0, p.memory_ld()};
  for (std::int64_t b = 0; b < p.batch; ++b)
    for (std::int64_t g = 0; g < p.kv_heads; ++g)
      for (std::int64_t r = 0; r < group; ++r) {
        const std::int64_t h = g + r * p.kv_heads;
        auto key_tile = [&](ops::HeadsView<const T> keys, ops::HeadsView<const T> values, ops::HeadsView<T> dkeys,
                            ops::HeadsView<T> dvalues, std::int64_t j0, int cols, bool regular) {
          const std::int64_t i_first = regular ? first_query(p, j0) / tiles.q * tiles.q : 0;
          for (std::int64_t i0 = i_first; i0 < p.q_len; i0 += tiles.q) {
            const int rows = int(std::min<std::int64_t>(tiles.q, p.q_len - i0));
            const TileKind kind = regular ? classify(p, b, i0, rows, j0, cols) : TileKind::visible;
            if (kind == TileKind::masked) continue;
            for (int rr = 0; rr < rows; ++rr)
              for (int c = 0; c < cols; ++c)
                P[std::size_t(rr * tiles.k + c)] =
                    detail::dot(row_of(q, b, i0 + rr, h, dh), row_of(keys, b, j0 + c, g, dh), dh, p.scale);
            if (regular) modify_tile(p, kind, b, h, i0, j0, rows, cols, P.data(), tiles.k);
            for (int rr = 0; rr < rows; ++rr) {
              const std::int64_t i = i0 + rr;
              const T row_lse = lse[(b * p.heads + h) * p.q_len + i];
              const T row_delta = delta[std::size_t((b * p.heads + h) * p.q_len + i)];
              const T* go = row_of(dout, b, i, h, dh);
              const T* qi = row_of(q, b, i, h, dh);
              T* dqi = row_of(dq, b, i, h, dh);
              for (int c = 0; c < cols; ++c) {
                const std::int64_t j = j0 + c;
                const T pc = probability_from_lse(P[std::size_t(rr * tiles.k + c)], row_lse);
                if (pc == T(0)) continue;  // masked, or a row without visible keys: nothing flows
                const T keep = dropout_factor(p, b, h, i, (regular ? p.mem_len : 0) + j);
                const T* vj = row_of(values, b, j, g, dh);
                const T* kj = row_of(keys, b, j, g, dh);
                T* dvj = dvalues.data ? row_of(dvalues, b, j, g, dh) : nullptr;
                T* dkj = dkeys.data ? row_of(dkeys, b, j, g, dh) : nullptr;
                T dot_v = T(0);
                for (std::int64_t d = 0; d < dh; ++d) {
                  dot_v += go[d] * vj[d];
                  if (dvj) dvj[d] += pc * keep * go[d];
                }
                const T ds = score_gradient(pc, keep * dot_v, row_delta);
                for (std::int64_t d = 0; d < dh; ++d) {
                  dqi[d] += p.scale * ds * kj[d];
                  if (dkj) dkj[d] += p.scale * ds * qi[d];
                }
                if (regular && p.bias && extra.bias) extra.bias[h * p.bias_stride + p.bias_zero + j - i - p.q_offset] += ds;
              }
            }
          }
        };
        for (std::int64_t j0 = 0; j0 < p.mem_len; j0 += tiles.k)
          key_tile(detail::memory_keys(p), detail::memory_values(p), dmem_k, dmem_v, j0,
                   int(std::min<std::int64_t>(tiles.k, p.mem_len - j0)), false);
        for (std::int64_t j0 = 0; j0 < p.k_len; j0 += tiles.k)
          key_tile(k, v, dk, dv, j0, int(std::min<std::int64_t>(tiles.k, p.k_len - j0)), true);
      }
}

}  // namespace xtr::cuda::tiles
