#pragma once
// IEEE 754 half precision (binary16) bits ↔ float, in software: the quantised weights' per-group scales (as ggml's
// Q4_0 / Q8_0 keep them), safetensors' F16 tensors and the f16 KV cache (xtr::Half). The kernels convert with F16C
// instructions where the build has them; these are the definition and the path everywhere else. Also bfloat16 (the
// upper half of a float): the bf16 weight copies and safetensors' BF16 tensors.
#include <bit>
#include <cmath>
#include <cstdint>

namespace xtr::detail {

/// The largest finite half.
inline constexpr float kHalfMax = 65504.0f;

inline float half_bits_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16, exp = (h >> 10) & 0x1Fu, mant = h & 0x3FFu;
  if (exp == 0) {  // zero or subnormal: mant · 2^-24
    const float f = std::ldexp(static_cast<float>(mant), -24);
    return sign ? -f : f;
  }
  const std::uint32_t bits = sign | (exp == 0x1F ? 0x7F800000u : (exp + 112) << 23) | (mant << 13);
  return std::bit_cast<float>(bits);
}

/// The half of a finite f with 0 ≤ f ≤ kHalfMax: the smallest half ≥ f (`up`, so that a scale never shrinks below
/// what its group needs) or the nearest, ties to even. Callers refuse larger values before converting.
inline std::uint16_t float_to_half_bits(float f, bool up) {
  const std::uint32_t u = std::bit_cast<std::uint32_t>(f);
  if ((u & 0x7FFFFFFFu) == 0) return 0;
  const int e = int((u >> 23) & 0xFFu) - 127;
  const std::uint32_t sig = (u & 0x7FFFFFu) | 0x800000u;  // 24 bits, the leading one explicit
  // a normal half keeps 11 significant bits (shift 13); a subnormal one counts units of 2^-24 (shift 13 + (-14 - e))
  const int shift = e >= -14 ? 13 : 13 + (-14 - e);
  std::uint32_t h = 0, rest = sig;
  if (shift < 32) {
    h = sig >> shift;
    rest = sig & ((std::uint32_t{1} << shift) - 1);
  }
  if (e >= -14) h = (std::uint32_t(e + 15) << 10) | (h & 0x3FFu);  // exponent and the 10 stored bits
  const std::uint32_t halfway = shift < 32 ? std::uint32_t{1} << (shift - 1) : 0;
  if (up ? rest != 0 : (shift < 32 && (rest > halfway || (rest == halfway && (h & 1u))))) ++h;  // a carry moves the exponent
  return std::uint16_t(h);
}

/// The nearest half to a finite f with |f| ≤ kHalfMax (ties to even), sign included: what F16C's vcvtps2ph gives.
inline std::uint16_t float_to_half_bits_nearest(float f) {
  const std::uint16_t sign = std::signbit(f) ? 0x8000u : 0u;
  return std::uint16_t(sign | float_to_half_bits(std::fabs(f), false));
}

/// bfloat16 bits → float: exact (the bits are a float's upper half).
inline float bf16_bits_to_float(std::uint16_t h) { return std::bit_cast<float>(std::uint32_t(h) << 16); }
/// float → bfloat16 bits, rounded to nearest even; a NaN stays a (quiet) NaN.
inline std::uint16_t float_to_bf16_bits(float f) {
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(f);
  if ((bits & 0x7F800000u) == 0x7F800000u && (bits & 0x7FFFFFu)) return std::uint16_t((bits >> 16) | 0x40);  // NaN
  return std::uint16_t((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}

}  // namespace xtr::detail

namespace xtr {

/// One IEEE binary16 value as stored (the f16 KV cache, layers/kv_cache.hpp): its bits. A distinct type, so that a
/// buffer of halves is never read as bfloat16 or integers.
struct Half {
  std::uint16_t bits;
};

}  // namespace xtr
