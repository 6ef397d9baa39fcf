#pragma once
// y (+)= x Wᵀ for a few rows of x (decoding) with W quantised per group (core/weight_format.hpp): int8 or 4-bit values
// and one float scale per group, dequantized in registers inside the dot product — the matrix is read once, in its
// small form, and each group's values serve every row of x (bfloat16 matrices use the same AVX-512 kernel, unscaled). Paths: AVX-512 (16 floats a vector), AVX2 + FMA (8), and
// a scalar reference; the widest one the compiler targets (-march) is used, and tests compare every compiled path with
// the scalar one.
#include <algorithm>
#include <cstdint>
#include <vector>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include "xtr/backend/cpu/parallel.hpp"
#include "xtr/core/error.hpp"
#include "xtr/core/tensor.hpp"
#include "xtr/core/weight_format.hpp"

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
  const std::uint16_t* bf16 = nullptr;  // or bfloat16 values (out, in), no scales: the AVX-512 kernel reads them too
  const float* f32 = nullptr;           // or float values (out, in): the few-row GEMM of decoding (AVX-512 only)
};

namespace detail {

/// Group g of row j, value k: w = scale · q (bfloat16: the value).
inline float value(const QuantizedMatrix& m, Index j, Index k) {
  if (m.f32) return m.f32[j * m.in + k];
  if (m.bf16) return xtr::detail::bf16_bits_to_float(m.bf16[j * m.in + k]);
  const float s = m.scales[j * (m.in / m.group) + k / m.group];
  if (m.q8) return s * float(m.q8[j * m.in + k]);
  const Index g = k / m.group, r = k % m.group, half = m.group / 2;
  const std::uint8_t byte = m.q4[(j * m.in + g * m.group) / 2 + r % half];
  return s * float((r < half ? byte & 0xF : byte >> 4) - 8);
}

/// Output rows [begin, end) for all R rows of x (R ≤ 8), scalar.
inline void rows_scalar(const QuantizedMatrix& m, const float* x, Index R, float* y, Index ldy, bool add, Index begin,
                        Index end) {
  if (m.bf16 || m.f32) {
    for (Index j = begin; j < end; ++j)
      for (Index r = 0; r < R; ++r) {
        float acc = 0;
        for (Index k = 0; k < m.in; ++k) acc += value(m, j, k) * x[r * m.in + k];
        y[r * ldy + j] = add ? y[r * ldy + j] + acc : acc;
      }
    return;
  }
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
/// AVX-512: J output rows of W at once for all R rows of x, so each group's x vectors are loaded once for J rows and
/// J·R accumulation chains run side by side (one chain is bound by the FMA latency, not by the ports). Per group of
/// 32 values and row: two vectors of 16 weights, made floats in registers (int8: sign-extend, convert; q4: the nibble
/// picks its value from a 16-entry table, vpermps), multiplied into a partial sum, scaled once into the accumulator.
enum class Packed { q8, q4, bf16, f32 };

template <int J, int R, Packed P>
void block_avx512(const QuantizedMatrix& m, const float* x, float* y, Index ldy, bool add, Index j0) {
  static_assert(P == Packed::q8 || P == Packed::q4, "block_avx512 reads scaled formats; dense_avx512 the others");
  const Index G = m.in / m.group, in = m.in, half = m.group / 2;
  const __m512 table = _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7);
  __m512 acc[J][R];
  for (int j = 0; j < J; ++j)
    for (int r = 0; r < R; ++r) acc[j][r] = _mm512_setzero_ps();
  for (Index g = 0; g < G; ++g) {
    const Index base = g * m.group;
    __m512 t[J][R];
    for (Index k = 0; k < half; k += 16) {  // values k … k+15 and half + k … half + k + 15 of the group
      __m512 x0[R], x1[R];
      for (int r = 0; r < R; ++r) {
        x0[r] = _mm512_loadu_ps(x + r * in + base + k);
        x1[r] = _mm512_loadu_ps(x + r * in + base + half + k);
      }
      for (int j = 0; j < J; ++j) {
        const Index row = (j0 + j) * in;
        __m512 w0, w1;
        if constexpr (P == Packed::q4) {  // vpermps reads the low 4 bits of each index: the low nibble as is, the
                                          // high one after a shift
          const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(m.q4 + (row + base) / 2 + k)));
          w0 = _mm512_permutexvar_ps(v, table);
          w1 = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), table);
        } else {
          const std::int8_t* q = m.q8 + row + base + k;
          w0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q))));
          w1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + half))));
        }
        for (int r = 0; r < R; ++r)
          t[j][r] = _mm512_fmadd_ps(w1, x1[r], k == 0 ? _mm512_mul_ps(w0, x0[r]) : _mm512_fmadd_ps(w0, x0[r], t[j][r]));
      }
    }
    for (int j = 0; j < J; ++j) {
      const __m512 s = _mm512_set1_ps(m.scales[(j0 + j) * G + g]);
      for (int r = 0; r < R; ++r) acc[j][r] = _mm512_fmadd_ps(t[j][r], s, acc[j][r]);
    }
  }
  for (int j = 0; j < J; ++j)
    for (int r = 0; r < R; ++r) {
      const float v = _mm512_reduce_add_ps(acc[j][r]);
      float& out = y[r * ldy + j0 + j];
      out = add ? out + v : v;
    }
}

/// Unscaled matrices (bfloat16, float): J output rows × R rows of x, one 16-value step at a time, so that J·R
/// accumulators, R x vectors and J weight vectors fit the 32 registers (R = 8: J = 2); the tail of a row that is not
/// a whole number of 16-value steps is added in scalar code.
template <int J, int R, Packed P>
void dense_avx512(const QuantizedMatrix& m, const float* x, float* y, Index ldy, bool add, Index j0) {
  const Index in = m.in, steps = in / 16;
  __m512 acc[J][R];
  for (int j = 0; j < J; ++j)
    for (int r = 0; r < R; ++r) acc[j][r] = _mm512_setzero_ps();
  for (Index s = 0; s < steps; ++s) {
    const Index k = s * 16;
    __m512 xv[R];
    for (int r = 0; r < R; ++r) xv[r] = _mm512_loadu_ps(x + r * in + k);
    for (int j = 0; j < J; ++j) {
      const Index at = (j0 + j) * in + k;
      __m512 w;
      if constexpr (P == Packed::f32) {
        w = _mm512_loadu_ps(m.f32 + at);
      } else {  // bfloat16: the upper half of a float
        w = _mm512_castsi512_ps(
            _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(m.bf16 + at))), 16));
      }
      for (int r = 0; r < R; ++r) acc[j][r] = _mm512_fmadd_ps(w, xv[r], acc[j][r]);
    }
  }
  for (int j = 0; j < J; ++j)
    for (int r = 0; r < R; ++r) {
      float v = _mm512_reduce_add_ps(acc[j][r]);
      for (Index i = steps * 16; i < in; ++i) {
        const Index at = (j0 + j) * in + i;
        v += (P == Packed::f32 ? m.f32[at] : xtr::detail::bf16_bits_to_float(m.bf16[at])) * x[r * in + i];
      }
      float& out = y[r * ldy + j0 + j];
      out = add ? out + v : v;
    }
}

/// Output rows [begin, end): blocks of J rows, the rest one by one. Scaled formats hold a partial sum and an
/// accumulator per (row of W, row of x): J·R ≤ 8; unscaled ones only the accumulator: J·R ≤ 16.
template <int R, Packed P>
void rows_avx512_as(const QuantizedMatrix& m, const float* x, float* y, Index ldy, bool add, Index begin, Index end) {
  Index j = begin;
  if constexpr (P == Packed::q8 || P == Packed::q4) {
    constexpr int J = R == 1 ? 4 : R == 2 ? 4 : R <= 4 ? 2 : 1;
    for (; j + J <= end; j += J) block_avx512<J, R, P>(m, x, y, ldy, add, j);
    for (; j < end; ++j) block_avx512<1, R, P>(m, x, y, ldy, add, j);
  } else {
    constexpr int J = R <= 2 ? 4 : R <= 4 ? 4 : 2;
    for (; j + J <= end; j += J) dense_avx512<J, R, P>(m, x, y, ldy, add, j);
    for (; j < end; ++j) dense_avx512<1, R, P>(m, x, y, ldy, add, j);
  }
}
template <int R>
void rows_avx512(const QuantizedMatrix& m, const float* x, float* y, Index ldy, bool add, Index begin, Index end) {
  if (m.f32) return rows_avx512_as<R, Packed::f32>(m, x, y, ldy, add, begin, end);
  if (m.bf16) return rows_avx512_as<R, Packed::bf16>(m, x, y, ldy, add, begin, end);
  if (m.q4) return rows_avx512_as<R, Packed::q4>(m, x, y, ldy, add, begin, end);
  rows_avx512_as<R, Packed::q8>(m, x, y, ldy, add, begin, end);
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

/// Output rows [begin, end) of W for R ≤ 8 rows of x on one path.
inline void rows(Isa isa, const QuantizedMatrix& m, const float* x, Index R, float* y, Index ldy, bool add, Index begin,
                 Index end) {
  switch (isa) {
#if defined(__AVX512F__) && defined(__AVX512BW__)
    case Isa::avx512:
      switch (R) {
        case 1: return rows_avx512<1>(m, x, y, ldy, add, begin, end);
        case 2: return rows_avx512<2>(m, x, y, ldy, add, begin, end);
        case 3: return rows_avx512<3>(m, x, y, ldy, add, begin, end);
        case 4: return rows_avx512<4>(m, x, y, ldy, add, begin, end);
        case 5: return rows_avx512<5>(m, x, y, ldy, add, begin, end);
        case 6: return rows_avx512<6>(m, x, y, ldy, add, begin, end);
        case 7: return rows_avx512<7>(m, x, y, ldy, add, begin, end);
        default: return rows_avx512<8>(m, x, y, ldy, add, begin, end);
      }
#endif
#if defined(__AVX2__) && defined(__FMA__)
    case Isa::avx2:
      switch (R) {
        case 1: return rows_avx2<1>(m, x, y, ldy, add, begin, end);
        case 2: return rows_avx2<2>(m, x, y, ldy, add, begin, end);
        case 3: return rows_avx2<3>(m, x, y, ldy, add, begin, end);
        case 4: return rows_avx2<4>(m, x, y, ldy, add, begin, end);
        case 5: return rows_avx2<5>(m, x, y, ldy, add, begin, end);
        case 6: return rows_avx2<6>(m, x, y, ldy, add, begin, end);
        case 7: return rows_avx2<7>(m, x, y, ldy, add, begin, end);
        default: return rows_avx2<8>(m, x, y, ldy, add, begin, end);
      }
#endif
    default: return rows_scalar(m, x, R, y, ldy, add, begin, end);
  }
}
}  // namespace detail

/// Y (R rows, ldy apart) ← (or +=, with `add`) X (R rows of m.in floats, contiguous) Wᵀ with the quantised (or
/// bfloat16, or float) W, any R ≥ 1, on the given path (best_isa() unless a test asks for another). Threads split W's
/// rows; each thread walks its rows in blocks small enough to stay in the L1/L2 cache while every 8 rows of x pass
/// over them, so the matrix is read from memory once however many rows x has.
inline void gemv(const QuantizedMatrix& m, const float* x, Index R, float* y, Index ldy, bool add = false,
                 Isa isa = best_isa()) {
  require(R >= 1, "quantized gemv takes at least one row, got ", R);
  if (m.bf16 || m.f32) {
    if (isa == Isa::avx2) isa = Isa::scalar;  // bfloat16 and float: the AVX-512 kernel or the scalar loop
  } else {
    require(m.group >= 2 && m.in % m.group == 0, "quantized gemv: rows of ", m.in, " values are not whole groups of ",
            m.group);
    if (m.group % 32 != 0) isa = Isa::scalar;  // the vector paths take groups of 32, 64, …
  }
  // rows of W per block: about 48 KiB of float weights (their packed form is smaller), at least 4
  const Index block = std::max<Index>(4, (Index(48) << 10) / (4 * m.in));
  parallel_rows(m.out, 2 * R * m.in, [&](Index begin, Index end) {
    if (R <= 8) return detail::rows(isa, m, x, R, y, ldy, add, begin, end);
    for (Index j = begin; j < end; j += block)
      for (Index r = 0; r < R; r += 8)
        detail::rows(isa, m, x + r * m.in, std::min<Index>(8, R - r), y + r * ldy, ldy, add, j,
                     std::min(end, j + block));
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

/// Rows [begin, end) of W widened to float into out (row j at out + (j − begin)·m.in): a long prefill widens the
/// matrix once into a GEMM's operand; vectorised per group as the GEMV reads it.
inline void widen_rows(const QuantizedMatrix& m, Index begin, Index end, float* out) {
  const Index G = m.in / m.group, half = m.group / 2;
  parallel_rows(end - begin, m.in, [&](Index b, Index e) {
    for (Index j = begin + b; j < begin + e; ++j) {
      float* row = out + (j - begin) * m.in;
      for (Index g = 0; g < G; ++g) {
        const float s = m.scales[j * G + g];
        const Index base = g * m.group;
        if (m.q8) {
          const std::int8_t* q = m.q8 + j * m.in + base;
          for (Index k = 0; k < m.group; ++k) row[base + k] = s * float(q[k]);
        } else {
          const std::uint8_t* q = m.q4 + (j * m.in + base) / 2;
          for (Index k = 0; k < half; ++k) {
            row[base + k] = s * float((q[k] & 0xF) - 8);
            row[base + half + k] = s * float((q[k] >> 4) - 8);
          }
        }
      }
    }
  });
}

}  // namespace xtr::cpu::quantized
