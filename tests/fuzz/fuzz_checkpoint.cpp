// libFuzzer harness: load_checkpoint of arbitrary bytes into a small model (the bytes are written to a temporary file:
// checkpoints are read from paths). A failed load must leave the model as it was.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "xtr/xtr.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using Net = xtr::TransformerWrapper<xtr::Decoder<xtr::Rotary, xtr::LayerNorm, xtr::GELU>>;
  static Net net({.num_tokens = 16, .max_seq_len = 8, .layers = {.dim = 8, .depth = 1, .heads = 2, .dim_head = 4}});
  static auto optimizer = xtr::Adam(net.parameters());
  static const std::vector<float> initial(net.parameters().values().data(),
                                          net.parameters().values().data() + net.parameters().count());
  const auto path = std::filesystem::temp_directory_path() / ("xtr_fuzz_checkpoint_" + std::to_string(::getpid()));
  std::ofstream(path, std::ios::binary | std::ios::trunc).write(reinterpret_cast<const char*>(data),
                                                                std::streamsize(size));
  try {
    (void)xtr::load_checkpoint(path, net, optimizer);
    std::copy(initial.begin(), initial.end(), net.parameters().values().data());  // loaded: back to the start
  } catch (const xtr::Error&) {
    for (std::size_t i = 0; i < initial.size(); ++i)
      if (net.parameters().values()[xtr::Index(i)] != initial[i]) __builtin_trap();  // a failed load changed the model
  }
  return 0;
}
