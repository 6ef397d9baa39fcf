#pragma once
// Counter-based random numbers: Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3").
// A value depends only on (seed, stream, index), never on call order, so every thread, every step and, later, every
// GPU thread draws the same numbers for the same element. No state advances; reproducibility is by construction.
#include <array>
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define XTR_HOST_DEVICE __host__ __device__
#else
#define XTR_HOST_DEVICE
#endif

namespace xtr {

/// Philox4x32-10: 128-bit counter, 64-bit key -> four 32-bit words.
struct Philox {
  using Words = std::array<std::uint32_t, 4>;

  XTR_HOST_DEVICE static Words block(Words counter, std::uint64_t key) {
    std::uint32_t k0 = static_cast<std::uint32_t>(key), k1 = static_cast<std::uint32_t>(key >> 32);
    for (int round = 0; round < 10; ++round) {
      const std::uint64_t p0 = std::uint64_t{0xD2511F53u} * counter[0];
      const std::uint64_t p1 = std::uint64_t{0xCD9E8D57u} * counter[2];
      counter = {static_cast<std::uint32_t>(p1 >> 32) ^ counter[1] ^ k0, static_cast<std::uint32_t>(p1),
                 static_cast<std::uint32_t>(p0 >> 32) ^ counter[3] ^ k1, static_cast<std::uint32_t>(p0)};
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    return counter;
  }
};

/// A stream of random numbers addressed by index: `uniform(i)` is draw first + i of stream (seed, stream). `first`
/// (0 unless set by from()) lets a part of a batch address its draws as the whole batch would: data-parallel ranks
/// draw the dropout masks of their rows of the global batch.
struct RandomStream {
  std::uint64_t seed = 0;
  std::uint64_t stream = 0;
  std::uint64_t first = 0;

  /// The same stream, with draw i of the result being draw first + offset + i of this one.
  [[nodiscard]] RandomStream from(std::uint64_t offset) const { return {seed, stream, first + offset}; }

  /// Four 32-bit words for block `index`.
  XTR_HOST_DEVICE Philox::Words words(std::uint64_t index) const {
    return Philox::block({static_cast<std::uint32_t>(index), static_cast<std::uint32_t>(index >> 32),
                          static_cast<std::uint32_t>(stream), static_cast<std::uint32_t>(stream >> 32)},
                         seed);
  }
  /// 32 random bits for draw `index` (one Philox block gives four draws).
  XTR_HOST_DEVICE std::uint32_t bits(std::uint64_t index) const {
    index += first;
    return words(index >> 2)[index & 3];
  }
  /// 64 random bits for draw `index`.
  XTR_HOST_DEVICE std::uint64_t bits64(std::uint64_t index) const {
    index += first;
    const auto w = words(index >> 1);
    return (index & 1) ? (std::uint64_t{w[2]} << 32 | w[3]) : (std::uint64_t{w[0]} << 32 | w[1]);
  }
  /// Uniform in [0, 1) with 24 random bits (exactly representable in float).
  XTR_HOST_DEVICE float uniform(std::uint64_t index) const {
    return static_cast<float>(bits(index) >> 8) * (1.0f / 16777216.0f);
  }
  /// Uniform in (0, 1): never 0, so log() of it is finite.
  XTR_HOST_DEVICE double open_uniform(std::uint64_t index) const {
    return (static_cast<double>(bits64(index) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
  }
  /// Uniform integer in [0, n), n > 0 (multiply-shift; bias below 2^-32 for n < 2^32).
  XTR_HOST_DEVICE std::uint64_t below(std::uint64_t index, std::uint64_t n) const {
    __extension__ using u128 = unsigned __int128;
    return static_cast<std::uint64_t>((static_cast<u128>(bits64(index)) * n) >> 64);
  }
  /// Standard normal (Box-Muller on two open uniforms).
  double normal(std::uint64_t index) const {
    const double u1 = open_uniform(2 * index), u2 = open_uniform(2 * index + 1);
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }
  /// A derived, independent stream: (seed, hash(stream, tag)), from its draw 0.
  RandomStream fork(std::uint64_t tag) const {
    const auto w = Philox::block({static_cast<std::uint32_t>(tag), static_cast<std::uint32_t>(tag >> 32),
                                  static_cast<std::uint32_t>(stream), static_cast<std::uint32_t>(stream >> 32)},
                                 seed ^ 0x5851F42D4C957F2Dull);
    return {seed, std::uint64_t{w[0]} << 32 | w[1]};
  }
};

}  // namespace xtr
