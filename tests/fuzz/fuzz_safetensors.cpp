// libFuzzer harness: safetensors parsing of arbitrary bytes, and every tensor converted to double.
#include <cstddef>
#include <cstdint>
#include <span>

#include "xtr/io/safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const auto file = xtr::safetensors::parse(std::as_bytes(std::span(data, size)), "fuzz input");
    for (const auto& t : file.tensors) {
      try {
        (void)xtr::safetensors::to_vector<double>(t);
      } catch (const xtr::Error&) {  // a dtype that does not convert
      }
    }
  } catch (const xtr::Error&) {
  }
  return 0;
}
