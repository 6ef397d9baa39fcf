#pragma once
// AVX-512 building blocks shared by the CPU kernels: sums of vectors' lanes, and the two halves of a single query's
// attention over rows of keys and values (scores against the keys, the probability-weighted sum of the values).
// Compiled where the build targets AVX-512 (XTR_SIMD_AVX512); callers keep a portable path beside them.
#include <algorithm>

#include "xtr/core/tensor.hpp"

#if defined(__AVX512F__)
#include <immintrin.h>
#define XTR_SIMD_AVX512 1

namespace xtr::cpu::simd {

/// The sums of the lanes of a, b, c and d, as the first four lanes (adding halves of the four vectors together:
/// 13 instructions instead of four reductions' 32, and a shorter dependency chain).
inline __m128 four_sums(__m512 a, __m512 b, __m512 c, __m512 d) {
  const __m512 ab = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                                  _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 2, 3, 2)));  // a's 8 lanes, b's 8
  const __m512 cd = _mm512_add_ps(_mm512_shuffle_f32x4(c, d, _MM_SHUFFLE(1, 0, 1, 0)),
                                  _mm512_shuffle_f32x4(c, d, _MM_SHUFFLE(3, 2, 3, 2)));
  __m512 v = _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, _MM_SHUFFLE(2, 0, 2, 0)),
                           _mm512_shuffle_f32x4(ab, cd, _MM_SHUFFLE(3, 1, 3, 1)));  // 4 lanes each of a, b, c, d
  v = _mm512_add_ps(v, _mm512_permute_ps(v, _MM_SHUFFLE(1, 0, 3, 2)));
  v = _mm512_add_ps(v, _mm512_permute_ps(v, _MM_SHUFFLE(2, 3, 0, 1)));  // lane 4k: the sum of the k-th vector
  return _mm512_castps512_ps128(
      _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), v));
}

/// out[j] = scale · ⟨q, k_j⟩ for n rows k_j = k + j·ld of d values (d a multiple of 16): four rows at a time, each
/// vector of q loaded once for the four.
inline void scaled_dots(const float* q, const float* k, Index ld, Index n, Index d, float scale, float* out) {
  const __m128 s4 = _mm_set1_ps(scale);
  Index j = 0;
  for (; j + 4 <= n; j += 4) {
    const float* r = k + j * ld;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (Index c = 0; c < d; c += 16) {
      const __m512 qv = _mm512_loadu_ps(q + c);
      a0 = _mm512_fmadd_ps(_mm512_loadu_ps(r + c), qv, a0);
      a1 = _mm512_fmadd_ps(_mm512_loadu_ps(r + ld + c), qv, a1);
      a2 = _mm512_fmadd_ps(_mm512_loadu_ps(r + 2 * ld + c), qv, a2);
      a3 = _mm512_fmadd_ps(_mm512_loadu_ps(r + 3 * ld + c), qv, a3);
    }
    _mm_storeu_ps(out + j, _mm_mul_ps(four_sums(a0, a1, a2, a3), s4));
  }
  for (; j < n; ++j) {
    __m512 a = _mm512_setzero_ps();
    for (Index c = 0; c < d; c += 16) a = _mm512_fmadd_ps(_mm512_loadu_ps(k + j * ld + c), _mm512_loadu_ps(q + c), a);
    out[j] = scale * _mm512_reduce_add_ps(a);
  }
}

/// acc[0, d) += Σ_j p[j] · v_j for n rows v_j = v + j·ld of d values (d a multiple of 16): 64 columns at a time in
/// registers, even and odd rows into separate sums (two FMA chains per column vector).
inline void weighted_rows(const float* p, const float* v, Index ld, Index n, Index d, float* acc) {
  for (Index c0 = 0; c0 < d; c0 += 64) {
    const int w = int(std::min<Index>(64, d - c0) / 16);  // vectors in this block of columns
    __m512 e[4], o[4];
    for (int i = 0; i < 4; ++i) e[i] = o[i] = _mm512_setzero_ps();
    Index j = 0;
    for (; j + 2 <= n; j += 2) {
      const __m512 pe = _mm512_set1_ps(p[j]), po = _mm512_set1_ps(p[j + 1]);
      const float* re = v + j * ld + c0;
      for (int i = 0; i < w; ++i) {
        e[i] = _mm512_fmadd_ps(pe, _mm512_loadu_ps(re + 16 * i), e[i]);
        o[i] = _mm512_fmadd_ps(po, _mm512_loadu_ps(re + ld + 16 * i), o[i]);
      }
    }
    if (j < n) {
      const __m512 pe = _mm512_set1_ps(p[j]);
      for (int i = 0; i < w; ++i) e[i] = _mm512_fmadd_ps(pe, _mm512_loadu_ps(v + j * ld + c0 + 16 * i), e[i]);
    }
    for (int i = 0; i < w; ++i)
      _mm512_storeu_ps(acc + c0 + 16 * i, _mm512_add_ps(_mm512_loadu_ps(acc + c0 + 16 * i), _mm512_add_ps(e[i], o[i])));
  }
}

}  // namespace xtr::cpu::simd
#endif
