#pragma once
// CRC-32C (Castagnoli, the iSCSI / ext4 / SSE4.2 polynomial 0x1EDC6F41, reflected 0x82F63B78): the checksum xtr
// records for the tensor data of the checkpoints it writes. Table-driven, 8 bits at a time; check value
// crc32c("123456789") = 0xE3069283.
#include <array>
#include <cstddef>
#include <cstdint>
#include <span>

namespace xtr {

namespace detail {
inline constexpr std::array<std::uint32_t, 256> crc32c_table = [] {
  std::array<std::uint32_t, 256> t{};
  for (std::uint32_t i = 0; i < 256; ++i) {
    std::uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    t[i] = c;
  }
  return t;
}();
}  // namespace detail

/// Continues a CRC-32C over `bytes` (start with crc = 0; the result of one call is the `crc` of the next).
inline std::uint32_t crc32c(std::span<const std::byte> bytes, std::uint32_t crc = 0) {
  crc = ~crc;
  for (std::byte b : bytes) crc = detail::crc32c_table[(crc ^ std::uint32_t(b)) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

}  // namespace xtr
