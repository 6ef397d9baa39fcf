#pragma once
// y (+)= x Wᵀ for a few rows of x (decoding) with W quantised per group (core/weight_format.hpp): int8 or 4-bit values
// and one half-precision scale per group, dequantized in registers inside the dot product — the matrix is read once,
// in its small form, and each group's values serve every row of x (bfloat16 and float matrices use the same blocking,
// unscaled, on AVX-512 and AVX2). With int8 activations (core/weight_format.hpp's ActivationFormat) the AVX512-VNNI path multiplies the
// activations' int8 values with the weights' as integers (vpdpbusd), one scale per group and chunk, and so does the
// AVX2 path with byte products (vpmaddubsw, vpmaddwd, as ggml does); the AVX-512 path without VNNI and the scalar one
// multiply the values the int8 activations stand for. Paths: AVX512-VNNI, AVX-512 (16 floats a vector), AVX2 + FMA
// (8), and a scalar reference; the widest one the compiler targets (-march) is used, and tests compare every compiled
// path with the scalar one.
#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__) || defined(__AVX2__) || defined(__F16C__)
#include <immintrin.h>
#endif

#include "xtr/backend/cpu/parallel.hpp"
#include "xtr/backend/cpu/simd.hpp"
#include "xtr/core/error.hpp"
#include "xtr/core/tensor.hpp"
#include "xtr/core/weight_format.hpp"

namespace xtr::cpu::quantized {

/// Instruction paths. avx512_vnni is avx512 plus integer dot products (vpdpbusd) for int8 activations against int8
/// or 4-bit weights; with float activations it runs the avx512 kernels.
enum class Isa { scalar, avx2, avx512, avx512_vnni };

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512VNNI__)
#define XTR_QUANTIZED_VNNI 1
#endif
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define XTR_QUANTIZED_AVX2_INT 1  // AVX2's integer kernels (byte products) for int8 activations
#endif
#if defined(__AVX2__) && defined(__FMA__) && defined(__GNUC__)
#define XTR_QUANTIZED_AVX2_PANELS 1  // AVX2's panel kernel for plain matrices (GNU inline assembly; clang too)
#endif

/// The paths this build has, widest first.
[[nodiscard]] constexpr Isa best_isa() {
#if defined(XTR_QUANTIZED_VNNI)
  return Isa::avx512_vnni;
#elif defined(__AVX512F__) && defined(__AVX512BW__)
  return Isa::avx512;
#elif defined(__AVX2__) && defined(__FMA__)
  return Isa::avx2;
#else
  return Isa::scalar;
#endif
}
[[nodiscard]] constexpr const char* isa_name(Isa isa) {
  return isa == Isa::avx512_vnni ? "avx512_vnni" : isa == Isa::avx512 ? "avx512" : isa == Isa::avx2 ? "avx2" : "scalar";
}
/// Whether the path runs the AVX-512 float kernels (avx512, and avx512_vnni for float activations).
[[nodiscard]] constexpr bool is_avx512(Isa isa) { return isa == Isa::avx512 || isa == Isa::avx512_vnni; }

/// Whether gemv multiplies int8 activations against int8 / q4 weights in groups of `group` on `isa` with AVX2's
/// integer kernel (byte products), which also takes a GEMM of any number of rows of x (a long prompt's prefill)
/// rather than a packed GEMM over the matrix widened to floats: measured ahead of Eigen's GEMM at 128 and 512 rows on
/// the enwik8 shapes (bench/RESULTS.md, issue 15's ninth part). The AVX512-VNNI kernel quantises x on the calling
/// thread and was not measured against the GEMM beyond 32 rows: it keeps the widened GEMM there.
[[nodiscard]] constexpr bool integer_kernel_takes_any_rows(Isa isa, Index group) {
#if defined(XTR_QUANTIZED_AVX2_INT)
  return isa == Isa::avx2 && group == 32;
#else
  (void)isa, (void)group;
  return false;
#endif
}

/// Whether gemv multiplies a plain (bfloat16, float) matrix by R rows of x with AVX2's panel kernel (x transposed
/// into panels, 6 × 16 outer-product tiles: detail::rows_avx2_panels) rather than dense_avx2's dot products: from 16
/// rows, where it measured ahead of both dense_avx2 and the widened matrix's packed GEMM (bench/RESULTS.md, issue 15's
/// tenth part). Measured on AVX2 only: AVX-512 keeps its kernels.
[[nodiscard]] constexpr bool panel_kernel_takes(Isa isa, Index R) {
#if defined(XTR_QUANTIZED_AVX2_PANELS)
  return isa == Isa::avx2 && R >= 16;
#else
  (void)isa, (void)R;
  return false;
#endif
}

/// Whether the panels of R rows of x (R · in floats) take at most a quarter of the last-level cache, so that the
/// blocks of W, which the threads take one after another, read them from the cache: beyond, each block reads them
/// from memory again (measured: 4,096 rows of 2,048 values at or below the widened matrix's packed GEMM, and 4,096
/// of 512 ahead of it; bench/RESULTS.md, issue 15's tenth part).
[[nodiscard]] inline bool panels_stay_cached(Index R, Index in) {
  return R * in * Index(sizeof(float)) <= last_level_cache_bytes() / 4;
}

/// The quantised matrix: (out, in) with `group` values per scale along each row; int8 values (q8, out·in) or
/// packed 4-bit values (q4, out·in/2 bytes: per group, byte k holds values k and k + group/2).
struct QuantizedMatrix {
  const std::int8_t* q8 = nullptr;
  const std::uint8_t* q4 = nullptr;
  const std::uint16_t* scales = nullptr;  // (out, in / group) halves (IEEE binary16 bits)
  Index out = 0, in = 0, group = 32;
  const std::uint16_t* bf16 = nullptr;  // or bfloat16 values (out, in), no scales
  const float* f32 = nullptr;           // or float values (out, in): the few-row GEMM of decoding
};

namespace detail {

/// f(std::integral_constant<int, N>{}) for the run-time number of rows of x R in 1…8 (more: 8): the kernels take their
/// rows of x as a template argument, one instantiation each.
template <class F>
void with_rows(Index R, F&& f) {
  switch (R) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 3: return f(std::integral_constant<int, 3>{});
    case 4: return f(std::integral_constant<int, 4>{});
    case 5: return f(std::integral_constant<int, 5>{});
    case 6: return f(std::integral_constant<int, 6>{});
    case 7: return f(std::integral_constant<int, 7>{});
    default: return f(std::integral_constant<int, 8>{});
  }
}

/// How a matrix holds its values: quantised per group (int8, 4-bit) or plain (bfloat16, float).
enum class Packed { q8, q4, bf16, f32 };

/// A scale's value (the F16C instruction where the build has it).
inline float scale_at(const std::uint16_t* s) {
#if defined(__F16C__)
  return _cvtsh_ss(*s);
#else
  return xtr::detail::half_bits_to_float(*s);
#endif
}

/// Group g of row j, value k: w = scale · q (bfloat16: the value).
inline float value(const QuantizedMatrix& m, Index j, Index k) {
  if (m.f32) return m.f32[j * m.in + k];
  if (m.bf16) return xtr::detail::bf16_bits_to_float(m.bf16[j * m.in + k]);
  const float s = scale_at(m.scales + j * (m.in / m.group) + k / m.group);
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
        acc += scale_at(m.scales + j * G + g) * block;
      }
      y[r * ldy + j] = add ? y[r * ldy + j] + acc : acc;
    }
}

#if defined(__AVX512F__) && defined(__AVX512BW__)
/// AVX-512: J output rows of W at once for all R rows of x, so each group's x vectors are loaded once for J rows and
/// J·R accumulation chains run side by side (one chain is bound by the FMA latency, not by the ports). Per group of
/// 32 values and row: two vectors of 16 weights, made floats in registers (int8: sign-extend, convert; q4: the nibble
/// picks its value from a 16-entry table, vpermps), multiplied into a partial sum, scaled once into the accumulator.

/// y[r, j0 + j] (+)= the sum of acc[j][r]'s lanes.
template <int J, int R>
void store_sums(const __m512 (&acc)[J][R], float* y, Index ldy, bool add, Index j0) {
  if constexpr (J == 4) {
    for (int r = 0; r < R; ++r) {
      float* out = y + r * ldy + j0;
      const __m128 v = simd::four_sums(acc[0][r], acc[1][r], acc[2][r], acc[3][r]);
      _mm_storeu_ps(out, add ? _mm_add_ps(_mm_loadu_ps(out), v) : v);
    }
    return;
  }
  for (int j = 0; j < J; ++j)
    for (int r = 0; r < R; ++r) {
      const float v = _mm512_reduce_add_ps(acc[j][r]);
      float& out = y[r * ldy + j0 + j];
      out = add ? out + v : v;
    }
}

template <int J, int R, Packed P>
void block_avx512(const QuantizedMatrix& m, const float* x, float* y, Index ldy, bool add, Index j0) {
  static_assert(P == Packed::q8 || P == Packed::q4, "block_avx512 reads scaled formats; dense_avx512 the others");
  const Index G = m.in / m.group, in = m.in, half = m.group / 2;
  const __m512 table = _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7);
  __m512 acc[J][R];
  for (int j = 0; j < J; ++j)
    for (int r = 0; r < R; ++r) acc[j][r] = _mm512_setzero_ps();
  alignas(64) float scales[J][16];  // the J rows' scales of groups g … g + 15 as floats, converted 16 at a time
  for (Index g = 0; g < G; ++g) {
    if (g % 16 == 0)
      for (int j = 0; j < J; ++j) {
        const std::uint16_t* row = m.scales + (j0 + j) * G;
        if (g + 16 <= G) {
          _mm512_store_ps(scales[j], _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + g))));
        } else {
          for (Index i = g; i < G; ++i) scales[j][i - g] = scale_at(row + i);
        }
      }
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
      const __m512 s = _mm512_set1_ps(scales[j][g % 16]);
      for (int r = 0; r < R; ++r) acc[j][r] = _mm512_fmadd_ps(t[j][r], s, acc[j][r]);
    }
  }
  store_sums<J, R>(acc, y, ldy, add, j0);
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
    const std::uint16_t* scales = m.scales + j * G;
    for (Index g = 0; g < G; ++g) {
      const __m256 s = _mm256_set1_ps(scale_at(scales + g));
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

/// Eight bfloat16 values as floats (the upper halves of the floats).
inline __m256 bf16x8(const std::uint16_t* v) {
  return _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(v))), 16));
}

/// Unscaled matrices (bfloat16, float) on AVX2: J output rows × R ≤ 4 rows of x, 8 values a step, so that J·R
/// accumulators, J weight vectors and one x vector fit the 16 registers; each weight vector serves R rows of x and
/// each x vector J rows of W. The tail of a row that is not a whole number of 8-value steps is added in scalar code.
template <int J, int R, Packed P>
void dense_avx2(const QuantizedMatrix& m, const float* x, float* y, Index ldy, bool add, Index j0) {
  static_assert(R <= 4 && J * R + J + 1 <= 16, "dense_avx2: J·R accumulators, J weights and one x in 16 registers");
  const Index in = m.in, steps = in / 8;
  __m256 acc[J][R];
  for (int j = 0; j < J; ++j)
    for (int r = 0; r < R; ++r) acc[j][r] = _mm256_setzero_ps();
  for (Index s = 0; s < steps; ++s) {
    const Index k = s * 8;
    __m256 w[J];
    for (int j = 0; j < J; ++j) {
      const Index at = (j0 + j) * in + k;
      w[j] = P == Packed::f32 ? _mm256_loadu_ps(m.f32 + at) : bf16x8(m.bf16 + at);
    }
    for (int r = 0; r < R; ++r) {
      const __m256 xv = _mm256_loadu_ps(x + r * in + k);
      for (int j = 0; j < J; ++j) acc[j][r] = _mm256_fmadd_ps(w[j], xv, acc[j][r]);
    }
  }
  for (int j = 0; j < J; ++j)
    for (int r = 0; r < R; ++r) {
      float v = hsum256(acc[j][r]);
      for (Index i = steps * 8; i < in; ++i) {
        const Index at = (j0 + j) * in + i;
        v += (P == Packed::f32 ? m.f32[at] : xtr::detail::bf16_bits_to_float(m.bf16[at])) * x[r * in + i];
      }
      float& out = y[r * ldy + j0 + j];
      out = add ? out + v : v;
    }
}

/// Output rows [begin, end) of a bfloat16 or float W for R ≤ 8 rows of x: the rows of x four at a time (the rest
/// after), blocks of J rows of W, the remainder one by one.
template <int R, Packed P>
void rows_avx2_dense_as(const QuantizedMatrix& m, const float* x, float* y, Index ldy, bool add, Index begin,
                        Index end) {
  if constexpr (R > 4) {
    rows_avx2_dense_as<4, P>(m, x, y, ldy, add, begin, end);
    rows_avx2_dense_as<R - 4, P>(m, x + 4 * m.in, y + 4 * ldy, ldy, add, begin, end);
  } else {
    constexpr int J = R <= 2 ? 4 : R == 3 ? 3 : 2;
    Index j = begin;
    for (; j + J <= end; j += J) dense_avx2<J, R, P>(m, x, y, ldy, add, j);
    for (; j < end; ++j) dense_avx2<1, R, P>(m, x, y, ldy, add, j);
  }
}

#if defined(XTR_QUANTIZED_AVX2_PANELS)
/// Plain (bfloat16, float) matrices on AVX2 for 16 rows of x or more: the rows of x transposed once per call into
/// panels of 8 (value k of the panel's 8 rows side by side), and a 6 × 16 outer-product tile — 6 rows of W, each value
/// broadcast, times two panels — accumulating in 12 registers with no horizontal sums: 12 FMAs to 2 vector loads
/// and 6 broadcasts per value of the row. Written in assembly because GCC keeps the 12 accumulators of the
/// intrinsics version in memory as well as in registers (a store each per FMA: half the rate; bench/RESULTS.md,
/// issue 15's tenth part). AT&T syntax, the compilers' default on x86-64 (not -masm=intel).
struct Panels {
  std::vector<float> values;  // panel p (rows 8p … 8p + 7 of x): value k of its rows at (p·in + k)·8
  Index rows = 0;             // rows of x in whole panels of 16
};
/// The rows of x that go through the tile kernel (whole 16s; the rest go through dense_avx2), space for them.
inline void shape_panels(Index R, Index in, Panels& p) {
  p.rows = R / 16 * 16;
  p.values.resize(std::size_t(p.rows * in));
}
/// Rows [begin, end) of x (of the first p.rows) into their panels.
inline void fill_panels(const float* x, Index in, Index begin, Index end, Panels& p) {
  for (Index r = begin; r < std::min(end, p.rows); ++r) {
    float* panel = p.values.data() + (r / 8) * in * 8 + r % 8;
    const float* row = x + r * in;
    for (Index k = 0; k < in; ++k) panel[k * 8] = row[k];
  }
}
/// t[j][i] = Σ_k w[j·ld + k] · x_i[k] for the 6 rows of W at w (rows ld floats apart) and the 16 rows of x in the
/// two panels from `panel` (in ≥ 1 values each). Meanwhile the `in` · `step` bytes from `next` (6 rows of the matrix
/// further on, as stored) are prefetched, `step` bytes a value: a short prompt reads each row from memory once, and
/// this overlaps that read with the arithmetic (bf16 prefill of 16 rows: ~10 % less time in a /tmp measurement).
inline void tile_6x16(const float* w, Index ld, const float* panel, Index in, const void* next, Index step,
                      float (&t)[6][16]) {
  const float* w3 = w + 3 * ld;
  const Index ld_bytes = ld * Index(sizeof(float)), panel_bytes = in * 8 * Index(sizeof(float));
  Index n = in;
  const char* ahead = static_cast<const char*>(next);
  asm volatile(
      "vxorps %%ymm4, %%ymm4, %%ymm4\n\t"
      "vxorps %%ymm5, %%ymm5, %%ymm5\n\t"
      "vxorps %%ymm6, %%ymm6, %%ymm6\n\t"
      "vxorps %%ymm7, %%ymm7, %%ymm7\n\t"
      "vxorps %%ymm8, %%ymm8, %%ymm8\n\t"
      "vxorps %%ymm9, %%ymm9, %%ymm9\n\t"
      "vxorps %%ymm10, %%ymm10, %%ymm10\n\t"
      "vxorps %%ymm11, %%ymm11, %%ymm11\n\t"
      "vxorps %%ymm12, %%ymm12, %%ymm12\n\t"
      "vxorps %%ymm13, %%ymm13, %%ymm13\n\t"
      "vxorps %%ymm14, %%ymm14, %%ymm14\n\t"
      "vxorps %%ymm15, %%ymm15, %%ymm15\n\t"
      ".p2align 4\n"
      "1:\n\t"
      "vmovups (%[x]), %%ymm0\n\t"  // value k of the first panel's 8 rows
      "vmovups (%[x],%[panel]), %%ymm1\n\t"  // and of the second's
      "vbroadcastss (%[w]), %%ymm2\n\t"
      "vfmadd231ps %%ymm0, %%ymm2, %%ymm4\n\t"
      "vfmadd231ps %%ymm1, %%ymm2, %%ymm5\n\t"
      "vbroadcastss (%[w],%[ld]), %%ymm3\n\t"
      "vfmadd231ps %%ymm0, %%ymm3, %%ymm6\n\t"
      "vfmadd231ps %%ymm1, %%ymm3, %%ymm7\n\t"
      "vbroadcastss (%[w],%[ld],2), %%ymm2\n\t"
      "vfmadd231ps %%ymm0, %%ymm2, %%ymm8\n\t"
      "vfmadd231ps %%ymm1, %%ymm2, %%ymm9\n\t"
      "vbroadcastss (%[w3]), %%ymm3\n\t"
      "vfmadd231ps %%ymm0, %%ymm3, %%ymm10\n\t"
      "vfmadd231ps %%ymm1, %%ymm3, %%ymm11\n\t"
      "vbroadcastss (%[w3],%[ld]), %%ymm2\n\t"
      "vfmadd231ps %%ymm0, %%ymm2, %%ymm12\n\t"
      "vfmadd231ps %%ymm1, %%ymm2, %%ymm13\n\t"
      "vbroadcastss (%[w3],%[ld],2), %%ymm3\n\t"
      "vfmadd231ps %%ymm0, %%ymm3, %%ymm14\n\t"
      "vfmadd231ps %%ymm1, %%ymm3, %%ymm15\n\t"
      "prefetcht0 (%[ahead])\n\t"
      "add %[step], %[ahead]\n\t"
      "add $4, %[w]\n\t"
      "add $4, %[w3]\n\t"
      "add $32, %[x]\n\t"
      "dec %[n]\n\t"
      "jnz 1b\n\t"
      "vmovups %%ymm4, (%[t])\n\t"
      "vmovups %%ymm5, 32(%[t])\n\t"
      "vmovups %%ymm6, 64(%[t])\n\t"
      "vmovups %%ymm7, 96(%[t])\n\t"
      "vmovups %%ymm8, 128(%[t])\n\t"
      "vmovups %%ymm9, 160(%[t])\n\t"
      "vmovups %%ymm10, 192(%[t])\n\t"
      "vmovups %%ymm11, 224(%[t])\n\t"
      "vmovups %%ymm12, 256(%[t])\n\t"
      "vmovups %%ymm13, 288(%[t])\n\t"
      "vmovups %%ymm14, 320(%[t])\n\t"
      "vmovups %%ymm15, 352(%[t])\n\t"
      : [w] "+r"(w), [w3] "+r"(w3), [x] "+r"(panel), [n] "+r"(n), [ahead] "+r"(ahead)
      : [ld] "r"(ld_bytes), [panel] "r"(panel_bytes), [t] "r"(&t[0][0]), [step] "r"(step)
      : "cc", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",
        "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
}
/// Output rows [begin, end) of a bfloat16 or float W for all R rows of x: the first p.rows through the tile kernel,
/// the rest through dense_avx2. The panels go in chunks of about 256 KiB (they stay in the L2 cache while the block of
/// W passes over them: a long prompt's panels, megabytes, would otherwise be read from memory again for every 6 rows
/// of W); per chunk, 6 rows of W at a time, widened from bfloat16 — or copied, for the last rows of a block that are
/// not 6 — into a thread's buffer of 6 rows, each set of 6 serving every panel of the chunk.
template <Packed P>
void rows_avx2_panels(const QuantizedMatrix& m, const Panels& p, const float* x, Index R, float* y, Index ldy,
                      bool add, Index begin, Index end, Index next_begin, Index next_end) {
  const Index in = m.in, chunk = std::max<Index>(16, (Index(64) << 10) / in / 16 * 16);
  constexpr Index bytes = P == Packed::f32 ? 4 : 2;
  const char* stored = P == Packed::f32 ? reinterpret_cast<const char*>(m.f32) : reinterpret_cast<const char*>(m.bf16);
  thread_local std::vector<float> six;  // this thread's 6 rows of W as floats
  six.resize(std::size_t(6 * in));
  float t[6][16];
  for (Index c0 = 0; c0 < p.rows; c0 += chunk) {
    const Index c1 = std::min(p.rows, c0 + chunk);
    for (Index j0 = begin; j0 < end; j0 += 6) {
      const Index J = std::min<Index>(6, end - j0);
      const float* w = six.data();
      if (P == Packed::f32 && J == 6) {
        w = m.f32 + j0 * in;
      } else {
        for (Index j = 0; j < 6; ++j) {
          float* row = six.data() + j * in;
          if (j >= J) {
            std::fill_n(row, in, 0.0f);
          } else if constexpr (P == Packed::f32) {
            std::copy_n(m.f32 + (j0 + j) * in, in, row);
          } else {
            const std::uint16_t* b = m.bf16 + (j0 + j) * in;
            Index k = 0;
            for (; k + 8 <= in; k += 8) _mm256_storeu_ps(row + k, bf16x8(b + k));
            for (; k < in; ++k) row[k] = xtr::detail::bf16_bits_to_float(b[k]);
          }
        }
      }
      // the rows 12 on in this thread's order (two tiles ahead: measured a little ahead of one for float), past the
      // block's end those of the block it takes next (its first rows when it has fewer than 12 left); none after the
      // last block
      Index ahead = j0 + 12;
      if (ahead >= end) ahead = std::max(next_begin, std::min(next_begin + (ahead - end), next_end - 6));
      const bool fetch = ahead < m.out;
      const void* next = stored + (fetch ? ahead : j0) * in * bytes;
      for (Index r0 = c0; r0 < c1; r0 += 16) {
        tile_6x16(w, in, p.values.data() + r0 * in, in, next, fetch && r0 == c0 ? 6 * bytes : 0, t);
        for (Index i = 0; i < 16; ++i)
          for (Index j = 0; j < J; ++j) {
            float& out = y[(r0 + i) * ldy + j0 + j];
            out = add ? out + t[j][i] : t[j][i];
          }
      }
    }
  }
  for (Index r = p.rows; r < R; r += 8)
    with_rows(std::min<Index>(8, R - r), [&](auto n) {
      rows_avx2_dense_as<decltype(n)::value, P>(m, x + r * in, y + r * ldy, ldy, add, begin, end);
    });
}
#endif  // XTR_QUANTIZED_AVX2_PANELS
#endif

#if defined(XTR_QUANTIZED_AVX2_INT)
/// One whole chunk of 32 activations quantised as core/weight_format.hpp's quantize_activation_chunk, bit for bit
/// (the same IEEE operations; vcvtps2dq rounds to nearest even as std::nearbyint does): the 32 values into q, and the
/// scale.
inline float quantize_chunk_avx2(const float* x, std::int8_t* q) {
  __m256 v[4];
  __m256 amax = _mm256_setzero_ps(), bad = _mm256_setzero_ps();
  const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  for (int i = 0; i < 4; ++i) {
    v[i] = _mm256_loadu_ps(x + 8 * i);
    bad = _mm256_or_ps(bad, _mm256_cmp_ps(_mm256_sub_ps(v[i], v[i]), _mm256_setzero_ps(), _CMP_NEQ_UQ));
    amax = _mm256_max_ps(amax, _mm256_and_ps(v[i], magnitude));
  }
  if (_mm256_movemask_ps(bad)) {  // x − x is 0 for a finite x, NaN for an infinity or a NaN
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q), _mm256_setzero_si256());
    return std::numeric_limits<float>::quiet_NaN();
  }
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  const float top = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
  const __m256 inv = _mm256_set1_ps(top > 0 ? 127.0f / top : 0.0f);
  __m256i i[4];
  for (int k = 0; k < 4; ++k) i[k] = _mm256_cvtps_epi32(_mm256_mul_ps(v[k], inv));
  // the packs work within 128-bit halves: values 0–3, 8–11, 16–19, 24–27, then 4–7, …; the permutation restores order
  const __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(i[0], i[1]), _mm256_packs_epi32(i[2], i[3]));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(q),
                      _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
  return top / 127.0f;
}

/// int8 activations laid out for the AVX2 integer kernels (groups of 32 = chunks of 32), R rows in panels of up to 8
/// (the last panel holds the rest), each row padded to whole steps (zeros). A step is one group (32 values) against
/// int8 weights, two groups (64 values) against 4-bit ones. Within a panel the rows of a step lie side by side, so a
/// kernel walking a row of W reads every row of x at a fixed distance from one pointer:
///   q:  per panel, per step, per row: q8: the step's values in order; q4: the first halves (values 0–15) of its two
///       chunks, then their second halves — the order of the low and high nibbles of 32 bytes of packed weights;
///   s:  per panel, per step, per row: each chunk's scale repeated over the lanes its products land in (8 for q8, 4
///       for q4);
///   cx: q4 only: per panel, per block of 8 chunks, per row: each chunk's −8 · scale · (the sum of its values), the
///       product the nibbles' offset (stored as q + 8) adds, which the kernels take away once per block of 8 groups
///       (times the weights' scales) instead of once per step;
///   sc: per row, each chunk's scale once, padded to whole blocks of 8 chunks (zeros): one row of x.
struct BytewiseActivations {
  std::vector<std::int8_t> q;
  std::vector<float> s, sc, cx;
  Index steps = 0;   // per row
  Index chunks = 0;  // per row in sc and cx (whole blocks of 8)
  Index step_values = 0;
  /// Where panel p (rows 8p …) starts in q, s and cx: the panels before it are full.
  [[nodiscard]] const std::int8_t* panel_q(Index p) const { return q.data() + 8 * p * steps * step_values; }
  [[nodiscard]] const float* panel_s(Index p) const { return s.data() + 8 * p * steps * 8; }
  [[nodiscard]] const float* panel_cx(Index p) const { return cx.data() + 8 * p * chunks; }
};

/// Sizes a for R rows of m.in activations (m.in a multiple of 32) in the layout of m's format (the rows' places are
/// written by fill_bytewise_activations, padding included).
inline void shape_bytewise_activations(const QuantizedMatrix& m, Index R, BytewiseActivations& a) {
  const bool q4 = m.q4 != nullptr;
  const Index groups = q4 ? 2 : 1, chunks = m.in / kActivationChunk;
  a.step_values = 32 * groups;
  a.steps = (chunks + groups - 1) / groups;
  a.chunks = (chunks + 7) / 8 * 8;
  a.q.resize(std::size_t(R * a.steps * a.step_values));
  a.s.resize(std::size_t(R * a.steps * 8));
  a.sc.resize(std::size_t(R * a.chunks));
  a.cx.resize(q4 ? std::size_t(R * a.chunks) : 0);
}

/// Quantises rows [begin, end) of the R rows of x into a (shaped for them), zeros in their padding (the half of a
/// q4 row's last step past an odd number of chunks, and the chunks past the last whole block of 8 in sc and cx):
/// each row writes only its own places, so threads may fill disjoint ranges of rows at once.
inline void fill_bytewise_activations(const QuantizedMatrix& m, const float* x, Index R, Index begin, Index end,
                                      BytewiseActivations& a) {
  const bool q4 = m.q4 != nullptr;
  const Index groups = q4 ? 2 : 1, chunks = m.in / kActivationChunk;
  alignas(32) std::int8_t chunk[32];
  for (Index r = begin; r < end; ++r) {
    const Index p = r / 8, n = std::min<Index>(8, R - 8 * p), i = r % 8;  // panel, its rows, this row's place in it
    const auto slot = [&](Index t) { return 8 * p * a.steps + t * n + i; };  // step t of this row, in q and s
    const auto cx_at = [&](Index c) { return std::size_t(8 * p * a.chunks + ((c / 8) * n + i) * 8 + c % 8); };
    for (Index c = 0; c < chunks; ++c) {
      const float scale = quantize_chunk_avx2(x + r * m.in + c * kActivationChunk, chunk);
      a.sc[std::size_t(r * a.chunks + c)] = scale;
      const Index t = c / groups, h = c % groups;  // chunk c is the h-th of step t
      std::int8_t* q = a.q.data() + slot(t) * a.step_values;
      float* s = a.s.data() + slot(t) * 8;
      if (q4) {
        std::copy_n(chunk, 16, q + h * 16);
        std::copy_n(chunk + 16, 16, q + 32 + h * 16);
        std::fill_n(s + h * 4, 4, scale);
        int sum = 0;  // of the chunk's values
        for (int k = 0; k < 32; ++k) sum += chunk[k];
        a.cx[cx_at(c)] = -8.0f * float(sum) * scale;
      } else {
        std::copy_n(chunk, 32, q);
        std::fill_n(s, 8, scale);
      }
    }
    if (q4 && chunks % 2 == 1) {  // the missing second chunk of the last step
      std::int8_t* q = a.q.data() + slot(a.steps - 1) * a.step_values;
      std::fill_n(q + 16, 16, std::int8_t{0});
      std::fill_n(q + 48, 16, std::int8_t{0});
      std::fill_n(a.s.data() + slot(a.steps - 1) * 8 + 4, 4, 0.0f);
    }
    for (Index c = chunks; c < a.chunks; ++c) {  // the last block's missing chunks
      a.sc[std::size_t(r * a.chunks + c)] = 0.0f;
      if (q4) a.cx[cx_at(c)] = 0.0f;
    }
  }
}

/// The 8 scales of groups g … g + 7 of a row (fewer at the row's end: zeros), as floats.
inline __m256 eight_scales(const std::uint16_t* row, Index g, Index G) {
  if (g + 8 <= G) return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + g)));
  alignas(16) std::uint16_t h[8] = {};
  std::copy(row + g, row + G, h);
  return _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(h)));
}

/// The AVX2 integer products of a step for one row of W and one row of x (vpmaddubsw: unsigned × signed bytes into
/// 16-bit pairs, then vpmaddwd into 32-bit lanes).
///   q4: 32 packed bytes = two groups; the low nibbles (q + 8, unsigned) against the activations' first halves, the
///       high nibbles against their second halves; the two 16-bit sums stay below 2 · 2 · 15 · 127 < 2¹⁵; lanes 0–3
///       hold the first group's products, 4–7 the second's (the offset of 8 is taken away by the activations' cx);
///   q8: 32 signed weights = one group: |w| (unsigned) against the activations with w's sign (vpsignb), a pair's sum
///       at most 2 · 127 · 127 < 2¹⁵ (weights and activations lie in [−127, 127]).
struct Avx2Q4 {
  static constexpr Index groups = 2;
  struct W {
    __m256i lo, hi;
  };
  static W load(const QuantizedMatrix& m, Index row, Index g, bool whole) {
    const std::uint8_t* p = m.q4 + row * (m.in / 2) + g * 16;
    const __m256i v = whole ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))
                            : _mm256_inserti128_si256(_mm256_setzero_si256(),
                                                      _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)), 0);
    const __m256i nibble = _mm256_set1_epi8(0x0F);
    return {_mm256_and_si256(v, nibble), _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble)};
  }
  static __m256i dot(const W& w, const std::int8_t* x) {
    const __m256i xlo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
    const __m256i xhi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + 32));
    const __m256i pairs = _mm256_add_epi16(_mm256_maddubs_epi16(w.lo, xlo), _mm256_maddubs_epi16(w.hi, xhi));
    return _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
  }
};
struct Avx2Q8 {
  static constexpr Index groups = 1;
  struct W {
    __m256i w, magnitude;
  };
  static W load(const QuantizedMatrix& m, Index row, Index g, bool) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(m.q8 + row * m.in + g * 32));
    return {v, _mm256_abs_epi8(v)};
  }
  static __m256i dot(const W& w, const std::int8_t* x) {
    const __m256i xs = _mm256_sign_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x)), w.w);
    return _mm256_madd_epi16(_mm256_maddubs_epi16(w.magnitude, xs), _mm256_set1_epi16(1));
  }
};

/// J rows of W × the R rows of x of panel p with the integer products of format F, a step at a time; each lane's
/// integer sum is converted and scaled by its group's weight scale × activation scale. The 8 weight scales of a block
/// of 8 groups are read at once (and take away the q4 offset's products with the activations' cx) and spread over the
/// lanes of each step by a permutation; one row of x multiplies them by its 8 activation scales once per block,
/// several rows multiply each step's weight scales by each row's activation scales. A panel's rows of a step lie
/// R · step_values bytes apart from one pointer, so the loop over the rows is loads at fixed offsets.
template <class F, int J, int R>
void block_avx2_int(const QuantizedMatrix& m, const BytewiseActivations& a, Index p, float* y, Index ldy, bool add,
                    Index j0) {
  constexpr Index step_values = 32 * F::groups;
  const Index G = m.in / 32;
  const std::int8_t* xq = a.panel_q(p);
  const float* s = a.panel_s(p);
  const float* cx = F::groups == 2 ? a.panel_cx(p) : nullptr;
  const float* sc = a.sc.data() + 8 * p * a.chunks;  // R = 1 only
  __m256 acc[J][R];
  for (int j = 0; j < J; ++j)
    for (int r = 0; r < R; ++r) acc[j][r] = _mm256_setzero_ps();
  for (Index g0 = 0; g0 < G; g0 += 8) {
    __m256 sw8[J];  // the block's weight scales (one row of x: times the activation scales)
    for (int j = 0; j < J; ++j) {
      sw8[j] = eight_scales(m.scales + (j0 + j) * G, g0, G);
      if constexpr (F::groups == 2)
        for (int r = 0; r < R; ++r) acc[j][r] = _mm256_fmadd_ps(sw8[j], _mm256_loadu_ps(cx + (g0 / 8 * R + r) * 8), acc[j][r]);
      if constexpr (R == 1) sw8[j] = _mm256_mul_ps(sw8[j], _mm256_loadu_ps(sc + g0));
    }
    for (Index u = 0; u < 8 / F::groups && g0 + F::groups * u < G; ++u) {
      const Index g = g0 + F::groups * u, t = g / F::groups;
      const bool whole = g + F::groups <= G;
      const __m256i lanes = F::groups == 2 ? _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1) : _mm256_setzero_si256();
      const __m256i spread = _mm256_add_epi32(lanes, _mm256_set1_epi32(int(F::groups * u)));
      const std::int8_t* xt = xq + t * R * step_values;
      const float* st = s + t * R * 8;
      for (int j = 0; j < J; ++j) {
        const typename F::W w = F::load(m, j0 + j, g, whole);
        const __m256 sw = _mm256_permutevar8x32_ps(sw8[j], spread);
        for (int r = 0; r < R; ++r) {
          const __m256 scale = R == 1 ? sw : _mm256_mul_ps(sw, _mm256_loadu_ps(st + r * 8));
          acc[j][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(F::dot(w, xt + r * step_values)), scale, acc[j][r]);
        }
      }
    }
  }
  for (int j = 0; j < J; ++j)
    for (int r = 0; r < R; ++r) {
      const float v = hsum256(acc[j][r]);
      float& out = y[r * ldy + j0 + j];
      out = add ? out + v : v;
    }
}

template <class F, int R>
void rows_avx2_int_as(const QuantizedMatrix& m, const BytewiseActivations& a, Index p, float* y, Index ldy, bool add,
                      Index begin, Index end) {
  constexpr int J = R == 1 ? 4 : R == 2 ? 2 : 1;
  Index j = begin;
  for (; j + J <= end; j += J) block_avx2_int<F, J, R>(m, a, p, y, ldy, add, j);
  for (; j < end; ++j) block_avx2_int<F, 1, R>(m, a, p, y, ldy, add, j);
}
template <int R>
void rows_avx2_int_r(const QuantizedMatrix& m, const BytewiseActivations& a, Index p, float* y, Index ldy, bool add,
                     Index begin, Index end) {
  if (m.q4) return rows_avx2_int_as<Avx2Q4, R>(m, a, p, y, ldy, add, begin, end);
  rows_avx2_int_as<Avx2Q8, R>(m, a, p, y, ldy, add, begin, end);
}
/// Output rows [begin, end) for the R ≤ 8 prepared rows of x of the panel starting at row r0 (a multiple of 8).
inline void rows_avx2_int(const QuantizedMatrix& m, const BytewiseActivations& a, Index r0, Index R, float* y, Index ldy,
                          bool add, Index begin, Index end) {
  return with_rows(R, [&](auto n) { rows_avx2_int_r<decltype(n)::value>(m, a, r0 / 8, y, ldy, add, begin, end); });
}
#endif

#if defined(__AVX512F__) && defined(__AVX512BW__)
/// One whole chunk of 32 activations quantised as core/weight_format.hpp's quantize_activation_chunk, bit for bit
/// (the same IEEE operations; the conversion rounds to nearest even as std::nearbyint does): values 0–15 in lo,
/// 16–31 in hi, and the scale.
inline float quantize_chunk_avx512(const float* x, __m128i& lo, __m128i& hi) {
  const __m512 a = _mm512_loadu_ps(x), b = _mm512_loadu_ps(x + 16);
  const __m512 zero = _mm512_setzero_ps();  // x − x is 0 for a finite x, NaN for an infinity or a NaN
  if (_mm512_cmp_ps_mask(_mm512_sub_ps(a, a), zero, _CMP_NEQ_UQ) | _mm512_cmp_ps_mask(_mm512_sub_ps(b, b), zero, _CMP_NEQ_UQ)) {
    lo = hi = _mm_setzero_si128();
    return std::numeric_limits<float>::quiet_NaN();
  }
  const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
  const __m512 inv = _mm512_set1_ps(amax > 0 ? 127.0f / amax : 0.0f);
  lo = _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(a, inv)));
  hi = _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(b, inv)));
  return amax / 127.0f;
}
#endif

/// R rows of n activations replaced by the values int8 activations stand for (s · q): what every path but the
/// integer kernels multiplies when the activations are int8 (the long prefill's GEMM, AVX2, the scalar reference).
inline void round_activation_rows(float* x, Index R, Index n) {
#if defined(__AVX512F__) && defined(__AVX512BW__)
  if (n % kActivationChunk == 0) {
    for (Index r = 0; r < R; ++r)
      for (Index c = 0; c < n; c += kActivationChunk) {
        float* v = x + r * n + c;
        __m128i lo, hi;
        const __m512 s = _mm512_set1_ps(quantize_chunk_avx512(v, lo, hi));
        _mm512_storeu_ps(v, _mm512_mul_ps(s, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(lo))));
        _mm512_storeu_ps(v + 16, _mm512_mul_ps(s, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(hi))));
      }
    return;
  }
#elif defined(XTR_QUANTIZED_AVX2_INT)
  if (n % kActivationChunk == 0) {
    alignas(32) std::int8_t q[kActivationChunk];
    for (Index r = 0; r < R; ++r)
      for (Index c = 0; c < n; c += kActivationChunk) {
        float* v = x + r * n + c;
        const __m256 s = _mm256_set1_ps(quantize_chunk_avx2(v, q));
        for (Index k = 0; k < kActivationChunk; k += 8)
          _mm256_storeu_ps(v + k, _mm256_mul_ps(s, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(
                                                      _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + k))))));
      }
    return;
  }
#endif
  round_activations(x, R, n);
}

#if defined(XTR_QUANTIZED_VNNI)
/// int8 activations laid out for the integer kernels, R rows, each padded to whole steps (zeros) — a step is 64
/// values (two chunks) against int8 weights, 128 (four chunks) against 4-bit ones:
///   q:    q8: q + 128 as unsigned bytes in row order (vpdpbusd's unsigned operand against the signed weights; the
///         kernel starts each lane from −128 · Σw); q4: the signed values, per step the first halves (values 0–15) of
///         its four chunks, then their second halves — the order of the low and high nibbles (q + 8, unsigned) of 64
///         bytes of packed weights;
///   corr: q4 only: per step, −8 times the sum of the values each 32-bit lane multiplies (turns the nibbles into q);
///   s:    per step, each chunk's scale repeated over the lanes its products land in (8 for q8, 4 for q4);
///   sc:   each chunk's scale once, the row padded to whole blocks of 16 chunks (zeros).
struct IntegerActivations {
  std::vector<std::int8_t> q;
  std::vector<float> s, sc;
  std::vector<std::int32_t> corr;
  Index steps = 0;   // per row
  Index chunks = 0;  // per row in sc
  [[nodiscard]] Index q_stride(bool q4) const { return steps * (q4 ? 128 : 64); }
};

/// Prepares R rows of m.in activations (m.in a multiple of 32) for the kernels of m's format.
inline void prepare_integer_activations(const QuantizedMatrix& m, const float* x, Index R, IntegerActivations& a) {
  const bool q4 = m.q4 != nullptr;
  const Index step = q4 ? 128 : 64, chunks = m.in / kActivationChunk;
  a.steps = (m.in + step - 1) / step;
  a.chunks = (chunks + 15) / 16 * 16;
  a.q.assign(std::size_t(R * a.steps * step), q4 ? 0 : std::int8_t(-128));  // q8: +128 as unsigned bytes
  a.s.assign(std::size_t(R * a.steps * 16), 0.0f);
  a.sc.assign(std::size_t(R * a.chunks), 0.0f);
  if (q4) a.corr.resize(std::size_t(R * a.steps * 16));
  const __m512i ones = _mm512_set1_epi8(1);
  for (Index r = 0; r < R; ++r) {
    std::int8_t* q = a.q.data() + r * a.steps * step;
    float* s = a.s.data() + r * a.steps * 16;
    for (Index c = 0; c < chunks; ++c) {
      __m128i lo, hi;
      const float scale = quantize_chunk_avx512(x + r * m.in + c * kActivationChunk, lo, hi);
      a.sc[std::size_t(r * a.chunks + c)] = scale;
      if (q4) {  // chunk c is the (c % 4)-th of step c / 4
        const Index at = (c / 4) * 128 + (c % 4) * 16;
        _mm_storeu_si128(reinterpret_cast<__m128i*>(q + at), lo);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(q + at + 64), hi);
        for (int l = 0; l < 4; ++l) s[(c / 4) * 16 + (c % 4) * 4 + l] = scale;
      } else {
        const __m128i bias = _mm_set1_epi8(char(0x80));  // q + 128 = q ^ 0x80 as an unsigned byte
        _mm_storeu_si128(reinterpret_cast<__m128i*>(q + c * 32), _mm_xor_si128(lo, bias));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(q + c * 32 + 16), _mm_xor_si128(hi, bias));
        for (int l = 0; l < 8; ++l) s[(c / 2) * 16 + (c % 2) * 8 + l] = scale;
      }
    }
    if (q4)  // −8 · (the sum of each lane's four low-half values and four high-half values)
      for (Index t = 0; t < a.steps; ++t) {
        const std::int8_t* p = q + t * step;
        __m512i sum = _mm512_dpbusd_epi32(_mm512_setzero_si512(), ones, _mm512_loadu_si512(p));
        sum = _mm512_dpbusd_epi32(sum, ones, _mm512_loadu_si512(p + 64));
        _mm512_storeu_si512(a.corr.data() + (r * a.steps + t) * 16, _mm512_mullo_epi32(sum, _mm512_set1_epi32(-8)));
      }
  }
}

/// The 16 scales of groups g … g + 15 of a row (fewer at the row's end: zeros), as floats.
inline __m512 sixteen_scales(const std::uint16_t* row, Index g, Index G) {
  if (g + 16 <= G) return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + g)));
  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(__mmask16((1u << (G - g)) - 1), row + g));
}

/// Bytes [0, n) of 64 (a load's mask; n ≤ 64).
inline __mmask64 first_bytes(Index n) { return n >= 64 ? ~__mmask64{0} : (__mmask64{1} << n) - 1; }

/// q4 weights × int8 activations, a step of 128 values (four groups): the 64 packed bytes give the low nibbles
/// (first halves of the four groups) and the high ones (second halves), unsigned, each multiplied with the
/// activations laid out to match (two vpdpbusd); lanes 4k … 4k + 3 hold group k's products.
struct VnniQ4 {
  static constexpr Index groups = 4;
  static constexpr bool corrected = true;  // lanes start from the activations' correction
  struct W {
    __m512i lo, hi;
  };
  struct X {
    __m512i lo, hi;
  };
  static W load(const QuantizedMatrix& m, Index row, Index g, bool whole, __mmask64 bytes) {
    const std::uint8_t* p = m.q4 + row * (m.in / 2) + g * 16;
    const __m512i v = whole ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi8(bytes, p);
    const __m512i nibble = _mm512_set1_epi8(0x0F);
    return {_mm512_and_si512(v, nibble), _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble)};
  }
  static X load_x(const std::int8_t* x) { return {_mm512_loadu_si512(x), _mm512_loadu_si512(x + 64)}; }
  static __m512i dot(__m512i corr, const W& w, const X& x) {
    return _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(corr, w.lo, x.lo), w.hi, x.hi);
  }
};

/// int8 weights × int8 activations, a step of 64 values (two groups): the activations + 128 (unsigned) times the
/// weights (signed), one vpdpbusd started from −128 · Σw of each lane (the activations' correction is not used);
/// lanes 8k … 8k + 7 hold group k's products.
struct VnniQ8 {
  static constexpr Index groups = 2;
  static constexpr bool corrected = false;
  struct W {
    __m512i w, start;
  };
  struct X {
    __m512i x;
  };
  static W load(const QuantizedMatrix& m, Index row, Index g, bool whole, __mmask64 bytes) {
    const std::int8_t* p = m.q8 + row * m.in + g * 32;
    const __m512i v = whole ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi8(bytes, p);
    const __m512i sum = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(char(0x80)), v);
    return {v, _mm512_sub_epi32(_mm512_setzero_si512(), sum)};
  }
  static X load_x(const std::int8_t* x) { return {_mm512_loadu_si512(x)}; }
  static __m512i dot(__m512i, const W& w, const X& x) { return _mm512_dpbusd_epi32(w.start, x.x, w.w); }
};

/// One row of x (decoding a single sequence): J rows of W with the integer dot products of format F, blocks of 16
/// groups at a time. Each lane's integer sum (started from the activations' correction where F uses one) is converted
/// and scaled by its group's weight scale × activation scale; the 16 weight scales of a block are read at once and
/// multiplied by the activation scales once per block, then spread over the lanes of each step by a permutation.
template <class F, int J>
void block_vnni(const QuantizedMatrix& m, const IntegerActivations& a, Index r0, float* y, Index ldy, bool add,
                Index j0) {
  constexpr Index step_values = 32 * F::groups;
  const Index G = m.in / 32;
  const __m512i spread = F::groups == 4 ? _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3)
                                        : _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
  const std::int8_t* xq = a.q.data() + r0 * a.steps * step_values;
  const std::int32_t* xc = F::corrected ? a.corr.data() + r0 * a.steps * 16 : nullptr;
  __m512 acc[J][1];
  for (int j = 0; j < J; ++j) acc[j][0] = _mm512_setzero_ps();
  for (Index g0 = 0; g0 < G; g0 += 16) {
    __m512 sw16[J];
    const __m512 sx16 = _mm512_loadu_ps(a.sc.data() + r0 * a.chunks + g0);
    for (int j = 0; j < J; ++j) sw16[j] = _mm512_mul_ps(sixteen_scales(m.scales + (j0 + j) * G, g0, G), sx16);
    const bool whole = g0 + 16 <= G;
    for (Index u = 0; u < 16 / F::groups && g0 + F::groups * u < G; ++u) {
      const Index g = g0 + F::groups * u, t = g / F::groups;
      const __mmask64 bytes = first_bytes(64 * (G - g) / F::groups);
      const __m512i lanes = _mm512_add_epi32(spread, _mm512_set1_epi32(int(F::groups * u)));
      const typename F::X x = F::load_x(xq + t * step_values);
      const __m512i corr = F::corrected ? _mm512_loadu_si512(xc + t * 16) : _mm512_setzero_si512();
      for (int j = 0; j < J; ++j) {
        const typename F::W w = F::load(m, j0 + j, g, whole, bytes);
        acc[j][0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(F::dot(corr, w, x)), _mm512_permutexvar_ps(lanes, sw16[j]),
                                    acc[j][0]);
      }
    }
  }
  store_sums<J, 1>(acc, y, ldy, add, j0);
}

/// Several rows of x (R ≥ 2): VnniQ4's products for J rows of W, a step at a time, each step reading its four weight
/// scales (the accumulators fill the registers, so no block of scales is kept) and multiplying them by the
/// activations' scales, repeated over the lanes.
template <int J, int R>
void block_vnni_q4(const QuantizedMatrix& m, const IntegerActivations& a, Index r0, float* y, Index ldy, bool add,
                   Index j0) {
  const Index G = m.in / 32, in = m.in, qs = a.q_stride(true);
  const __m512i nibble = _mm512_set1_epi8(0x0F);
  const __m512i quarter = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  __m512 acc[J][R];
  for (int j = 0; j < J; ++j)
    for (int r = 0; r < R; ++r) acc[j][r] = _mm512_setzero_ps();
  for (Index t = 0; t < a.steps; ++t) {
    const Index g = 4 * t, groups = std::min<Index>(4, G - g);
    const __mmask64 bytes = groups == 4 ? ~__mmask64{0} : (__mmask64{1} << (16 * groups)) - 1;
    const __mmask8 scales = __mmask8((1u << groups) - 1);
    __m512i lo[J], hi[J];
    __m512 sw[J];
    for (int j = 0; j < J; ++j) {
      const __m512i v = _mm512_maskz_loadu_epi8(bytes, m.q4 + ((j0 + j) * in + g * 32) / 2);
      lo[j] = _mm512_and_si512(v, nibble);
      hi[j] = _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble);
      sw[j] = _mm512_permutexvar_ps(quarter, _mm512_castps128_ps512(_mm_cvtph_ps(_mm_maskz_loadu_epi16(scales, m.scales + (j0 + j) * G + g))));
    }
    for (int r = 0; r < R; ++r) {
      const std::int8_t* xq = a.q.data() + (r0 + r) * qs + t * 128;
      const __m512i xlo = _mm512_loadu_si512(xq), xhi = _mm512_loadu_si512(xq + 64);
      const __m512i corr = _mm512_loadu_si512(a.corr.data() + ((r0 + r) * a.steps + t) * 16);
      const __m512 sx = _mm512_loadu_ps(a.s.data() + ((r0 + r) * a.steps + t) * 16);
      for (int j = 0; j < J; ++j) {
        const __m512i d = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(corr, lo[j], xlo), hi[j], xhi);
        acc[j][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_mul_ps(sw[j], sx), acc[j][r]);
      }
    }
  }
  store_sums<J, R>(acc, y, ldy, add, j0);
}

/// Several rows of x: VnniQ8's products, as block_vnni_q4.
template <int J, int R>
void block_vnni_q8(const QuantizedMatrix& m, const IntegerActivations& a, Index r0, float* y, Index ldy, bool add,
                   Index j0) {
  const Index G = m.in / 32, in = m.in, qs = a.q_stride(false);
  const __m512i bias = _mm512_set1_epi8(char(0x80));
  const __m512i halves = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
  __m512 acc[J][R];
  for (int j = 0; j < J; ++j)
    for (int r = 0; r < R; ++r) acc[j][r] = _mm512_setzero_ps();
  for (Index t = 0; t < a.steps; ++t) {
    const Index g = 2 * t, groups = std::min<Index>(2, G - g);
    const __mmask64 bytes = groups == 2 ? ~__mmask64{0} : (__mmask64{1} << 32) - 1;
    const __mmask8 scales = __mmask8((1u << groups) - 1);
    __m512i w[J], start[J];
    __m512 sw[J];
    for (int j = 0; j < J; ++j) {
      w[j] = _mm512_maskz_loadu_epi8(bytes, m.q8 + (j0 + j) * in + g * 32);
      start[j] = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_dpbusd_epi32(_mm512_setzero_si512(), bias, w[j]));
      sw[j] = _mm512_permutexvar_ps(halves, _mm512_castps128_ps512(_mm_cvtph_ps(_mm_maskz_loadu_epi16(scales, m.scales + (j0 + j) * G + g))));
    }
    for (int r = 0; r < R; ++r) {
      const __m512i xq = _mm512_loadu_si512(a.q.data() + (r0 + r) * qs + t * 64);
      const __m512 sx = _mm512_loadu_ps(a.s.data() + ((r0 + r) * a.steps + t) * 16);
      for (int j = 0; j < J; ++j) {
        const __m512i d = _mm512_dpbusd_epi32(start[j], xq, w[j]);
        acc[j][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_mul_ps(sw[j], sx), acc[j][r]);
      }
    }
  }
  store_sums<J, R>(acc, y, ldy, add, j0);
}

template <int R>
void rows_vnni_as(const QuantizedMatrix& m, const IntegerActivations& a, Index r0, float* y, Index ldy, bool add,
                  Index begin, Index end) {
  constexpr int J = R <= 3 ? 4 : 2;
  Index j = begin;
  if constexpr (R == 1) {
    if (m.q4) {
      for (; j + J <= end; j += J) block_vnni<VnniQ4, J>(m, a, r0, y, ldy, add, j);
      for (; j < end; ++j) block_vnni<VnniQ4, 1>(m, a, r0, y, ldy, add, j);
    } else {
      for (; j + J <= end; j += J) block_vnni<VnniQ8, J>(m, a, r0, y, ldy, add, j);
      for (; j < end; ++j) block_vnni<VnniQ8, 1>(m, a, r0, y, ldy, add, j);
    }
  } else if (m.q4) {
    for (; j + J <= end; j += J) block_vnni_q4<J, R>(m, a, r0, y, ldy, add, j);
    for (; j < end; ++j) block_vnni_q4<1, R>(m, a, r0, y, ldy, add, j);
  } else {
    for (; j + J <= end; j += J) block_vnni_q8<J, R>(m, a, r0, y, ldy, add, j);
    for (; j < end; ++j) block_vnni_q8<1, R>(m, a, r0, y, ldy, add, j);
  }
}
/// Output rows [begin, end) for R ≤ 8 prepared rows of x starting at row r0.
inline void rows_vnni(const QuantizedMatrix& m, const IntegerActivations& a, Index r0, Index R, float* y, Index ldy,
                      bool add, Index begin, Index end) {
  return with_rows(R, [&](auto n) { rows_vnni_as<decltype(n)::value>(m, a, r0, y, ldy, add, begin, end); });
}
#endif

/// Output rows [begin, end) of W for R ≤ 8 rows of x on one path.
inline void rows(Isa isa, const QuantizedMatrix& m, const float* x, Index R, float* y, Index ldy, bool add, Index begin,
                 Index end) {
  switch (isa) {
#if defined(__AVX512F__) && defined(__AVX512BW__)
    case Isa::avx512:
    case Isa::avx512_vnni:  // float activations
      return with_rows(R, [&](auto n) { rows_avx512<decltype(n)::value>(m, x, y, ldy, add, begin, end); });
#endif
#if defined(__AVX2__) && defined(__FMA__)
    case Isa::avx2:
      return with_rows(R, [&](auto n) {
        constexpr int rows = decltype(n)::value;
        if (m.f32) return rows_avx2_dense_as<rows, Packed::f32>(m, x, y, ldy, add, begin, end);
        if (m.bf16) return rows_avx2_dense_as<rows, Packed::bf16>(m, x, y, ldy, add, begin, end);
        rows_avx2<rows>(m, x, y, ldy, add, begin, end);
      });
#endif
    default: return rows_scalar(m, x, R, y, ldy, add, begin, end);
  }
}
}  // namespace detail

/// Y (R rows, ldy apart) ← (or +=, with `add`) X (R rows of m.in floats, contiguous) Wᵀ with the quantised (or
/// bfloat16, or float) W, any R ≥ 1, on the given path (best_isa() unless a test asks for another). Threads take
/// blocks of W's rows as they ask for them, blocks small enough to stay in the L1/L2 cache while every 8 rows of x
/// pass over them, so the matrix is read from memory once however many rows x has. With `int8_activations` the rows
/// of x are quantised per chunk of 32 (core/weight_format.hpp) first (on the avx2 path by the threads together): the
/// avx512_vnni and avx2 paths multiply them as integers against int8 / q4 weights in groups of 32; the others
/// multiply the values they stand for. After each block the thread calls tail(begin, end) on the columns
/// [begin, end) of Y it wrote (a GEMM's elementwise epilogue, run while they are in that thread's cache and without
/// another parallel region).
struct NoTail {
  void operator()(Index, Index) const {}
};
template <class Tail = NoTail>
void gemv(const QuantizedMatrix& m, const float* x, Index R, float* y, Index ldy, bool add = false,
          Isa isa = best_isa(), bool int8_activations = false, const Tail& tail = {}) {
  require(R >= 1, "quantized gemv takes at least one row, got ", R);
  if (!(m.bf16 || m.f32)) {
    require(m.group >= 2 && m.in % m.group == 0, "quantized gemv: rows of ", m.in, " values are not whole groups of ",
            m.group);
    if (m.group % 32 != 0) isa = Isa::scalar;  // the vector paths take groups of 32, 64, …
  }
  // rows of W per block: about 48 KiB of the matrix as stored (each 8 rows of x pass over it while it is in the L1 /
  // L2 cache), and at least 4 blocks a thread, so that a thread the machine slows takes fewer of them; a multiple of
  // 4 rows (the kernels' widest block of W's rows; the panel kernel's: 6), at least that
  const Index row_bytes = m.f32 ? 4 * m.in : m.bf16 ? 2 * m.in : m.q8 ? m.in : m.in / 2;
  const Index cached = (Index(48) << 10) / std::max<Index>(1, row_bytes),
              balanced = (m.out + 4 * max_threads() - 1) / (4 * max_threads());
  const auto rows_per_block = [&](Index multiple) {
    return std::max(multiple, (std::min(cached, balanced) + multiple - 1) / multiple * multiple);
  };
  const Index block = rows_per_block(4);
  // run(rows8, n_first, first): on each block of W, rows8(r0, rows, y, begin, end) on ≤ 8 rows of x from row r0 at a
  // time, then tail(begin, end), after first(begin, end) on every thread's share of the first n_first rows of x (0:
  // nothing to wait for)
  const auto nothing_first = [](Index, Index) {};
  const auto run = [&](auto&& rows8, Index n_first, auto&& first) {
    parallel_blocks_after(n_first, first, m.out, block, 2 * R * m.in, [&](Index begin, Index end) {
      for (Index r = 0; r < R; r += 8) rows8(r, std::min<Index>(8, R - r), y + r * ldy, begin, end);
      tail(begin, end);
    });
  };
  if (int8_activations) {
#if defined(XTR_QUANTIZED_VNNI)
    if (isa == Isa::avx512_vnni && (m.q8 || m.q4) && m.group == 32) {
      thread_local detail::IntegerActivations scratch;  // the calling thread's, reused across calls
      detail::prepare_integer_activations(m, x, R, scratch);
      const detail::IntegerActivations* a = &scratch;  // the workers read the caller's (a lambda does not capture
                                                       // a thread_local: each thread would name its own)
      run([&](Index r0, Index rows, float* yr, Index begin, Index end) {
        detail::rows_vnni(m, *a, r0, rows, yr, ldy, add, begin, end);
      }, 0, nothing_first);
      return;
    }
#endif
#if defined(XTR_QUANTIZED_AVX2_INT)
    if (integer_kernel_takes_any_rows(isa, m.group) && (m.q8 || m.q4)) {
      thread_local detail::BytewiseActivations scratch;
      detail::shape_bytewise_activations(m, R, scratch);
      detail::BytewiseActivations* a = &scratch;
      // the threads quantise their shares of the rows of x, wait for one another, then multiply
      run([&](Index r0, Index rows, float* yr, Index begin, Index end) {
        detail::rows_avx2_int(m, *a, r0, rows, yr, ldy, add, begin, end);
      }, R, [&](Index begin, Index end) { detail::fill_bytewise_activations(m, x, R, begin, end, *a); });
      return;
    }
#endif
    thread_local std::vector<float> rounded;
    rounded.assign(x, x + R * m.in);
    detail::round_activation_rows(rounded.data(), R, m.in);
    x = rounded.data();
  }
#if defined(XTR_QUANTIZED_AVX2_PANELS)
  if ((m.bf16 || m.f32) && m.in > 0 && panel_kernel_takes(isa, R)) {
    thread_local detail::Panels scratch;
    detail::shape_panels(R, m.in, scratch);
    detail::Panels* p = &scratch;
    // the threads transpose their shares of the rows of x into panels, wait for one another, then multiply
    // (each thread told the block it takes next, whose first rows it prefetches while it finishes this one)
    parallel_blocks_ahead(
        p->rows, [&](Index begin, Index end) { detail::fill_panels(x, m.in, begin, end, *p); }, m.out,
        rows_per_block(6), 2 * R * m.in, [&](Index begin, Index end, Index next_begin, Index next_end) {
          if (m.f32) {
            detail::rows_avx2_panels<detail::Packed::f32>(m, *p, x, R, y, ldy, add, begin, end, next_begin, next_end);
          } else {
            detail::rows_avx2_panels<detail::Packed::bf16>(m, *p, x, R, y, ldy, add, begin, end, next_begin, next_end);
          }
          tail(begin, end);
        });
    return;
  }
#endif
  if (isa == Isa::avx512_vnni) isa = Isa::avx512;
  run([&](Index r0, Index rows, float* yr, Index begin, Index end) {
    detail::rows(isa, m, x + r0 * m.in, rows, yr, ldy, add, begin, end);
  }, 0, nothing_first);
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
#if defined(XTR_QUANTIZED_VNNI)
  v.push_back(Isa::avx512_vnni);
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
        const float s = detail::scale_at(m.scales + j * G + g);
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
