#pragma once
// y (+)= x Wᵀ for a few rows of x (decoding) with W quantised per group (core/weight_format.hpp): int8 or 4-bit values
// and one float scale per group, dequantized in registers inside the dot product — the matrix is read once, in its
// small form, and each group's values serve every row of x. Paths: AVX-512 (16 floats a vector), AVX2 + FMA (8), and
// a scalar reference; the widest one the compiler targets (-march) is used, and tests compare every compiled path with
// the scalar one.
#include <cstdint>
#include <vector>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include "xtr/backend/cpu/parallel.hpp"
#include "xtr/core/error.hpp"
#include "xtr/core/tensor.hpp"

namespace xtr::cpu::quantized {

enum class Isa { scalar, avx2, avx512 };

/// The paths this build has, widest first.
[[nodiscard]] constexpr Isa best_isa() {
#if defined(__AVX512F__) && defined(__AVX512BW__)
  return Isa::avx512;
#elif defined(__AVX2__) && defined(__FMA__)
  return Isa::avx2;
#else
  return Isa::scalar;
#endif
}
[[nodiscard]] constexpr const char* isa_name(Isa isa) {
  return isa == Isa::avx512 ? "avx512" : isa == Isa::avx2 ? "avx2" : "scalar";
}

/// The quantised matrix: (out, in) with `group` values per scale along each row; int8 values (q8, out·in) or
/// packed 4-bit values (q4, out·in/2 bytes: per group, byte k holds values k and k + group/2).
struct QuantizedMatrix {
  const std::int8_t* q8 = nullptr;
  const std::uint8_t* q4 = nullptr;
  const float* scales = nullptr;  // (out, in / group)
  Index out = 0, in = 0, group = 32;
};

namespace detail {

/// Group g of row j, value k: w = scale · q.
inline float value(const QuantizedMatrix& m, Index j, Index k) {
  const float s = m.scales[j * (m.in / m.group) + k / m.group];
  if (m.q8) return s * float(m.q8[j * m.in + k]);
  const Index g = k / m.group, r = k % m.group, half = m.group / 2;
  const std::uint8_t byte = m.q4[(j * m.in + g * m.group) / 2 + r % half];
  return s * float((r < half ? byte & 0xF : byte >> 4) - 8);
}

/// Output rows [begin, end) for all R rows of x (R ≤ 8), scalar.
inline void rows_scalar(const QuantizedMatrix& m, const float* x, Index R, float* y, Index ldy, bool add, Index begin,
                        Index end) {
  const Index G = m.in / m.group;
  for (Index j = begin; j < end; ++j)
    for (Index r = 0; r < R; ++r) {
      float acc = 0;
      for (Index g = 0; g < G; ++g) {
        float block = 0;
        for (Index k = 0; k < m.group; ++k) {
          const Index i = g * m.group + k;
          float q;
          if (m.q8) {
            q = float(m.q8[j * m.in + i]);
          } else {
            const Index half = m.group / 2;
            const std::uint8_t byte = m.q4[(j * m.in + g * m.group) / 2 + k % half];
            q = float((k < half ? byte & 0xF : byte >> 4) - 8);
          }
          block += q * x[r * m.in + i];
        }
        acc += m.scales[j * G + g] * block;
      }
      y[r * ldy + j] = add ? y[r * ldy + j] + acc : acc;
    }
}

#if defined(__AVX512F__) && defined(__AVX512BW__)
/// AVX-512: 16 values a vector; per group, R partial sums (one per row of x), scaled once per group.
template <int R>
void rows_avx512(const QuantizedMatrix& m, const float* x, float* y, Index ldy, bool add, Index begin, Index end) {
  const Index G = m.in / m.group, in = m.in, half = m.group / 2;
  const __m512i low_nibble = _mm512_set1_epi32(0xF), eight = _mm512_set1_epi32(8);
  for (Index j = begin; j < end; ++j) {
    __m512 acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
    const float* scales = m.scales + j * G;
    for (Index g = 0; g < G; ++g) {
      const Index base = g * m.group;
      __m512 t[R];
      for (int r = 0; r < R; ++r) t[r] = _mm512_setzero_ps();
      if (m.q8) {
        const std::int8_t* q = m.q8 + j * in + base;
        for (Index k = 0; k < m.group; k += 16) {
          const __m512 w = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + k))));
          for (int r = 0; r < R; ++r) t[r] = _mm512_fmadd_ps(w, _mm512_loadu_ps(x + r * in + base + k), t[r]);
        }
      } else {  // 16 bytes at b: low nibbles are values b … b+15, high nibbles half + b … half + b + 15
        const std::uint8_t* q = m.q4 + (j * in + base) / 2;
        for (Index b = 0; b < half; b += 16) {
          const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + b)));
          const __m512 lo = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_and_si512(v, low_nibble), eight));
          const __m512 hi = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_srli_epi32(v, 4), eight));
          for (int r = 0; r < R; ++r) {
            const float* xr = x + r * in + base;
            t[r] = _mm512_fmadd_ps(lo, _mm512_loadu_ps(xr + b), t[r]);
            t[r] = _mm512_fmadd_ps(hi, _mm512_loadu_ps(xr + half + b), t[r]);
          }
        }
      }
      const __m512 s = _mm512_set1_ps(scales[g]);
      for (int r = 0; r < R; ++r) acc[r] = _mm512_fmadd_ps(t[r], s, acc[r]);
    }
    for (int r = 0; r < R; ++r) {
      const float v = _mm512_reduce_add_ps(acc[r]);
      y[r * ldy + j] = add ? y[r * ldy + j] + v : v;
    }
  }
}
#endif

#if defined(__AVX2__) && defined(__FMA__)
inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
/// AVX2 + FMA: 8 floats a vector; groups of 32 values (the default group) as four vectors.
template <int R>
void rows_avx2(const QuantizedMatrix& m, const float* x, float* y, Index ldy, bool add, Index begin, Index end) {
  const Index G = m.in / m.group, in = m.in, half = m.group / 2;
  const __m256i low_nibble = _mm256_set1_epi32(0xF), eight = _mm256_set1_epi32(8);
  for (Index j = begin; j < end; ++j) {
    __m256 acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
    const float* scales = m.scales + j * G;
    for (Index g = 0; g < G; ++g) {
      const __m256 s = _mm256_set1_ps(scales[g]);
      const Index base = g * m.group;
      __m256 t[R];
      for (int r = 0; r < R; ++r) t[r] = _mm256_setzero_ps();
      for (Index k = 0; k < half; k += 8) {  // values k … k+7 and half + k … half + k + 7 of the group
        __m256 w0, w1;
        if (m.q8) {
          const std::int8_t* q = m.q8 + j * in + base;
          w0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + k))));
          w1 = _mm256_cvtepi32_ps(
              _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + half + k))));
        } else {
          const std::uint8_t* q = m.q4 + (j * in + base) / 2 + k;
          const __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q)));
          w0 = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_and_si256(b, low_nibble), eight));
          w1 = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(b, 4), eight));
        }
        for (int r = 0; r < R; ++r) {
          const float* xr = x + r * in + base;
          t[r] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xr + k), t[r]);
          t[r] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xr + half + k), t[r]);
        }
      }
      for (int r = 0; r < R; ++r) acc[r] = _mm256_fmadd_ps(t[r], s, acc[r]);
    }
    for (int r = 0; r < R; ++r) {
      const float v = hsum256(acc[r]);
      y[r * ldy + j] = add ? y[r * ldy + j] + v : v;
    }
  }
}
#endif

}  // namespace detail

/// Y (R rows, ldy apart) ← (or +=, with `add`) X (R rows of m.in floats, contiguous) Wᵀ with the quantised W, R ≤ 8,
/// on the given path (best_isa() unless a test asks for another). Threads split W's rows.
inline void gemv(const QuantizedMatrix& m, const float* x, Index R, float* y, Index ldy, bool add = false,
                 Isa isa = best_isa()) {
  require(R >= 1 && R <= 8, "quantized gemv takes 1 … 8 rows, got ", R);
  require(m.group >= 2 && m.in % m.group == 0, "quantized gemv: rows of ", m.in, " values are not whole groups of ",
          m.group);
  if (m.group % 32 != 0) isa = Isa::scalar;  // the vector paths take groups of 32, 64, …
  parallel_rows(m.out, 2 * R * m.in, [&](Index begin, Index end) {
    switch (isa) {
#if defined(__AVX512F__) && defined(__AVX512BW__)
      case Isa::avx512:
        switch (R) {
          case 1: return detail::rows_avx512<1>(m, x, y, ldy, add, begin, end);
          case 2: return detail::rows_avx512<2>(m, x, y, ldy, add, begin, end);
          case 3: return detail::rows_avx512<3>(m, x, y, ldy, add, begin, end);
          case 4: return detail::rows_avx512<4>(m, x, y, ldy, add, begin, end);
          case 5: return detail::rows_avx512<5>(m, x, y, ldy, add, begin, end);
          case 6: return detail::rows_avx512<6>(m, x, y, ldy, add, begin, end);
          case 7: return detail::rows_avx512<7>(m, x, y, ldy, add, begin, end);
          default: return detail::rows_avx512<8>(m, x, y, ldy, add, begin, end);
        }
#endif
#if defined(__AVX2__) && defined(__FMA__)
      case Isa::avx2:
        switch (R) {
          case 1: return detail::rows_avx2<1>(m, x, y, ldy, add, begin, end);
          case 2: return detail::rows_avx2<2>(m, x, y, ldy, add, begin, end);
          case 3: return detail::rows_avx2<3>(m, x, y, ldy, add, begin, end);
          case 4: return detail::rows_avx2<4>(m, x, y, ldy, add, begin, end);
          case 5: return detail::rows_avx2<5>(m, x, y, ldy, add, begin, end);
          case 6: return detail::rows_avx2<6>(m, x, y, ldy, add, begin, end);
          case 7: return detail::rows_avx2<7>(m, x, y, ldy, add, begin, end);
          default: return detail::rows_avx2<8>(m, x, y, ldy, add, begin, end);
        }
#endif
      default: return detail::rows_scalar(m, x, R, y, ldy, add, begin, end);
    }
  });
}

/// The ISA paths compiled into this build (the scalar one always).
[[nodiscard]] inline std::vector<Isa> compiled_isas() {
  std::vector<Isa> v{Isa::scalar};
#if defined(__AVX2__) && defined(__FMA__)
  v.push_back(Isa::avx2);
#endif
#if defined(__AVX512F__) && defined(__AVX512BW__)
  v.push_back(Isa::avx512);
#endif
  return v;
}

/// Row j of W widened to float (prefill: the matrix is widened block by block into a GEMM's operand).
inline void widen_row(const QuantizedMatrix& m, Index j, float* out) {
  for (Index k = 0; k < m.in; ++k) out[k] = detail::value(m, j, k);
}

}  // namespace xtr::cpu::quantized
