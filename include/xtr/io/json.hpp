#pragma once
// JSON (RFC 8259): a value type whose objects keep insertion order, a strict parser and a compact, deterministic writer.
// Numbers are doubles, so integers are exact up to 2^53. Used for safetensors headers and model configs.
#include <charconv>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <variant>
#include <vector>

#include "xtr/core/error.hpp"

namespace xtr::json {

/// The largest integer magnitude a JSON number holds exactly here (2^53, a double's 53-bit significand).
inline constexpr std::int64_t max_exact_int = std::int64_t{1} << 53;
/// The deepest nesting of arrays and objects `parse` accepts (deeper input is an error, not a stack overflow).
inline constexpr int max_depth = 512;

enum class Kind { null, boolean, number, string, array, object };  // order of Value's variant alternatives

[[nodiscard]] constexpr const char* kind_name(Kind k) {
  constexpr const char* names[] = {"null", "bool", "number", "string", "array", "object"};
  return names[static_cast<int>(k)];
}

/// A JSON value. Objects are (key, value) pairs in insertion order; `parse` rejects duplicate keys.
class Value {
 public:
  using Array = std::vector<Value>;
  using Object = std::vector<std::pair<std::string, Value>>;

  Value() = default;  // null
  Value(std::nullptr_t) {}
  Value(bool b) : data_(b) {}
  Value(double d) : data_(d) {}
  template <std::integral T>
    requires(!std::same_as<T, bool>)
  Value(T i) : data_(static_cast<double>(i)) {
    require(std::cmp_less_equal(i, max_exact_int) && std::cmp_greater_equal(i, -max_exact_int), "integer ", i,
            " is outside +-2^53, the range a JSON number holds exactly");
  }
  Value(const char* s) : data_(std::string(s)) {}
  Value(std::string s) : data_(std::move(s)) {}
  Value(std::string_view s) : data_(std::string(s)) {}
  Value(Array a) : data_(std::move(a)) {}
  Value(Object o) : data_(std::move(o)) {}

  [[nodiscard]] static Value array() { return Value(Array{}); }
  [[nodiscard]] static Value object() { return Value(Object{}); }

  [[nodiscard]] Kind kind() const { return static_cast<Kind>(data_.index()); }
  [[nodiscard]] bool is_null() const { return kind() == Kind::null; }
  [[nodiscard]] bool is_bool() const { return kind() == Kind::boolean; }
  [[nodiscard]] bool is_number() const { return kind() == Kind::number; }
  [[nodiscard]] bool is_string() const { return kind() == Kind::string; }
  [[nodiscard]] bool is_array() const { return kind() == Kind::array; }
  [[nodiscard]] bool is_object() const { return kind() == Kind::object; }

  [[nodiscard]] bool as_bool() const { return get<bool>(Kind::boolean); }
  [[nodiscard]] double as_number() const { return get<double>(Kind::number); }
  [[nodiscard]] const std::string& as_string() const { return get<std::string>(Kind::string); }
  [[nodiscard]] const Array& as_array() const { return get<Array>(Kind::array); }
  [[nodiscard]] Array& as_array() { return const_cast<Array&>(std::as_const(*this).as_array()); }
  [[nodiscard]] const Object& as_object() const { return get<Object>(Kind::object); }
  [[nodiscard]] Object& as_object() { return const_cast<Object&>(std::as_const(*this).as_object()); }

  /// The number as an integer; throws unless it is integral and within +-2^53.
  [[nodiscard]] std::int64_t as_int() const {
    const double d = as_number();
    require(d == std::trunc(d), "JSON number ", Value(d).dump(), " is not an integer");
    require(std::fabs(d) <= static_cast<double>(max_exact_int), "JSON integer ", Value(d).dump(),
            " is outside +-2^53, the range held exactly");
    return static_cast<std::int64_t>(d);
  }

  /// The member named `key`, or nullptr (this must be an object).
  [[nodiscard]] const Value* find(std::string_view key) const {
    for (const auto& [k, v] : as_object())
      if (k == key) return &v;
    return nullptr;
  }
  [[nodiscard]] Value* find(std::string_view key) { return const_cast<Value*>(std::as_const(*this).find(key)); }
  [[nodiscard]] const Value& at(std::string_view key) const {
    const Value* v = find(key);
    require(v != nullptr, "JSON object has no key ", Value(key).dump());
    return *v;
  }
  [[nodiscard]] Value& at(std::string_view key) { return const_cast<Value&>(std::as_const(*this).at(key)); }
  [[nodiscard]] const Value& at(std::size_t i) const {
    require(i < as_array().size(), "JSON array index ", i, " >= size ", as_array().size());
    return as_array()[i];
  }
  [[nodiscard]] std::size_t size() const { return is_array() ? as_array().size() : as_object().size(); }

  /// Sets member `key` (replacing an existing one in place, else appending); returns the stored value.
  Value& set(std::string key, Value value) {
    if (Value* old = find(key)) return *old = std::move(value);
    return as_object().emplace_back(std::move(key), std::move(value)).second;
  }
  Value& push_back(Value value) { return as_array().emplace_back(std::move(value)); }

  friend bool operator==(const Value&, const Value&) = default;

  /// Compact JSON with no whitespace, members in insertion order; throws on NaN or infinity.
  [[nodiscard]] std::string dump() const {
    std::string out;
    dump_to(out);
    return out;
  }
  void dump_to(std::string& out) const {
    switch (kind()) {
      case Kind::null: out += "null"; break;
      case Kind::boolean: out += as_bool() ? "true" : "false"; break;
      case Kind::number: dump_number(out, as_number()); break;
      case Kind::string: dump_string(out, as_string()); break;
      case Kind::array: {
        out += '[';
        for (std::size_t i = 0; i < as_array().size(); ++i) {
          if (i) out += ',';
          as_array()[i].dump_to(out);
        }
        out += ']';
        break;
      }
      case Kind::object: {
        out += '{';
        bool first = true;
        for (const auto& [k, v] : as_object()) {
          if (!first) out += ',';
          first = false;
          dump_string(out, k);
          out += ':';
          v.dump_to(out);
        }
        out += '}';
        break;
      }
    }
  }

 private:
  template <class T>
  [[nodiscard]] const T& get(Kind want) const {
    require(kind() == want, "JSON value is ", kind_name(kind()), ", expected ", kind_name(want));
    return std::get<T>(data_);
  }
  static void dump_number(std::string& out, double d) {
    require(std::isfinite(d), "JSON cannot represent the number ", d);
    char buf[32];
    // Integers print without exponent or fraction; other numbers in the shortest form that reads back exactly.
    const auto r = (d == std::trunc(d) && std::fabs(d) <= static_cast<double>(max_exact_int))
                       ? std::to_chars(buf, buf + sizeof buf, static_cast<std::int64_t>(d))
                       : std::to_chars(buf, buf + sizeof buf, d);
    out.append(buf, r.ptr);
  }
  static void dump_string(std::string& out, std::string_view s) {
    out += '"';
    for (char c : s) {
      switch (c) {
        case '"': out += "\\\""; break;
        case '\\': out += "\\\\"; break;
        case '\b': out += "\\b"; break;
        case '\f': out += "\\f"; break;
        case '\n': out += "\\n"; break;
        case '\r': out += "\\r"; break;
        case '\t': out += "\\t"; break;
        default:
          if (static_cast<unsigned char>(c) < 0x20) {
            constexpr char hex[] = "0123456789abcdef";
            out += "\\u00";
            out += hex[(c >> 4) & 0xF];
            out += hex[c & 0xF];
          } else {
            out += c;  // UTF-8 passes through unchanged
          }
      }
    }
    out += '"';
  }

  std::variant<std::nullptr_t, bool, double, std::string, Array, Object> data_;
};

namespace detail {

/// Recursive-descent parser over a byte string; errors name the byte offset and what was expected there.
class Parser {
 public:
  explicit Parser(std::string_view text) : s_(text) {}

  Value document() {
    Value v = value(0);
    skip_space();
    if (pos_ != s_.size()) fail("end of input after the JSON value");
    return v;
  }

 private:
  [[noreturn]] void fail(std::string_view expected) const { fail_at(pos_, expected); }
  [[noreturn]] void fail_at(std::size_t at, std::string_view expected) const {
    std::string got = "end of input";
    if (at < s_.size()) {
      const auto c = static_cast<unsigned char>(s_[at]);
      constexpr char hex[] = "0123456789ABCDEF";
      got = (c >= 0x20 && c < 0x7F) ? std::string{'\'', static_cast<char>(c), '\''}
                                     : std::string("byte 0x") + hex[c >> 4] + hex[c & 0xF];
    }
    throw Error(xtr::detail::cat("xtr: JSON parse error at byte ", at, ": expected ", expected, ", got ", got));
  }
  [[nodiscard]] int peek() const { return pos_ < s_.size() ? static_cast<unsigned char>(s_[pos_]) : -1; }
  void skip_space() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r')) ++pos_;
  }
  void expect(char c, std::string_view what) {
    if (peek() != static_cast<unsigned char>(c)) fail(what);
    ++pos_;
  }

  Value value(int depth) {
    skip_space();
    switch (peek()) {
      case '{': return object(depth + 1);
      case '[': return array(depth + 1);
      case '"': return Value(string());
      case 't': literal("true"); return Value(true);
      case 'f': literal("false"); return Value(false);
      case 'n': literal("null"); return Value();
      default:
        if (peek() == '-' || (peek() >= '0' && peek() <= '9')) return Value(number());
        fail("a JSON value (object, array, string, number, true, false or null)");
    }
  }
  void literal(std::string_view word) {
    for (char c : word) expect(c, xtr::detail::cat("'", word, "'"));
  }
  void check_depth(int depth) const {
    if (depth > max_depth) fail(xtr::detail::cat("nesting at most ", max_depth, " deep"));
  }

  Value array(int depth) {
    check_depth(depth);
    ++pos_;  // '['
    Value out = Value::array();
    skip_space();
    if (peek() == ']') return ++pos_, out;
    for (;;) {
      out.push_back(value(depth));
      skip_space();
      if (peek() == ']') return ++pos_, out;
      expect(',', "',' or ']' in array");
    }
  }

  Value object(int depth) {
    check_depth(depth);
    ++pos_;  // '{'
    Value out = Value::object();
    std::unordered_set<std::string> keys;
    skip_space();
    if (peek() == '}') return ++pos_, out;
    for (;;) {
      skip_space();
      const std::size_t key_at = pos_;
      if (peek() != '"') fail("a string key in object");
      std::string key = string();
      if (!keys.insert(key).second)
        throw Error(xtr::detail::cat("xtr: JSON parse error at byte ", key_at, ": duplicate key ", Value(key).dump()));
      skip_space();
      expect(':', "':' after object key");
      out.as_object().emplace_back(std::move(key), value(depth));
      skip_space();
      if (peek() == '}') return ++pos_, out;
      expect(',', "',' or '}' in object");
    }
  }

  double number() {
    const std::size_t start = pos_;
    const auto digits = [&] {
      const std::size_t from = pos_;
      while (peek() >= '0' && peek() <= '9') ++pos_;
      return pos_ - from;
    };
    if (peek() == '-') ++pos_;
    const std::size_t int_at = pos_;
    if (peek() == '0') ++pos_;
    else if (digits() == 0) fail("a digit");
    const auto int_len = static_cast<long long>(pos_ - int_at);
    std::size_t frac_at = pos_, frac_len = 0;
    if (peek() == '.') {
      ++pos_, frac_at = pos_;
      if ((frac_len = digits()) == 0) fail("a digit after '.'");
    }
    long long exponent = 0;
    if (peek() == 'e' || peek() == 'E') {
      ++pos_;
      const bool negative = peek() == '-';
      if (peek() == '-' || peek() == '+') ++pos_;
      const std::size_t exp_at = pos_;
      if (digits() == 0) fail("a digit in the exponent");
      for (std::size_t i = exp_at; i < pos_ && exponent < 1'000'000; ++i) exponent = exponent * 10 + (s_[i] - '0');
      if (negative) exponent = -exponent;
    }
    double d = 0;
    const auto r = std::from_chars(s_.data() + start, s_.data() + pos_, d);
    if (r.ec == std::errc::result_out_of_range) {
      // from_chars reports underflow and overflow alike; a tiny number rounds to zero (as Python's float does).
      const bool int_zero = s_[int_at] == '0';
      std::size_t lead = 0;
      while (int_zero && lead < frac_len && s_[frac_at + lead] == '0') ++lead;
      const long long magnitude = exponent + (int_zero ? -static_cast<long long>(lead) - 1 : int_len - 1);
      if (magnitude >= 0) fail_at(start, "a number within the range of a double");
      d = s_[start] == '-' ? -0.0 : 0.0;
    } else if (r.ec != std::errc() || r.ptr != s_.data() + pos_) {
      fail_at(start, "a number");
    }
    return d;
  }

  unsigned hex4() {
    unsigned u = 0;
    for (int i = 0; i < 4; ++i) {
      const int c = peek();
      const int v = (c >= '0' && c <= '9') ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10
                                                   : (c >= 'A' && c <= 'F') ? c - 'A' + 10 : -1;
      if (v < 0) fail("a hex digit in \\u escape");
      u = u * 16 + static_cast<unsigned>(v), ++pos_;
    }
    return u;
  }
  static void append_utf8(std::string& out, unsigned cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6)), out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12)), out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18)), out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F)), out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }
  // Copies one well-formed UTF-8 sequence (no overlongs, surrogates or code points above U+10FFFF).
  void utf8_sequence(std::string& out) {
    const int c = peek();
    int more = 0, lo = 0x80, hi = 0xBF;  // continuation count and the allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF) more = 1;
    else if (c >= 0xE0 && c <= 0xEF) more = 2, lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
    else if (c >= 0xF0 && c <= 0xF4) more = 3, lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
    else fail("valid UTF-8 in string");
    const std::size_t start = pos_++;
    for (int i = 0; i < more; ++i, ++pos_)
      if (peek() < (i == 0 ? lo : 0x80) || peek() > (i == 0 ? hi : 0xBF)) fail("a UTF-8 continuation byte");
    out.append(s_.substr(start, pos_ - start));
  }

  std::string string() {
    ++pos_;  // '"'
    std::string out;
    for (;;) {
      const int c = peek();
      if (c == '"') return ++pos_, out;
      if (c < 0) fail("'\"' to close the string");
      if (c < 0x20) fail("a string character (control characters must be escaped)");
      if (c >= 0x80) {
        utf8_sequence(out);
        continue;
      }
      ++pos_;
      if (c != '\\') {
        out += static_cast<char>(c);
        continue;
      }
      switch (peek()) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          ++pos_;
          unsigned cp = hex4();
          if (cp >= 0xDC00 && cp <= 0xDFFF) fail_at(pos_ - 6, "a high surrogate (\\uD800-\\uDBFF) before a low one");
          if (cp >= 0xD800 && cp <= 0xDBFF) {  // UTF-16 pair: \uD83D\uDE00 is U+1F600
            if (peek() != '\\' || pos_ + 1 >= s_.size() || s_[pos_ + 1] != 'u')
              fail("a \\u low surrogate (\\uDC00-\\uDFFF) after a high surrogate");
            pos_ += 2;
            const unsigned low = hex4();
            if (low < 0xDC00 || low > 0xDFFF) fail_at(pos_ - 6, "a low surrogate (\\uDC00-\\uDFFF)");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
          }
          append_utf8(out, cp);
          continue;
        }
        default: fail("an escape: \\\" \\\\ \\/ \\b \\f \\n \\r \\t or \\uXXXX");
      }
      ++pos_;
    }
  }

  std::string_view s_;
  std::size_t pos_ = 0;
};

}  // namespace detail

/// Parses one JSON text (RFC 8259, UTF-8). Throws xtr::Error naming the byte offset and what was expected.
[[nodiscard]] inline Value parse(std::string_view text) { return detail::Parser(text).document(); }

}  // namespace xtr::json
