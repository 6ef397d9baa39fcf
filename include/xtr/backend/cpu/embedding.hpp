#pragma once
// Embedding lookups on the CPU.
//   forward:  x[n] = E[tok[n]] (+ s · P[pos[n]])          x (N, D), E (V, D), P (max_seq_len, D)
//   backward: dE[tok[n]] += dx[n];  dP[pos[n]] += s · dx[n]
// The scatter-add runs in parallel over column blocks, so no two threads touch the same entry.
#include <cstdint>

#include "xtr/backend/cpu/parallel.hpp"

namespace xtr::cpu {

/// Rows of `table` gathered by `ids` (position of row n is n mod T, plus `offset`); optional scaled position table.
template <class T>
void embedding_forward(const std::int32_t* ids, Index N, Index T_len, Index offset, MatrixView<T> table,
                       const T* positions, T position_scale, MatrixView<T> x) {
  const Index D = x.cols();
  parallel_rows(N, D, [&](Index begin, Index end) {
    for (Index n = begin; n < end; ++n) {
      const T* e = table.data() + Index(ids[n]) * D;
      T* out = x.data() + n * D;
      if (positions) {
        const T* p = positions + (n % T_len + offset) * D;
        for (Index d = 0; d < D; ++d) out[d] = e[d] + position_scale * p[d];
      } else {
        for (Index d = 0; d < D; ++d) out[d] = e[d];
      }
    }
  });
}

template <class T>
void embedding_backward(const std::int32_t* ids, Index N, Index T_len, MatrixView<T> dx, T* dtable,
                        T* dpositions, T position_scale) {
  const Index D = dx.cols();
  constexpr Index block = 64;
  parallel_rows((D + block - 1) / block, N * block, [&](Index begin, Index end) {
    const Index d0 = begin * block, d1 = std::min(D, end * block);
    for (Index n = 0; n < N; ++n) {
      const T* g = dx.data() + n * D;
      T* e = dtable + Index(ids[n]) * D;
      for (Index d = d0; d < d1; ++d) e[d] += g[d];
      if (dpositions) {
        T* p = dpositions + (n % T_len) * D;
        for (Index d = d0; d < d1; ++d) p[d] += position_scale * g[d];
      }
    }
  });
}

}  // namespace xtr::cpu
