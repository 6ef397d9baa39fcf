#pragma once
// Field tables: an options struct names each knob once, with its x-transformers keyword, its rule and a line of
// documentation, and everything else is driven by the table: validation (an error naming the field, the value and the
// rule), the JSON of a checkpoint's configuration, reading x-transformers' constructor keywords, and the docs check.
//
//   static constexpr auto fields() {
//     return std::tuple{field("num_heads", "alibi_num_heads", &ALiBi::num_heads, at_least_zero, "heads with a bias; 0 = all")};
//   }
#include <cstdint>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>

namespace xtr {

/// One knob of options struct S: its name in xtr (the member), its x-transformers keyword ("" if none), a pointer to
/// the member, a rule (nullptr when the value is valid, else what it must be) and a line of documentation.
template <class S, class M>
struct Field {
  using owner = S;
  using value_type = M;
  std::string_view name;
  std::string_view keyword;
  M S::*member;
  const char* (*rule)(M);
  std::string_view doc;
};

template <class S, class M>
constexpr Field<S, M> field(std::string_view name, std::string_view keyword, M S::*member, const char* (*rule)(M),
                            std::string_view doc) {
  return {name, keyword, member, rule, doc};
}

/// Common rules.
namespace rules {
template <class M>
constexpr const char* any(M) {
  return nullptr;
}
constexpr const char* positive(std::int64_t v) { return v > 0 ? nullptr : "must be > 0"; }
constexpr const char* non_negative(std::int64_t v) { return v >= 0 ? nullptr : "must be >= 0"; }
constexpr const char* positive_real(double v) { return v > 0 ? nullptr : "must be > 0"; }
constexpr const char* at_least_one(double v) { return v >= 1 ? nullptr : "must be >= 1"; }
constexpr const char* probability(double v) {
  return v >= 0 && v < 1 ? nullptr : "is a dropout rate; dropout rates must be in [0, 1)";
}
}  // namespace rules

/// Calls f(field) for every field of S (S::fields() returns a tuple of Field).
template <class S, class F>
constexpr void for_each_field(F&& f) {
  std::apply([&](const auto&... field) { (f(field), ...); }, S::fields());
}

}  // namespace xtr
