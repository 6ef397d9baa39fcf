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

#include "xtr/backend/cpu/parallel.hpp"
#include "xtr/core/arena.hpp"
#include "xtr/core/rng.hpp"

namespace xtr::cpu {

/// Sizes and mask rules of one attention call.
template <class T>
struct AttentionProblem {
  Index batch = 0, heads = 0, kv_heads = 0, dim_head = 0;
  Index q_len = 0, k_len = 0;
  Index q_offset = 0;  // key position of query 0: causal lets query i see keys j ≤ i + q_offset
  bool causal = false;
  T scale = 1;
  const std::uint8_t* key_mask = nullptr;  // (batch, key_mask_stride), 1 = attend; nullptr = every key
  Index key_mask_stride = 0;
  double dropout = 0;
  RandomStream dropout_stream{};
};

/// Row-strided storage of one (batch, length, heads·dim_head) operand: element (b, t, head, d) is at
/// data[b·batch_stride + t·row_stride + head·dim_head + d].
template <class T>
struct HeadsView {
  T* data = nullptr;
  Index batch_stride = 0, row_stride = 0;
  [[nodiscard]] T* at(Index b, Index t, Index head, Index dim_head) const {
    return data + b * batch_stride + t * row_stride + head * dim_head;
  }
};

namespace detail {
inline constexpr Index tile_q = 64, tile_k = 64;

template <class T>
bool tile_needs_mask(const AttentionProblem<T>& p, Index i0, Index j1) {
  return p.key_mask != nullptr || (p.causal && j1 - 1 > i0 + p.q_offset);
}

/// Applies causal and key-padding masks to S (rows i0.., cols j0..) by writing −∞.
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

template <class T, class S>
void drop_tile(const AttentionProblem<T>& p, Index b, Index h, Index i0, Index j0, S& s) {
  const T keep_scale = T(1.0 / (1.0 - p.dropout));
  const float threshold = float(p.dropout);
  for (Index r = 0; r < s.rows(); ++r) {
    const std::uint64_t base = ((std::uint64_t(b) * p.heads + h) * p.q_len + (i0 + r)) * p.k_len + j0;
    for (Index c = 0; c < s.cols(); ++c) s(r, c) *= p.dropout_stream.uniform(base + c) >= threshold ? keep_scale : T(0);
  }
}

/// Last key (exclusive) that queries [i0, i1) may see.
template <class T>
Index key_end(const AttentionProblem<T>& p, Index i1) {
  return p.causal ? std::min(p.k_len, i1 + p.q_offset) : p.k_len;
}
}  // namespace detail

/// O and lse (batch, heads, q_len; may be null) from Q, K, V.
template <class T>
void attention_forward(const AttentionProblem<T>& p, HeadsView<const T> q, HeadsView<const T> k,
                       HeadsView<const T> v, HeadsView<T> o, T* lse, Arena& arena) {
  using detail::tile_k;
  using detail::tile_q;
  using Tile = Eigen::Map<RowMatrix<T>>;
  const Index dh = p.dim_head;
  const Index scratch = 2 * tile_q * tile_k + tile_q * dh + 2 * tile_q;
  T* per_thread = arena.allocate<T>(Index(max_threads()) * scratch);
  const T neg_inf = -std::numeric_limits<T>::infinity();

  parallel_tasks(p.batch * p.heads, 4 * p.q_len * p.k_len * dh, [&](Index task, int thread) {
    const Index b = task / p.heads, h = task % p.heads, g = h % p.kv_heads;
    T* mem = per_thread + Index(thread) * scratch;
    for (Index i0 = 0; i0 < p.q_len; i0 += tile_q) {
      const Index bq = std::min(tile_q, p.q_len - i0);
      ConstStridedView<T> Q(q.at(b, i0, h, dh), bq, dh, Eigen::OuterStride<>(q.row_stride));
      Tile acc(mem + 2 * tile_q * tile_k, bq, dh);
      T* m = mem + 2 * tile_q * tile_k + tile_q * dh;
      T* l = m + tile_q;
      acc.setZero();
      std::fill_n(m, bq, neg_inf);
      std::fill_n(l, bq, T(0));
      const Index j_end = detail::key_end(p, i0 + bq);
      for (Index j0 = 0; j0 < j_end; j0 += tile_k) {
        const Index bk = std::min(tile_k, j_end - j0);
        ConstStridedView<T> K(k.at(b, j0, g, dh), bk, dh, Eigen::OuterStride<>(k.row_stride));
        ConstStridedView<T> V(v.at(b, j0, g, dh), bk, dh, Eigen::OuterStride<>(v.row_stride));
        Tile S(mem, bq, bk);
        S.noalias() = p.scale * (Q * K.transpose());
        if (detail::tile_needs_mask(p, i0, j0 + bk)) detail::mask_tile(p, b, i0, j0, S);
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
        if (p.dropout > 0) detail::drop_tile(p, b, h, i0, j0, S);
        acc.noalias() += S * V;
      }
      for (Index r = 0; r < bq; ++r) {
        Eigen::Map<Eigen::Matrix<T, 1, Eigen::Dynamic>> out(o.at(b, i0 + r, h, dh), dh);
        if (l[r] > T(0)) {
          out = acc.row(r) / l[r];
          if (lse) lse[(b * p.heads + h) * p.q_len + i0 + r] = m[r] + std::log(l[r]);
        } else {
          out.setZero();
          if (lse) lse[(b * p.heads + h) * p.q_len + i0 + r] = std::numeric_limits<T>::infinity();
        }
      }
    }
  });
}

/// dQ, dK, dV (zeroed by the caller) from dO, with O and lse from the forward.
template <class T>
void attention_backward(const AttentionProblem<T>& p, HeadsView<const T> q, HeadsView<const T> k,
                        HeadsView<const T> v, HeadsView<const T> o, const T* lse, HeadsView<const T> dout,
                        HeadsView<T> dq, HeadsView<T> dk, HeadsView<T> dv, Arena& arena) {
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
  T* per_thread = arena.allocate<T>(Index(max_threads()) * scratch);
  const Index group = p.heads / p.kv_heads;

  parallel_tasks(p.batch * p.kv_heads, 10 * group * p.q_len * p.k_len * dh, [&](Index task, int thread) {
    const Index b = task / p.kv_heads, g = task % p.kv_heads;
    T* mem = per_thread + Index(thread) * scratch;
    for (Index r = 0; r < group; ++r) {
      const Index h = g + r * p.kv_heads;
      for (Index j0 = 0; j0 < p.k_len; j0 += tile_k) {
        const Index bk = std::min(tile_k, p.k_len - j0);
        ConstStridedView<T> K(k.at(b, j0, g, dh), bk, dh, Eigen::OuterStride<>(k.row_stride));
        ConstStridedView<T> V(v.at(b, j0, g, dh), bk, dh, Eigen::OuterStride<>(v.row_stride));
        StridedView<T> dK(dk.at(b, j0, g, dh), bk, dh, Eigen::OuterStride<>(dk.row_stride));
        StridedView<T> dV(dv.at(b, j0, g, dh), bk, dh, Eigen::OuterStride<>(dv.row_stride));
        // first query tile that can see key j0: i + q_offset ≥ j0
        const Index i_first = p.causal ? std::max<Index>(0, j0 - p.q_offset) / tile_q * tile_q : 0;
        for (Index i0 = i_first; i0 < p.q_len; i0 += tile_q) {
          const Index bq = std::min(tile_q, p.q_len - i0);
          ConstStridedView<T> Q(q.at(b, i0, h, dh), bq, dh, Eigen::OuterStride<>(q.row_stride));
          ConstStridedView<T> dO(dout.at(b, i0, h, dh), bq, dh, Eigen::OuterStride<>(dout.row_stride));
          StridedView<T> dQ(dq.at(b, i0, h, dh), bq, dh, Eigen::OuterStride<>(dq.row_stride));
          Tile P(mem, bq, bk), dP(mem + tile_q * tile_k, bq, bk), Pd(mem + 2 * tile_q * tile_k, bq, bk);
          P.noalias() = p.scale * (Q * K.transpose());
          if (detail::tile_needs_mask(p, i0, j0 + bk)) detail::mask_tile(p, b, i0, j0, P);
          const T* row_lse = lse + (b * p.heads + h) * p.q_len + i0;
          const T* row_delta = delta + (b * p.heads + h) * p.q_len + i0;
          for (Index rr = 0; rr < bq; ++rr) P.row(rr) = (P.row(rr).array() - row_lse[rr]).exp().matrix();
          dP.noalias() = dO * V.transpose();
          if (p.dropout > 0) {
            Pd = P;
            detail::drop_tile(p, b, h, i0, j0, Pd);
            detail::drop_tile(p, b, h, i0, j0, dP);
            dV.noalias() += Pd.transpose() * dO;
          } else {
            dV.noalias() += P.transpose() * dO;
          }
          for (Index rr = 0; rr < bq; ++rr)
            P.row(rr) = (P.row(rr).array() * (dP.row(rr).array() - row_delta[rr])).matrix();  // P := dS
          dQ.noalias() += p.scale * (P * K);
          dK.noalias() += p.scale * (P.transpose() * Q);
        }
      }
    }
  });
}

}  // namespace xtr::cpu
