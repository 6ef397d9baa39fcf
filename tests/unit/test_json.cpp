// JSON: strict RFC 8259 parsing, exact integers, escapes and unicode, deterministic dumps, error messages.
#include <catch2/catch.hpp>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>

#include "xtr/io/json.hpp"

namespace test_json {  // this file's names (the test executable may compile the files as one unit)

using Catch::Contains;
namespace json = xtr::json;

TEST_CASE("json: scalars parse to their kinds", "[json]") {
  CHECK(json::parse("null").is_null());
  CHECK(json::parse("true").as_bool());
  CHECK_FALSE(json::parse("false").as_bool());
  CHECK(json::parse("\"hi\"").as_string() == "hi");
  CHECK(json::parse(" \t\r\n 7 \n").as_int() == 7);
  CHECK(json::parse("[]").as_array().empty());
  CHECK(json::parse("{}").as_object().empty());
}

TEST_CASE("json: numbers, with integers exact up to 2^53", "[json]") {
  CHECK(json::parse("0").as_int() == 0);
  CHECK(json::parse("-12").as_int() == -12);
  CHECK(json::parse("1.5").as_number() == 1.5);
  CHECK(json::parse("-0.25").as_number() == -0.25);
  CHECK(json::parse("1e3").as_int() == 1000);
  CHECK(json::parse("2.5E+2").as_int() == 250);
  CHECK(json::parse("125e-3").as_number() == 0.125);
  CHECK(json::parse("9007199254740992").as_int() == (std::int64_t{1} << 53));
  CHECK(json::parse("-9007199254740991").as_int() == -9007199254740991);
  CHECK(json::parse("1e-400").as_number() == 0.0);  // underflow rounds to zero
  CHECK(std::signbit(json::parse("-1e-400").as_number()));

  CHECK(json::Value(std::int64_t{9007199254740992}).dump() == "9007199254740992");
  CHECK(json::Value(-42).dump() == "-42");
  CHECK(json::Value(1e3).dump() == "1000");
  CHECK(json::Value(0.1).dump() == "0.1");
  CHECK(json::Value(1e300).dump() == "1e+300");
  CHECK(json::Value(-2.5e-7).dump() == "-2.5e-07");

  REQUIRE_THROWS_WITH(json::parse("1.5").as_int(), Contains("JSON number 1.5 is not an integer"));
  REQUIRE_THROWS_WITH(json::parse("18014398509481984").as_int(), Contains("outside +-2^53"));
  REQUIRE_THROWS_WITH(json::Value(std::uint64_t{1} << 60), Contains("integer 1152921504606846976 is outside +-2^53"));
  REQUIRE_THROWS_WITH(json::Value(std::nan("")).dump(), Contains("cannot represent the number nan"));
  REQUIRE_THROWS_WITH(json::Value(-INFINITY).dump(), Contains("cannot represent the number -inf"));
}

TEST_CASE("json: random doubles survive dump then parse bit for bit", "[json]") {
  std::mt19937_64 rng(std::random_device{}());
  for (int i = 0; i < 20000; ++i) {
    const double d = std::bit_cast<double>(rng());
    if (!std::isfinite(d)) continue;
    const std::string text = json::Value(d).dump();
    INFO(text);
    REQUIRE(std::bit_cast<std::uint64_t>(json::parse(text).as_number()) == std::bit_cast<std::uint64_t>(d == 0 ? 0.0 : d));
  }
  for (int i = 0; i < 20000; ++i) {
    const auto n = static_cast<std::int64_t>(rng() % (std::uint64_t{1} << 54)) - (std::int64_t{1} << 53);
    const std::string text = json::Value(n).dump();
    REQUIRE(text == std::to_string(n));
    REQUIRE(json::parse(text).as_int() == n);
  }
}

TEST_CASE("json: objects keep insertion order and round-trip compactly", "[json]") {
  const std::string text =
      R"({"zeta":1,"alpha":[true,false,null,{"x":"y"}],"mid":{"b":-0.5,"a":[]},"e":"","n":1e+100})";
  const json::Value v = json::parse(text);
  CHECK(v.dump() == text);
  CHECK(json::parse(v.dump()) == v);
  CHECK(v.as_object()[0].first == "zeta");
  CHECK(v.as_object()[1].first == "alpha");
  CHECK(v.at("mid").at("b").as_number() == -0.5);
  CHECK(v.at("alpha").at(3).at("x").as_string() == "y");
  CHECK(json::parse("[ 1 , { \"a\" : 2 } ]\n").dump() == R"([1,{"a":2}])");
}

TEST_CASE("json: builders, find, at and set", "[json]") {
  json::Value o = json::Value::object();
  o.set("b", 1);
  o.set("a", "text");
  o.set("list", json::Value::array()).push_back(3.5);
  o.at("list").push_back(json::Value());
  o.set("b", false);  // replaces in place, order unchanged
  CHECK(o.dump() == R"({"b":false,"a":"text","list":[3.5,null]})");
  CHECK(o.size() == 3);
  REQUIRE(o.find("a") != nullptr);
  CHECK(o.find("a")->as_string() == "text");
  CHECK(o.find("missing") == nullptr);
  REQUIRE_THROWS_WITH(o.at("missing"), Contains("JSON object has no key \"missing\""));
  REQUIRE_THROWS_WITH(o.at("a").as_number(), Contains("JSON value is string, expected number"));
  REQUIRE_THROWS_WITH(o.at("b").as_array(), Contains("JSON value is bool, expected array"));
  REQUIRE_THROWS_WITH(o.at("list").at(2), Contains("JSON array index 2 >= size 2"));
  REQUIRE_THROWS_WITH(json::Value(1).find("x"), Contains("JSON value is number, expected object"));
  CHECK(json::Value(json::Value::Array{1, "x", nullptr}).dump() == R"([1,"x",null])");
}

TEST_CASE("json: string escapes and unicode", "[json]") {
  CHECK(json::parse(R"("\"\\\/\b\f\n\r\t")").as_string() == "\"\\/\b\f\n\r\t");
  CHECK(json::parse(R"("\u0041\u00e9\u20AC")").as_string() == "A\xC3\xA9\xE2\x82\xAC");  // A, é, €
  CHECK(json::parse(R"("\ud83d\ude00")").as_string() == "\xF0\x9F\x98\x80");               // U+1F600 from a pair
  CHECK(json::parse(R"("\uDBFF\uDFFF")").as_string() == "\xF4\x8F\xBF\xBF");               // U+10FFFF
  CHECK(json::parse("\"caf\xC3\xA9 \xE6\x97\xA5 \xF0\x9F\x98\x80\"").as_string() ==
        "caf\xC3\xA9 \xE6\x97\xA5 \xF0\x9F\x98\x80");  // raw UTF-8 passes through
  CHECK(json::parse(R"("\u0000")").as_string() == std::string(1, '\0'));

  // Dump escapes quotes, backslashes and control characters; UTF-8 and '/' pass through.
  const std::string raw = std::string("q\"b\\/\b\f\n\r\t") + '\x01' + '\x1f' + '\0' + "\xC3\xA9";
  CHECK(json::Value(raw).dump() == R"("q\"b\\/\b\f\n\r\t\u0001\u001f\u0000)" "\xC3\xA9\"");
  CHECK(json::parse(json::Value(raw).dump()).as_string() == raw);
}

TEST_CASE("json: parse errors name the byte offset and what was expected", "[json]") {
  const auto fails = [](const std::string& text, const std::string& message) {
    INFO(text);
    REQUIRE_THROWS_WITH(json::parse(text), Contains(message));
  };
  fails("", "JSON parse error at byte 0: expected a JSON value (object, array, string, number, true, false or "
            "null), got end of input");
  fails("[1,]", "at byte 3: expected a JSON value");
  fails("[1 2]", "at byte 3: expected ',' or ']' in array, got '2'");
  fails("{\"a\" 1}", "at byte 5: expected ':' after object key, got '1'");
  fails("{\"a\":1,}", "at byte 7: expected a string key in object, got '}'");
  fails("{\"a\":1 \"b\":2}", "at byte 7: expected ',' or '}' in object");
  fails("{a:1}", "at byte 1: expected a string key in object, got 'a'");
  fails(R"({"a":1,"b":2,"a":3})", "JSON parse error at byte 13: duplicate key \"a\"");
  fails("{} x", "at byte 3: expected end of input after the JSON value, got 'x'");
  fails("01", "at byte 1: expected end of input");
  fails("-", "at byte 1: expected a digit, got end of input");
  fails("+1", "at byte 0: expected a JSON value");
  fails(".5", "at byte 0: expected a JSON value");
  fails("1.", "at byte 2: expected a digit after '.'");
  fails("1.e5", "at byte 2: expected a digit after '.'");
  fails("1e", "at byte 2: expected a digit in the exponent");
  fails("1e400", "at byte 0: expected a number within the range of a double");
  fails("-1e400", "at byte 0: expected a number within the range of a double");
  fails("NaN", "at byte 0: expected a JSON value");
  fails("tru", "at byte 3: expected 'true', got end of input");
  fails("nulL", "at byte 3: expected 'null', got 'L'");
  fails("\f{}", "at byte 0: expected a JSON value (object, array, string, number, true, false or null), got byte 0x0C");
  fails("\"abc", "at byte 4: expected '\"' to close the string");
  fails("\"a\x01\"", "at byte 2: expected a string character (control characters must be escaped), got byte 0x01");
  fails("\"a\nb\"", "at byte 2: expected a string character");
  fails(R"("\x")", "at byte 2: expected an escape");
  fails(R"("\u12G4")", "at byte 5: expected a hex digit in \\u escape, got 'G'");
  fails(R"("\ud800")", "at byte 7: expected a \\u low surrogate");
  fails(R"("\ud800\u0041")", "at byte 7: expected a low surrogate (\\uDC00-\\uDFFF), got '\\'");
  fails(R"("x\udc00")", "at byte 2: expected a high surrogate");
  fails("\"\xC0\xAF\"", "at byte 1: expected valid UTF-8 in string, got byte 0xC0");        // overlong '/'
  fails("\"\xE0\x80\xAF\"", "at byte 2: expected a UTF-8 continuation byte, got byte 0x80");  // overlong
  fails("\"\xED\xA0\x80\"", "at byte 2: expected a UTF-8 continuation byte, got byte 0xA0");  // encoded surrogate
  fails("\"\xF4\x90\x80\x80\"", "at byte 2: expected a UTF-8 continuation byte");            // above U+10FFFF
  fails("\"\xF5\x80\x80\x80\"", "at byte 1: expected valid UTF-8");
  fails("\"\xC3\"", "at byte 2: expected a UTF-8 continuation byte, got '\"'");
  fails("\xEF\xBB\xBF{}", "at byte 0: expected a JSON value");  // no byte-order mark
}

TEST_CASE("json: nesting is limited instead of overflowing the stack", "[json]") {
  const int limit = json::max_depth;
  CHECK(json::parse(std::string(limit, '[') + std::string(limit, ']')).is_array());
  REQUIRE_THROWS_WITH(json::parse(std::string(100000, '[')),
                      Contains("at byte 512: expected nesting at most 512 deep"));
}

}  // namespace test_json
