#pragma once
// Reading the golden fixtures (tests/fixtures, written by tools/xt_fixture.py): paths, token and mask tensors.
#include <catch2/catch.hpp>

#include <cstddef>
#include <cstdint>
#include <string>

#include "xtr/core/tokens.hpp"
#include "xtr/io/safetensors.hpp"

#ifndef XTR_FIXTURE_DIR
#define XTR_FIXTURE_DIR "tests/fixtures"
#endif

namespace xtr::testing {

inline std::string fixture_path(const std::string& name) {
  return std::string(XTR_FIXTURE_DIR) + "/" + name + ".safetensors";
}

/// An I64 (B, T) tensor of token ids.
inline TokenBatch tokens_of(const safetensors::File& file, const std::string& name) {
  const auto& t = file.at(name);
  REQUIRE(t.shape.size() == 2);
  TokenBatch batch(t.shape[0], t.shape[1]);
  batch.data = safetensors::to_vector<std::int32_t>(t);
  return batch;
}

/// A BOOL (B, T) mask: 1 = real token (attend), 0 = padding.
inline Mask mask_of(const safetensors::File& file, const std::string& name) {
  const auto& t = file.at(name);
  REQUIRE(t.dtype == safetensors::Dtype::BOOL);
  REQUIRE(t.shape.size() == 2);
  Mask mask(t.shape[0], t.shape[1]);
  REQUIRE(t.bytes.size() == mask.data.size());
  for (std::size_t i = 0; i < mask.data.size(); ++i) {
    const auto byte = std::to_integer<std::uint8_t>(t.bytes[i]);
    REQUIRE(byte <= 1);
    mask.data[i] = byte;
  }
  return mask;
}

}  // namespace xtr::testing
