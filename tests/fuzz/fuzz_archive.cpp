// libFuzzer harness: the gzip (multi-member) and zip readers on arbitrary bytes, with a 64 MiB output cap.
#include <cstddef>
#include <cstdint>
#include <span>

#include "xtr/data/text_dataset.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::uint8_t> in(data, size);
  try {
    (void)xtr::detail::gunzip(in, "fuzz.gz", std::size_t(64) << 20);
  } catch (const xtr::Error&) {
  }
  try {
    (void)xtr::detail::unzip_first(in, "fuzz.zip");
  } catch (const xtr::Error&) {
  }
  return 0;
}
