#pragma once
// Blocked, memory-efficient attention on the CPU (the FlashAttention-2 schedule): at most one BQ × BK tile of the
// scores exists per thread; softmax is computed online.
//   forward, per (batch b, head h), query tile Qᵢ, key tiles Kⱼ, Vⱼ:
//     S = scale · Qᵢ Kⱼᵀ (masked: −∞);  m' = max(m, rowmax S);  P = exp(S − m');  l = l·e^{m−m'} + rowsum P
//     acc = acc·e^{m−m'} + drop(P) Vⱼ;   finally O = acc / l,  lse = m + log l   (l = 0: O = 0, lse = +∞)
//   backward, per (batch b, kv head g), for each head h of the group, key tile j, query tile i:
//     P = exp(S − lse);  dV += drop(P)ᵀ dO;  dP = drop'(dO Vᵀ);  dS = P ⊙ (dP − Δ),  Δ = rowsum(dO ⊙ O)
//     dQ += scale · dS K;  dK += scale · dSᵀ Q
// Query head h reads kv head h mod kv_heads (x-transformers' grouped-query layout). Dropout keeps entry (b,h,i,j)
// when uniform(((b·H + h)·Tq + i)·Tk + j) ≥ p, recomputed identically in the backward from the counter-based RNG.
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "xtr/backend/cpu/parallel.hpp"
#include "xtr/backend/cpu/simd.hpp"
#include "xtr/backend/ops.hpp"
#include "xtr/core/arena.hpp"
#include "xtr/core/rng.hpp"

namespace xtr::cpu {

template <class T>
using AttentionProblem = ops::AttentionProblem<T>;
template <class T>
using HeadsView = ops::HeadsView<T>;
template <class T>
using AttentionExtraGradients = ops::AttentionExtraGradients<T>;

namespace detail {
inline constexpr Index tile_q = 64, tile_k = 64;

template <class T>
bool tile_needs_mask(const AttentionProblem<T>& p, Index i0, Index j1) {
  return p.key_mask != nullptr || (p.causal && j1 - 1 > i0 + p.q_offset);
}

/// Applies causal and key-padding masks to S (rows i0.., cols j0.. of the regular keys) by writing −∞.
template <class T, class S>
void mask_tile(const AttentionProblem<T>& p, Index b, Index i0, Index j0, S& s) {
  const T neg_inf = -std::numeric_limits<T>::infinity();
  for (Index r = 0; r < s.rows(); ++r)
    for (Index c = 0; c < s.cols(); ++c) {
      const Index j = j0 + c;
      if ((p.causal && j > i0 + r + p.q_offset) || (p.key_mask && !p.key_mask[b * p.key_mask_stride + j]))
        s(r, c) = neg_inf;
    }
}

/// S += the relative score bias of head h (regular keys j0.., queries i0..).
template <class T, class S>
void bias_tile(const AttentionProblem<T>& p, Index h, Index i0, Index j0, S& s) {
  const T* row0 = p.bias + h * p.bias_stride + p.bias_zero + j0 - i0 - p.q_offset;
  for (Index r = 0; r < s.rows(); ++r)
    for (Index c = 0; c < s.cols(); ++c) s(r, c) += row0[c - r];
}

/// d bias of head h += dS (the same indices as bias_tile).
template <class T, class S>
void bias_tile_backward(const AttentionProblem<T>& p, T* dbias, Index i0, Index j0, const S& ds) {
  T* row0 = dbias + p.bias_zero + j0 - i0 - p.q_offset;
  for (Index r = 0; r < ds.rows(); ++r)
    for (Index c = 0; c < ds.cols(); ++c) row0[c - r] += ds(r, c);
}

/// Dropout keeps (b, h, i, key) when uniform(((b·H + h)·Tq + i)·(M + Tk) + key) ≥ p; key counts the memory keys first.
template <class T, class S>
void drop_tile(const AttentionProblem<T>& p, Index b, Index h, Index i0, Index key0, S& s) {
  const T keep_scale = T(1.0 / (1.0 - p.dropout));
  const float threshold = float(p.dropout);
  const Index width = p.mem_len + p.k_len;
  for (Index r = 0; r < s.rows(); ++r) {
    const std::uint64_t base = ((std::uint64_t(b) * p.heads + h) * p.q_len + (i0 + r)) * width + key0;
    for (Index c = 0; c < s.cols(); ++c) s(r, c) *= p.dropout_stream.uniform(base + c) >= threshold ? keep_scale : T(0);
  }
}

/// Last key (exclusive) that queries [i0, i1) may see.
template <class T>
Index key_end(const AttentionProblem<T>& p, Index i1) {
  return p.causal ? std::min(p.k_len, i1 + p.q_offset) : p.k_len;
}

template <class T>
bool query_masked(const AttentionProblem<T>& p, Index b, Index i) {
  return p.query_mask != nullptr && !p.query_mask[b * p.query_mask_stride + i];
}
}  // namespace detail

/// The instruction set of a single query's fused loops (simd.hpp): the widest the build has.
#if defined(XTR_SIMD_AVX512)
using FusedIsa = simd::Avx512;
#elif defined(XTR_SIMD_AVX2)
using FusedIsa = simd::Avx2;
#endif

/// O and lse (batch, heads, q_len; may be null) from Q, K, V (and the memory keys and values, the score bias). The
/// keys and values are of T or, from the f16 KV cache, halves (E = Half): a single query's fused loops convert them in
/// registers, every other path widens them a tile at a time.
template <class T, class E = T>
void attention_forward(const AttentionProblem<T>& p, HeadsView<const T> q, HeadsView<const E> k,
                       HeadsView<const E> v, HeadsView<T> o, T* lse, Arena& arena) {
  using detail::tile_k;
  using detail::tile_q;
  using Tile = Eigen::Map<RowMatrix<T>>;
  constexpr bool halves = std::is_same_v<E, Half>;
  static_assert(std::is_same_v<E, T> || halves, "attention keys and values are of the scalar type or halves");
#if defined(XTR_SIMD_AVX512) || defined(XTR_SIMD_AVX2)
  constexpr bool simd_path = std::is_same_v<T, float>;
#else
  constexpr bool simd_path = false;
#endif
  const Index dh = p.dim_head;
  const Index widened = halves ? 2 * tile_k * dh : 0;  // a tile of keys and one of values, widened from halves
  const Index scratch = 2 * tile_q * tile_k + tile_q * dh + 2 * tile_q + widened;
  T* per_thread = arena.allocate<T>(Index(max_threads()) * scratch);
  const T neg_inf = -std::numeric_limits<T>::infinity();
  const HeadsView<const T> mem_k{p.mem_k, 0, p.memory_ld()}, mem_v{p.mem_v, 0, p.memory_ld()};
  // a single query's two products as fused loops (float, whole vectors per head, keys of floats or halves); each
  // returns whether it ran (otherwise Eigen's products do the work)
#if defined(XTR_SIMD_AVX512) || defined(XTR_SIMD_AVX2)
  const bool fused_single_query = simd_path && dh % FusedIsa::width == 0;
#else
  const bool fused_single_query = false;
#endif
  auto fused_scores = [&](bool single, const T* q_row, const auto* keys, Index ld, Index n, T* out) {
#if defined(XTR_SIMD_AVX512) || defined(XTR_SIMD_AVX2)
    if constexpr (simd_path) {
      if (single) simd::scaled_dots<FusedIsa>(q_row, keys, ld, n, dh, p.scale, out);
    }
#endif
    return simd_path && single;
  };
  auto fused_values = [&](bool single, const T* probs, const auto* values, Index ld, Index n, T* out) {
#if defined(XTR_SIMD_AVX512) || defined(XTR_SIMD_AVX2)
    if constexpr (simd_path) {
      if (single) simd::weighted_rows<FusedIsa>(probs, values, ld, n, dh, out);
    }
#endif
    return simd_path && single;
  };

  parallel_tasks(p.batch * p.heads, 4 * p.q_len * (p.k_len + p.mem_len) * dh, [&](Index task, int thread) {
    const Index b = task / p.heads, h = task % p.heads, g = h % p.kv_heads;
    T* mem = per_thread + Index(thread) * scratch;
    T* wide = mem + 2 * tile_q * tile_k + tile_q * dh + 2 * tile_q;  // the widened tiles (halves only)
    for (Index i0 = 0; i0 < p.q_len; i0 += tile_q) {
      const Index bq = std::min(tile_q, p.q_len - i0);
      // and, in float with whole vectors per head, its scores and weighted values are fused loops (backend/cpu/simd.hpp)
      // rather than two matrix-vector products
      const bool single_query = bq == 1 && fused_single_query;
      // a single query (a decoding step) takes its keys 8,192 at a time: the score buffer of a whole tile holds them,
      // and two products per head replace two per 64 keys (halves outside the fused loops: a widened tile at a time)
      const Index bk_max = bq == 1 && (single_query || !halves) ? 2 * tile_q * tile_k : tile_k;
      ConstStridedView<T> Q(q.at(b, i0, h, dh), bq, dh, Eigen::OuterStride<>(q.row_stride));
      Tile acc(mem + 2 * tile_q * tile_k, bq, dh);
      T* m = mem + 2 * tile_q * tile_k + tile_q * dh;
      T* l = m + tile_q;
      acc.setZero();
      std::fill_n(m, bq, neg_inf);
      std::fill_n(l, bq, T(0));
      // one key tile: the memory keys first (key0 < mem_len, no mask, no bias), then the regular ones
      auto visit = [&](auto keys, auto values, Index j0, Index bk, bool regular) {
        using X = std::remove_const_t<std::remove_pointer_t<decltype(keys.data)>>;
        const X* kx = keys.at(b, j0, g, dh);
        const X* vx = values.at(b, j0, g, dh);
        // the rows as T for Eigen's products: the operands, or halves widened into this thread's scratch
        const T* kt = nullptr;
        const T* vt = nullptr;
        Index kld = keys.row_stride, vld = values.row_stride;
        if constexpr (std::is_same_v<X, T>) {
          kt = kx, vt = vx;
        } else if (!single_query) {
          for (Index r = 0; r < bk; ++r) {
            simd::widen(kx + r * kld, dh, wide + r * dh);
            simd::widen(vx + r * vld, dh, wide + (tile_k + r) * dh);
          }
          kt = wide, vt = wide + tile_k * dh, kld = vld = dh;
        }
        Tile S(mem, bq, bk);
        if (!fused_scores(single_query, Q.data(), kx, keys.row_stride, bk, S.data()))
          S.noalias() = p.scale * (Q * ConstStridedView<T>(kt, bk, dh, Eigen::OuterStride<>(kld)).transpose());
        if (regular && p.bias) detail::bias_tile(p, h, i0, j0, S);
        if (regular && detail::tile_needs_mask(p, i0, j0 + bk)) detail::mask_tile(p, b, i0, j0, S);
        for (Index r = 0; r < bq; ++r) {
          const T m_new = std::max(m[r], S.row(r).maxCoeff());
          if (m_new == neg_inf) {  // every key so far is masked for this query
            S.row(r).setZero();
            continue;
          }
          const T alpha = std::exp(m[r] - m_new);
          S.row(r) = (S.row(r).array() - m_new).exp().matrix();
          l[r] = l[r] * alpha + S.row(r).sum();
          acc.row(r) *= alpha;
          m[r] = m_new;
        }
        if (p.dropout > 0) detail::drop_tile(p, b, h, i0, regular ? p.mem_len + j0 : j0, S);
        if (!fused_values(single_query, S.data(), vx, values.row_stride, bk, acc.data()))
          acc.noalias() += S * ConstStridedView<T>(vt, bk, dh, Eigen::OuterStride<>(vld));
      };
      for (Index j0 = 0; j0 < p.mem_len; j0 += bk_max) visit(mem_k, mem_v, j0, std::min(bk_max, p.mem_len - j0), false);
      const Index j_end = detail::key_end(p, i0 + bq);
      for (Index j0 = 0; j0 < j_end; j0 += bk_max) visit(k, v, j0, std::min(bk_max, j_end - j0), true);
      for (Index r = 0; r < bq; ++r) {
        Eigen::Map<Eigen::Matrix<T, 1, Eigen::Dynamic>> out(o.at(b, i0 + r, h, dh), dh);
        T* row_lse = lse ? lse + (b * p.heads + h) * p.q_len + i0 + r : nullptr;
        if (l[r] > T(0) && !detail::query_masked(p, b, i0 + r)) {
          out = acc.row(r) / l[r];
          if (row_lse) *row_lse = m[r] + std::log(l[r]);
        } else {  // no visible key, or a padded query: O = 0, and lse = +∞ makes every P of the backward 0
          out.setZero();
          if (row_lse) *row_lse = std::numeric_limits<T>::infinity();
        }
      }
    }
  });
}

/// dQ, dK, dV (zeroed by the caller) from dO, with O and lse from the forward; with memory keys or a score bias,
/// their gradients add into `extra`.
template <class T>
void attention_backward(const AttentionProblem<T>& p, HeadsView<const T> q, HeadsView<const T> k,
                        HeadsView<const T> v, HeadsView<const T> o, const T* lse, HeadsView<const T> dout,
                        HeadsView<T> dq, HeadsView<T> dk, HeadsView<T> dv, Arena& arena,
                        AttentionExtraGradients<T> extra = {}) {
  using detail::tile_k;
  using detail::tile_q;
  using Tile = Eigen::Map<RowMatrix<T>>;
  const Index dh = p.dim_head;
  // Δ (batch, heads, q_len) = rowsum(dO ⊙ O)
  T* delta = arena.allocate<T>(p.batch * p.heads * p.q_len);
  parallel_tasks(p.batch * p.heads, 2 * p.q_len * dh, [&](Index task, int) {
    const Index b = task / p.heads, h = task % p.heads;
    for (Index i = 0; i < p.q_len; ++i) {
      const T* a = dout.at(b, i, h, dh);
      const T* c = o.at(b, i, h, dh);
      T s = 0;
      for (Index d = 0; d < dh; ++d) s += a[d] * c[d];
      delta[(b * p.heads + h) * p.q_len + i] = s;
    }
  });
  const Index scratch = 3 * tile_q * tile_k;
  const int threads = max_threads();
  T* per_thread = arena.allocate<T>(Index(threads) * scratch);
  const Index group = p.heads / p.kv_heads;
  // what several tasks add to (shared by the batch): per-thread partial sums, reduced at the end
  const Index mem_size = p.mem_len * p.memory_ld(), bias_size = p.bias ? p.heads * p.bias_stride : 0;
  const Index shared = 2 * mem_size + bias_size;
  T* partial = shared > 0 ? arena.allocate<T>(Index(threads) * shared) : nullptr;
  if (partial) std::fill_n(partial, Index(threads) * shared, T(0));
  const HeadsView<const T> mem_k{p.mem_k, 0, p.memory_ld()}, mem_v{p.mem_v, 0, p.memory_ld()};

  parallel_tasks(p.batch * p.kv_heads, 10 * group * p.q_len * (p.k_len + p.mem_len) * dh, [&](Index task, int thread) {
    const Index b = task / p.kv_heads, g = task % p.kv_heads;
    T* mem = per_thread + Index(thread) * scratch;
    T* mine = partial ? partial + Index(thread) * shared : nullptr;
    const HeadsView<T> dmem_k{mine, 0, p.memory_ld()}, dmem_v{mine ? mine + mem_size : nullptr, 0, p.memory_ld()};
    for (Index r = 0; r < group; ++r) {
      const Index h = g + r * p.kv_heads;
      T* dbias = p.bias && extra.bias ? mine + 2 * mem_size + h * p.bias_stride : nullptr;
      auto visit = [&](HeadsView<const T> keys, HeadsView<const T> values, HeadsView<T> dkeys, HeadsView<T> dvalues,
                       Index j0, Index bk, bool regular) {
        ConstStridedView<T> K(keys.at(b, j0, g, dh), bk, dh, Eigen::OuterStride<>(keys.row_stride));
        ConstStridedView<T> V(values.at(b, j0, g, dh), bk, dh, Eigen::OuterStride<>(values.row_stride));
        StridedView<T> dK(dkeys.at(b, j0, g, dh), bk, dh, Eigen::OuterStride<>(dkeys.row_stride));
        StridedView<T> dV(dvalues.at(b, j0, g, dh), bk, dh, Eigen::OuterStride<>(dvalues.row_stride));
        // first query tile that can see key j0: i + q_offset ≥ j0
        const Index i_first = regular && p.causal ? std::max<Index>(0, j0 - p.q_offset) / tile_q * tile_q : 0;
        for (Index i0 = i_first; i0 < p.q_len; i0 += tile_q) {
          const Index bq = std::min(tile_q, p.q_len - i0);
          ConstStridedView<T> Q(q.at(b, i0, h, dh), bq, dh, Eigen::OuterStride<>(q.row_stride));
          ConstStridedView<T> dO(dout.at(b, i0, h, dh), bq, dh, Eigen::OuterStride<>(dout.row_stride));
          StridedView<T> dQ(dq.at(b, i0, h, dh), bq, dh, Eigen::OuterStride<>(dq.row_stride));
          Tile P(mem, bq, bk), dP(mem + tile_q * tile_k, bq, bk), Pd(mem + 2 * tile_q * tile_k, bq, bk);
          P.noalias() = p.scale * (Q * K.transpose());
          if (regular && p.bias) detail::bias_tile(p, h, i0, j0, P);
          if (regular && detail::tile_needs_mask(p, i0, j0 + bk)) detail::mask_tile(p, b, i0, j0, P);
          const T* row_lse = lse + (b * p.heads + h) * p.q_len + i0;
          const T* row_delta = delta + (b * p.heads + h) * p.q_len + i0;
          for (Index rr = 0; rr < bq; ++rr) {
            if (std::isinf(row_lse[rr])) {  // nothing visible, or a padded query: no probability, no gradient
              P.row(rr).setZero();           // (Eigen's vectorised exp(−∞) is a denormal on AVX2, not 0)
            } else {
              P.row(rr) = (P.row(rr).array() - row_lse[rr]).exp().matrix();
            }
          }
          dP.noalias() = dO * V.transpose();
          const Index key0 = regular ? p.mem_len + j0 : j0;
          if (p.dropout > 0) {
            Pd = P;
            detail::drop_tile(p, b, h, i0, key0, Pd);
            detail::drop_tile(p, b, h, i0, key0, dP);
            dV.noalias() += Pd.transpose() * dO;
          } else {
            dV.noalias() += P.transpose() * dO;
          }
          for (Index rr = 0; rr < bq; ++rr)
            P.row(rr) = (P.row(rr).array() * (dP.row(rr).array() - row_delta[rr])).matrix();  // P := dS
          if (regular && dbias) detail::bias_tile_backward(p, dbias, i0, j0, P);
          dQ.noalias() += p.scale * (P * K);
          dK.noalias() += p.scale * (P.transpose() * Q);
        }
      };
      for (Index j0 = 0; j0 < p.mem_len; j0 += tile_k)
        visit(mem_k, mem_v, dmem_k, dmem_v, j0, std::min(tile_k, p.mem_len - j0), false);
      for (Index j0 = 0; j0 < p.k_len; j0 += tile_k) visit(k, v, dk, dv, j0, std::min(tile_k, p.k_len - j0), true);
    }
  });
  if (partial) {
    for (int t = 0; t < threads; ++t) {
      const T* sum = partial + Index(t) * shared;
      // the memory's rows: only the kv_heads · dim_head entries of each (memory_ld apart) are gradients
      for (Index m = 0; m < p.mem_len; ++m)
        for (Index c = 0; c < p.kv_heads * dh; ++c) {
          if (extra.mem_k) extra.mem_k[m * p.memory_ld() + c] += sum[m * p.memory_ld() + c];
          if (extra.mem_v) extra.mem_v[m * p.memory_ld() + c] += sum[mem_size + m * p.memory_ld() + c];
        }
      if (extra.bias)
        for (Index i = 0; i < bias_size; ++i) extra.bias[i] += sum[2 * mem_size + i];
    }
  }
}

}  // namespace xtr::cpu
