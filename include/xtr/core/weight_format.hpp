#pragma once
// Weights for decoding in fewer bytes: decoding one token reads every weight once, so its speed is the memory
// bandwidth divided by the bytes per weight. A WeightCopy holds the parameters of a store in one format:
//   bf16  the upper half of each float, rounded to nearest even (2 bytes)
//   int8  per group of `group` consecutive values of a row: scale s = max|w| / 127 rounded up to a half (IEEE
//         binary16, as ggml keeps its scales), q = round(w / s) in [-127, 127] (1 byte + 2/group bytes of scale)
//   q4    per group: s = max|w| / 7 rounded up to a half, q = round(w / s) in [-7, 7], stored as q + 8 in a nibble; a
//         group of 32 is 16 bytes, byte k holding values k (low nibble) and k + 16 (high nibble), as ggml's Q4_0
//         (0.5 byte + 2/group)
// and w ≈ s · q. Rounding the scale up keeps |w / s| ≤ 127 (7), so the error stays within s / 2 per value; a group
// whose max|w| / 127 (7) exceeds the largest half, 65504, cannot be quantised (an error names the parameter).
// Quantised entries are the 2-D parameters whose rows hold a whole number of groups; the GEMMs read those from the
// copy and dequantize inside the dot product (backend/cpu/quantized.hpp), never widening the matrix.
// Elements keep the store's layout (q8 and bf16: element i of the store; q4 and the scales: entry by entry, in the
// store's order), so a read spanning adjacent entries (q, k, v) stays one contiguous block.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "xtr/core/error.hpp"
#include "xtr/core/half.hpp"
#include "xtr/core/parameters.hpp"

namespace xtr {

enum class WeightFormat { f32, bf16, int8, q4 };

[[nodiscard]] constexpr std::string_view format_name(WeightFormat f) {
  switch (f) {
    case WeightFormat::f32: return "f32";
    case WeightFormat::bf16: return "bf16";
    case WeightFormat::int8: return "int8";
    case WeightFormat::q4: return "q4";
  }
  return "?";
}
/// The format named `text`, or nullopt.
[[nodiscard]] inline std::optional<WeightFormat> find_weight_format(std::string_view text) {
  for (auto f : {WeightFormat::f32, WeightFormat::bf16, WeightFormat::int8, WeightFormat::q4})
    if (format_name(f) == text) return f;
  return std::nullopt;
}
[[nodiscard]] inline WeightFormat parse_weight_format(std::string_view text) {
  if (const auto f = find_weight_format(text)) return *f;
  throw Error(detail::cat("xtr: unknown weight format '", text, "' (f32, bf16, int8, q4)"));
}
/// What a KV cache keeps keys and values in: the model's scalar type (f32: float, or double for a double model), or
/// IEEE half precision (f16, as llama.cpp's default cache): half the bytes each decoding step's attention reads, the
/// values rounded to 11 significant bits (relative 2^-12). Written by TransformerWrapper::use_kv_format(); f32 unless
/// asked (x-transformers keeps the model's dtype).
enum class KVFormat { f32, f16 };

[[nodiscard]] constexpr std::string_view kv_format_name(KVFormat f) { return f == KVFormat::f16 ? "f16" : "f32"; }
[[nodiscard]] inline KVFormat parse_kv_format(std::string_view text) {
  for (auto f : {KVFormat::f32, KVFormat::f16})
    if (kv_format_name(f) == text) return f;
  throw Error(detail::cat("xtr: unknown KV cache format '", text, "' (f32, f16)"));
}

/// What the activations entering a GEMM over int8 / q4 weights are: float (the product is exactly that of the
/// dequantised weights, to float rounding), or int8 per chunk of 32 values of a row (llama.cpp's Q8_0): then the dot
/// product is an integer one (AVX512-VNNI's vpdpbusd, 64 multiply-adds an instruction) scaled once per group.
/// `automatic`: int8 when the build has the VNNI kernel and the weights are int8 or q4, float otherwise;
/// XTR_DECODE_ACTIVATIONS=auto|f32|int8 overrides it.
enum class ActivationFormat { automatic, f32, int8 };

[[nodiscard]] constexpr std::string_view activation_name(ActivationFormat a) {
  return a == ActivationFormat::int8 ? "int8" : a == ActivationFormat::f32 ? "f32" : "auto";
}
[[nodiscard]] inline std::optional<ActivationFormat> find_activation_format(std::string_view text) {
  for (auto a : {ActivationFormat::automatic, ActivationFormat::f32, ActivationFormat::int8})
    if (activation_name(a) == text) return a;
  return std::nullopt;
}
[[nodiscard]] inline ActivationFormat parse_activation_format(std::string_view text) {
  if (const auto a = find_activation_format(text)) return *a;
  throw Error(detail::cat("xtr: unknown activation format '", text, "' (auto, f32, int8)"));
}
/// Whether this build's decoding kernels multiply int8 activations with integer dot products: AVX512-VNNI, or AVX2's
/// byte products where AVX2 is the widest path (the AVX-512 kernels without VNNI multiply floats); -march decides.
[[nodiscard]] constexpr bool has_integer_dot_products() {
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512VNNI__)
  return true;
#elif defined(__AVX512F__) && defined(__AVX512BW__)
  return false;
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
  return true;
#else
  return false;
#endif
}
/// The activations decoding uses with `weights` when the caller asked for `requested`: f32 for f32 and bf16 weights
/// (nothing to gain), the request otherwise, `automatic` resolved by XTR_DECODE_ACTIVATIONS and then by the build.
[[nodiscard]] inline ActivationFormat resolve_activations(WeightFormat weights, ActivationFormat requested,
                                                          const char* override_env = "XTR_DECODE_ACTIVATIONS") {
  if (weights != WeightFormat::int8 && weights != WeightFormat::q4) return ActivationFormat::f32;
  if (requested != ActivationFormat::automatic) return requested;
  const char* env = override_env ? std::getenv(override_env) : nullptr;
  if (env && *env && std::string_view(env) != "auto") {
    const auto a = find_activation_format(env);
    if (!a) throw Error(detail::cat("xtr: ", override_env, "='", env, "' is not an activation format (auto, f32, int8)"));
    return *a;
  }
  return has_integer_dot_products() ? ActivationFormat::int8 : ActivationFormat::f32;
}

/// int8 activations: each row in chunks of kActivationChunk values (the last may be shorter), s = max|x| / 127 and
/// q = x · (127 / max|x|) rounded to nearest even, in [−127, 127] (all 0, s = 0, for a zero chunk; s = NaN, q = 0 for
/// a chunk holding a NaN or an infinity, so that it propagates); x ≈ s · q. The CPU's vector quantiser
/// (backend/cpu/quantized.hpp) gives the same bits.
inline constexpr std::int64_t kActivationChunk = 32;
inline float quantize_activation_chunk(const float* x, std::int64_t n, std::int8_t* q) {
  float amax = 0;
  bool finite = true;
  for (std::int64_t k = 0; k < n; ++k) {
    finite = finite && std::isfinite(x[k]);
    amax = std::max(amax, std::fabs(x[k]));
  }
  if (!finite) {
    std::fill(q, q + n, std::int8_t{0});
    return std::numeric_limits<float>::quiet_NaN();
  }
  const float inv = amax > 0 ? 127.0f / amax : 0.0f;
  for (std::int64_t k = 0; k < n; ++k) q[k] = std::int8_t(std::nearbyint(x[k] * inv));
  return amax / 127.0f;
}
/// Rows of x (R rows of n values, contiguous) replaced by s · q, the values int8 activations stand for.
inline void round_activations(float* x, std::int64_t R, std::int64_t n) {
  std::int8_t q[kActivationChunk];
  for (std::int64_t r = 0; r < R; ++r)
    for (std::int64_t c = 0; c < n; c += kActivationChunk) {
      float* v = x + r * n + c;
      const std::int64_t len = std::min(kActivationChunk, n - c);
      const float s = quantize_activation_chunk(v, len, q);
      for (std::int64_t k = 0; k < len; ++k) v[k] = s * float(q[k]);
    }
}

/// Bytes per weight read while decoding (scales included).
[[nodiscard]] constexpr double bytes_per_weight(WeightFormat f, std::int64_t group = 32) {
  switch (f) {
    case WeightFormat::f32: return 4;
    case WeightFormat::bf16: return 2;
    case WeightFormat::int8: return 1 + 2.0 / double(group);  // a half-precision scale per group
    case WeightFormat::q4: return 0.5 + 2.0 / double(group);
  }
  return 4;
}

/// The last-level cache of this machine in bytes, as the OS reports it (L3, else L2; 32 MiB when unknown).
[[nodiscard]] inline std::int64_t last_level_cache_bytes() {
  static const std::int64_t bytes = [] {
    std::int64_t found = 0;
    for (int level = 3; level >= 1 && found <= 0; --level) {  // /sys/devices/system/cpu/cpu0/cache/index<i>
      for (int index = 0; index < 8; ++index) {
        const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index) + "/";
        std::ifstream level_file(dir + "level"), size_file(dir + "size");
        int l = 0;
        std::string size;
        if (!(level_file >> l) || l != level || !(size_file >> size) || size.empty()) continue;
        std::int64_t v = 0;
        std::size_t k = 0;
        while (k < size.size() && size[k] >= '0' && size[k] <= '9') v = v * 10 + (size[k++] - '0');
        const char unit = k < size.size() ? size[k] : 'B';
        v *= unit == 'K' ? 1024 : unit == 'M' ? 1024 * 1024 : unit == 'G' ? std::int64_t(1) << 30 : 1;
        found = std::max(found, v);
      }
    }
    return found > 0 ? found : std::int64_t(32) << 20;
  }();
  return bytes;
}

/// What KV-cached decoding reads when the user chose nothing: bfloat16 when the float weights exceed the last-level
/// cache (decoding then streams them from memory, and half the bytes is nearly twice the speed), float otherwise
/// (they stay in the cache and keep float's exact logits). XTR_DECODE_WEIGHTS=auto|f32|bf16|int8|q4 overrides it.
struct DecodeWeightsChoice {
  WeightFormat format = WeightFormat::f32;
  std::string reason;
};
/// The format alone (each decoding step asks; nothing is allocated unless the override is not a format).
[[nodiscard]] inline WeightFormat automatic_decode_format(std::int64_t weight_bytes,
                                                          std::int64_t cache_bytes = last_level_cache_bytes(),
                                                          const char* override_env = "XTR_DECODE_WEIGHTS") {
  const char* env = override_env ? std::getenv(override_env) : nullptr;
  if (env && *env && std::string_view(env) != "auto") {
    if (const auto f = find_weight_format(env)) return *f;
    throw Error(detail::cat("xtr: ", override_env, "='", env, "' is not a weight format (auto, f32, bf16, int8, q4)"));
  }
  return weight_bytes > cache_bytes ? WeightFormat::bf16 : WeightFormat::f32;
}
/// The format and why (what TransformerWrapper::decoding() prints).
[[nodiscard]] inline DecodeWeightsChoice automatic_decode_weights(std::int64_t weight_bytes,
                                                                  std::int64_t cache_bytes = last_level_cache_bytes(),
                                                                  const char* override_env = "XTR_DECODE_WEIGHTS") {
  const WeightFormat f = automatic_decode_format(weight_bytes, cache_bytes, override_env);
  const char* env = override_env ? std::getenv(override_env) : nullptr;
  if (env && *env && std::string_view(env) != "auto") return {f, detail::cat(override_env, "=", env)};
  const auto mib = [](std::int64_t b) {
    char text[32];
    std::snprintf(text, sizeof text, "%.1f MiB", double(b) / double(1 << 20));
    return std::string(text);
  };
  return {f, detail::cat("automatic: ", mib(weight_bytes), f == WeightFormat::bf16 ? " of float weights > "
                                                                                   : " of float weights <= ",
                         mib(cache_bytes), " last-level cache")};
}

/// One store's parameters in a decoding format. Build it with WeightCopy::make (or load it, io/quantized.hpp).
struct WeightCopy {
  static constexpr std::int64_t kDefaultGroup = 32;

  WeightFormat format = WeightFormat::f32;
  Index group = kDefaultGroup;
  ActivationFormat activations = ActivationFormat::f32;  // int8 / q4: what the GEMMs multiply them with (resolved)
  Index count = 0;                        // the store's scalars
  std::vector<std::uint16_t> bf16;        // bf16: every element, the store's layout
  std::vector<std::int8_t> q8;            // int8: every element, the store's layout (unquantised entries: 0)
  std::vector<std::uint8_t> q4;           // q4: quantised entries' rows, packed, entry after entry
  std::vector<std::uint16_t> scales;      // int8 / q4: one half per group of each quantised entry's rows, entry after
                                          // entry
  std::vector<Index> q4_offset, scale_offset;  // per store entry: where its rows start (-1: not quantised)
  std::vector<std::uint8_t> held;         // per store entry: GEMMs read it from the copy (1) or as float (0)
  std::uint64_t fingerprint = 0;          // of the values it was made from (stale() compares)

  [[nodiscard]] bool quantized() const { return format == WeightFormat::int8 || format == WeightFormat::q4; }
  [[nodiscard]] bool holds(int entry) const {
    return entry >= 0 && std::size_t(entry) < held.size() && held[std::size_t(entry)] != 0;
  }
  /// Bytes the copy occupies.
  [[nodiscard]] std::size_t bytes() const {
    return bf16.size() * 2 + q8.size() + q4.size() + scales.size() * sizeof(std::uint16_t);
  }

  /// Whether an entry of `shape` can be quantised with groups of `group` values along its rows.
  [[nodiscard]] static bool quantizable(const Shape& shape, Index group) {
    return shape.cols() >= group && shape.cols() % group == 0;
  }

  /// A sample of the values (4096 evenly spaced, and the count): a copy made from other values is stale. Training
  /// changes (nearly) every value, so a copy is not silently used after an optimizer step.
  template <class T>
  [[nodiscard]] static std::uint64_t fingerprint_of(const ParameterStore<T>& params) {
    const Index n = params.count();
    std::uint64_t h = 1469598103934665603ull ^ std::uint64_t(n);
    const Index samples = std::min<Index>(n, 4096);
    for (Index s = 0; s < samples; ++s) {
      const Index i = samples == n ? s : Index((__int128(s) * n) / samples);
      const float v = float(params.values().data()[i]);
      std::uint32_t bits;
      std::memcpy(&bits, &v, sizeof bits);
      h = (h ^ bits) * 1099511628211ull;
    }
    return h;
  }
  template <class T>
  [[nodiscard]] bool stale(const ParameterStore<T>& params) const {
    return count != params.count() || fingerprint != fingerprint_of(params);
  }

  /// The copy of `params` in `format`: every 2-D entry but those in `keep_float` (tables that are only gathered
  /// from, as embeddings, whose lookups read the float values) is held; int8 / q4 hold those whose rows are a whole
  /// number of groups (a GEMM reading another gets an error naming it).
  template <class T>
  [[nodiscard]] static WeightCopy make(const ParameterStore<T>& params, WeightFormat format, Index group = kDefaultGroup,
                                       const std::vector<int>& keep_float = {}) {
    require(group >= 2 && group <= 4096 && group % 2 == 0, "quantisation group ", group,
            " must be even and lie in [2, 4096]");
    WeightCopy c;
    c.format = format;
    c.group = group;
    c.count = params.count();
    c.fingerprint = fingerprint_of(params);
    const T* w = params.values().data();
    if (format == WeightFormat::f32) return c;
    c.lay_out(params, keep_float);
    if (format == WeightFormat::bf16) {
      c.bf16.resize(std::size_t(c.count));
      for (Index i = 0; i < c.count; ++i) c.bf16[std::size_t(i)] = detail::float_to_bf16_bits(float(w[i]));
      return c;
    }
    const auto& entries = params.entries();
    const int qmax = format == WeightFormat::int8 ? 127 : 7;
    for (std::size_t e = 0; e < entries.size(); ++e) {
      const auto& entry = entries[e];
      if (entry.alias_of >= 0 || c.scale_offset[e] < 0) continue;
      const Index groups = entry.shape.numel() / group;
      for (Index g = 0; g < groups; ++g) {
        const T* x = w + entry.offset + g * group;
        float amax = 0;
        for (Index k = 0; k < group; ++k) amax = std::max(amax, std::fabs(float(x[k])));
        require(std::isfinite(amax), "cannot quantise parameter '", entry.name, "': it holds a non-finite value");
        require(amax / float(qmax) <= detail::kHalfMax, "cannot quantise parameter '", entry.name, "': a group's max |w| ",
                amax, " needs a scale of ", amax / float(qmax), ", above the largest half-precision scale (",
                detail::kHalfMax, ")");
        const std::uint16_t bits = detail::float_to_half_bits(amax / float(qmax), true);
        const float s = detail::half_bits_to_float(bits);
        c.scales[std::size_t(c.scale_offset[e] + g)] = bits;
        const float inv = s > 0 ? 1.0f / s : 0.0f;
        auto q = [&](Index k) {
          return int(std::clamp(std::lround(float(x[k]) * inv), long(-qmax), long(qmax)));
        };
        if (format == WeightFormat::int8) {
          for (Index k = 0; k < group; ++k) c.q8[std::size_t(entry.offset + g * group + k)] = std::int8_t(q(k));
        } else {
          std::uint8_t* out = c.q4.data() + c.q4_offset[e] + g * group / 2;
          const Index half = group / 2;
          for (Index k = 0; k < half; ++k) out[k] = std::uint8_t((q(k) + 8) | ((q(k + half) + 8) << 4));
        }
      }
    }
    return c;
  }

  /// Where each quantisable entry's values and scales go (int8 / q4), and storage for them, zero-filled.
  template <class T>
  void lay_out(const ParameterStore<T>& params, const std::vector<int>& keep_float = {}) {
    const auto& entries = params.entries();
    q4_offset.assign(entries.size(), -1);
    scale_offset.assign(entries.size(), -1);
    held.assign(entries.size(), 0);
    for (std::size_t e = 0; e < entries.size(); ++e)
      held[e] = entries[e].alias_of < 0 && entries[e].shape.rank >= 2 &&
                std::find(keep_float.begin(), keep_float.end(), int(e)) == keep_float.end() &&
                (format == WeightFormat::bf16 || quantizable(entries[e].shape, group));
    for (std::size_t e = 0; e < entries.size(); ++e)
      if (entries[e].alias_of >= 0) held[e] = held[std::size_t(entries[e].alias_of)];
    if (format == WeightFormat::bf16 || format == WeightFormat::f32) return;
    Index q4_bytes = 0, n_scales = 0;
    for (std::size_t e = 0; e < entries.size(); ++e) {
      const auto& entry = entries[e];
      if (entry.alias_of >= 0 || !held[e]) continue;
      scale_offset[e] = n_scales;
      q4_offset[e] = q4_bytes;
      n_scales += entry.shape.numel() / group;
      q4_bytes += entry.shape.numel() / 2;
    }
    for (std::size_t e = 0; e < entries.size(); ++e)  // aliases read their target's rows
      if (entries[e].alias_of >= 0) {
        scale_offset[e] = scale_offset[std::size_t(entries[e].alias_of)];
        q4_offset[e] = q4_offset[std::size_t(entries[e].alias_of)];
      }
    scales.assign(std::size_t(n_scales), 0);
    q8.clear();
    q4.clear();
    if (format == WeightFormat::int8) q8.assign(std::size_t(count), 0);
    else q4.assign(std::size_t(q4_bytes), 0);
  }

  /// Element i of entry `entry` as the copy holds it (tests; the kernels never widen a matrix).
  template <class T>
  [[nodiscard]] float value(const ParameterStore<T>& params, int entry, Index i) const {
    const auto& e = params.entries()[std::size_t(entry)];
    if (!holds(entry)) return float(params.values().data()[e.offset + i]);
    switch (format) {
      case WeightFormat::f32: return float(params.values().data()[e.offset + i]);
      case WeightFormat::bf16: return detail::bf16_bits_to_float(bf16[std::size_t(e.offset + i)]);
      case WeightFormat::int8:
      case WeightFormat::q4: break;
    }
    if (scale_offset[std::size_t(entry)] < 0) return float(params.values().data()[e.offset + i]);
    const float s = detail::half_bits_to_float(scales[std::size_t(scale_offset[std::size_t(entry)] + i / group)]);
    if (format == WeightFormat::int8) return s * float(q8[std::size_t(e.offset + i)]);
    const Index g = i / group, k = i % group, half = group / 2;
    const std::uint8_t byte = q4[std::size_t(q4_offset[std::size_t(entry)] + g * half + k % half)];
    return s * float((k < half ? byte & 0xF : byte >> 4) - 8);
  }
};

}  // namespace xtr
