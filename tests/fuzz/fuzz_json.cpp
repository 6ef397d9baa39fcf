// libFuzzer harness: the JSON parser (and dump → parse round trip) on arbitrary bytes. An xtr::Error is the expected
// answer to bad input; anything else (a crash, a sanitizer report, another exception) is a finding.
#include <cstddef>
#include <cstdint>
#include <string>

#include "xtr/io/json.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const auto value = xtr::json::parse(text);
    const auto again = xtr::json::parse(value.dump());
    if (again.dump() != value.dump()) __builtin_trap();  // dump must round-trip
  } catch (const xtr::Error&) {
  }
  return 0;
}
