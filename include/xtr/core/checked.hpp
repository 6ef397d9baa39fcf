#pragma once
// Size arithmetic on values that come from outside (descriptions, checkpoints, flags, data): every product and sum of
// sizes goes through checked_mul / checked_add, which refuse negative operands and results beyond kMaxElements with
// an error naming what was being sized and the values; parse_count reads a whole string as a count.
#include <cstdint>
#include <string>
#include <string_view>

#include "xtr/core/error.hpp"

namespace xtr {

using Index = std::int64_t;

/// The largest element count xtr sizes anything to: 2^48 (a petabyte of floats; far beyond any machine, far below
/// where 64-bit products of sizes overflow).
inline constexpr Index kMaxElements = Index(1) << 48;

/// a · b, both ≥ 0, at most kMaxElements.
inline Index checked_mul(Index a, Index b, std::string_view what) {
  require(a >= 0 && b >= 0, what, ": negative size (", a, " × ", b, ")");
  Index r = 0;
  require(!__builtin_mul_overflow(a, b, &r) && r <= kMaxElements, what, ": ", a, " × ", b,
          " exceeds the limit of 2^48 = ", kMaxElements, " elements");
  return r;
}

/// a + b, both ≥ 0, at most kMaxElements.
inline Index checked_add(Index a, Index b, std::string_view what) {
  require(a >= 0 && b >= 0, what, ": negative size (", a, " + ", b, ")");
  Index r = 0;
  require(!__builtin_add_overflow(a, b, &r) && r <= kMaxElements, what, ": ", a, " + ", b,
          " exceeds the limit of 2^48 = ", kMaxElements, " elements");
  return r;
}

/// A whole string of decimal digits as a count ≥ 0 (no sign, no spaces, no trailing text), at most `limit`; errors
/// name `what` and the text.
inline std::uint64_t parse_count(const std::string& text, std::string_view what,
                                 std::uint64_t limit = ~std::uint64_t(0)) {
  require(!text.empty() && text.size() <= 20, what, " is not a count: '", text, "'");
  std::uint64_t v = 0;
  for (char c : text) {
    require(c >= '0' && c <= '9', what, " is not a count: '", text, "'");
    require(!__builtin_mul_overflow(v, std::uint64_t(10), &v) && !__builtin_add_overflow(v, std::uint64_t(c - '0'), &v),
            what, " is not a count: '", text, "' (too large)");
  }
  require(v <= limit, what, " = ", v, " exceeds the limit ", limit);
  return v;
}

}  // namespace xtr
