#pragma once
// SIMD building blocks shared by the CPU kernels: sums of vectors' lanes, and the two halves of a single query's
// attention over rows of keys and values (scores against the keys, the probability-weighted sum of the values), for
// rows of floats or of halves (the f16 KV cache, converted in registers by F16C). Each is written once over an
// instruction set: Avx512 (16 floats a vector, where the build targets AVX-512: XTR_SIMD_AVX512) and Avx2 (8, AVX2 +
// FMA + F16C: XTR_SIMD_AVX2); an AVX-512 build has both, and the tests run both. Callers keep a portable path beside
// them.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "xtr/core/half.hpp"
#include "xtr/core/tensor.hpp"

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__) && defined(__F16C__))
#include <immintrin.h>
#endif
#if defined(__AVX512F__)
#define XTR_SIMD_AVX512 1
#endif
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define XTR_SIMD_AVX2 1
#endif

namespace xtr::cpu::simd {

#if defined(XTR_SIMD_AVX512)
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

/// 16 floats a vector.
struct Avx512 {
  using V = __m512;
  static constexpr Index width = 16;
  static constexpr const char* name = "avx512";
  static V zero() { return _mm512_setzero_ps(); }
  static V set1(float x) { return _mm512_set1_ps(x); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static V load(const Half* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static float sum(V a) { return _mm512_reduce_add_ps(a); }
  static __m128 four_sums(V a, V b, V c, V d) { return simd::four_sums(a, b, c, d); }
};
#endif

#if defined(XTR_SIMD_AVX2)
/// 8 floats a vector.
struct Avx2 {
  using V = __m256;
  static constexpr Index width = 8;
  static constexpr const char* name = "avx2";
  static V zero() { return _mm256_setzero_ps(); }
  static V set1(float x) { return _mm256_set1_ps(x); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static V load(const Half* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static float sum(V a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
  }
  /// The sums of the lanes of a, b, c and d: pairwise additions within each half, then the two halves added.
  static __m128 four_sums(V a, V b, V c, V d) {
    const __m256 abcd = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));  // per half: a, b, c, d partials
    return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
  }
};
#endif

#if defined(XTR_SIMD_AVX512) || defined(XTR_SIMD_AVX2)
/// out[j] = scale · ⟨q, k_j⟩ for n rows k_j = k + j·ld of d values (d a multiple of Isa::width; rows of floats or
/// halves): four rows at a time, each vector of q loaded once for the four.
template <class Isa, class E>
void scaled_dots(const float* q, const E* k, Index ld, Index n, Index d, float scale, float* out) {
  using V = typename Isa::V;
  constexpr Index w = Isa::width;
  const __m128 s4 = _mm_set1_ps(scale);
  Index j = 0;
  for (; j + 4 <= n; j += 4) {
    const E* r = k + j * ld;
    V a0 = Isa::zero(), a1 = a0, a2 = a0, a3 = a0;
    for (Index c = 0; c < d; c += w) {
      const V qv = Isa::load(q + c);
      a0 = Isa::fmadd(Isa::load(r + c), qv, a0);
      a1 = Isa::fmadd(Isa::load(r + ld + c), qv, a1);
      a2 = Isa::fmadd(Isa::load(r + 2 * ld + c), qv, a2);
      a3 = Isa::fmadd(Isa::load(r + 3 * ld + c), qv, a3);
    }
    _mm_storeu_ps(out + j, _mm_mul_ps(Isa::four_sums(a0, a1, a2, a3), s4));
  }
  for (; j < n; ++j) {
    V a = Isa::zero();
    for (Index c = 0; c < d; c += w) a = Isa::fmadd(Isa::load(k + j * ld + c), Isa::load(q + c), a);
    out[j] = scale * Isa::sum(a);
  }
}

/// acc[0, d) += Σ_j p[j] · v_j for n rows v_j = v + j·ld of d values (d a multiple of Isa::width; floats or halves):
/// four vectors of columns at a time in registers, even and odd rows into separate sums (two FMA chains per vector).
template <class Isa, class E>
void weighted_rows(const float* p, const E* v, Index ld, Index n, Index d, float* acc) {
  using V = typename Isa::V;
  constexpr Index w = Isa::width;
  for (Index c0 = 0; c0 < d; c0 += 4 * w) {
    const int vectors = int(std::min<Index>(4 * w, d - c0) / w);  // in this block of columns
    V e[4], o[4];
    for (int i = 0; i < 4; ++i) e[i] = o[i] = Isa::zero();
    Index j = 0;
    for (; j + 2 <= n; j += 2) {
      const V pe = Isa::set1(p[j]), po = Isa::set1(p[j + 1]);
      const E* re = v + j * ld + c0;
      for (int i = 0; i < vectors; ++i) {
        e[i] = Isa::fmadd(pe, Isa::load(re + w * i), e[i]);
        o[i] = Isa::fmadd(po, Isa::load(re + ld + w * i), o[i]);
      }
    }
    if (j < n) {
      const V pe = Isa::set1(p[j]);
      for (int i = 0; i < vectors; ++i) e[i] = Isa::fmadd(pe, Isa::load(v + j * ld + c0 + w * i), e[i]);
    }
    for (int i = 0; i < vectors; ++i)
      Isa::store(acc + c0 + w * i, Isa::add(Isa::load(acc + c0 + w * i), Isa::add(e[i], o[i])));
  }
}

#endif

/// out[i] = the nearest half to x[i] (ties to even) for i < n (F16C 8 at a time where the build has it). Returns the
/// index of the first value that is not finite or beyond ±kHalfMax (out is then unspecified), or n.
inline Index to_halves(const float* x, Index n, Half* out) {
  Index i = 0;
#if defined(XTR_SIMD_AVX2)
  const __m256 limit = _mm256_set1_ps(detail::kHalfMax), sign = _mm256_set1_ps(-0.0f);
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    // |v| ≤ kHalfMax is false for NaN (ordered comparison) and ±∞
    if (_mm256_movemask_ps(_mm256_cmp_ps(_mm256_andnot_ps(sign, v), limit, _CMP_LE_OQ)) != 0xFF) break;
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
  }
#endif
  for (; i < n; ++i) {
    if (!(std::fabs(x[i]) <= detail::kHalfMax)) return i;
    out[i].bits = detail::float_to_half_bits_nearest(x[i]);
  }
  return n;
}
/// out[i] = x[i] as a float (or double) for i < n (F16C 8 at a time where the build has it).
inline void widen(const Half* x, Index n, float* out) {
  Index i = 0;
#if defined(XTR_SIMD_AVX2)
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, Avx2::load(x + i));
#endif
  for (; i < n; ++i) out[i] = detail::half_bits_to_float(x[i].bits);
}
inline void widen(const Half* x, Index n, double* out) {
  for (Index i = 0; i < n; ++i) out[i] = detail::half_bits_to_float(x[i].bits);
}

/// Doubles through floats (a double model's f16 cache); the same contract.
inline Index to_halves(const double* x, Index n, Half* out) {
  for (Index i = 0; i < n; ++i) {
    if (!(std::fabs(x[i]) <= double(detail::kHalfMax))) return i;
    out[i].bits = detail::float_to_half_bits_nearest(float(x[i]));
  }
  return n;
}

}  // namespace xtr::cpu::simd
