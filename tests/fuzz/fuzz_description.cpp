// libFuzzer harness: x-transformers descriptions (JSON) through parse_description and parse_xtransformer_description;
// a description of a small model (at most ~4M parameters by a bound on its sizes) is also built, run forward on two
// tokens and decoded one step with the KV cache.
#include <cstddef>
#include <cstdint>
#include <string>

#include "xtr/io/x_transformers.hpp"
#include "xtr/xtr.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  namespace xt = xtr::x_transformers;
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const auto root = xtr::json::parse(text);
    if (root.is_object() && root.find("attn_layers") == nullptr) {
      (void)xt::parse_xtransformer_description(root);
      return 0;
    }
    const auto d = xt::parse_description(root);
    const auto& c = d.config;
    const xtr::Index inner = c.layers.heads * c.layers.dim_head;
    if (c.num_tokens > 4096 || c.max_seq_len > 256 || c.layers.dim > 256 || c.layers.depth > 4 || c.layers.heads > 16 ||
        c.layers.dim_head > 128 || inner > 1024 || c.layers.ff_mult > 8)
      return 0;  // parsed and validated; too large to build in a fuzzing loop
    xt::with_model<xtr::Cpu<float>>(d, [&](auto& net) {
      using Net = std::decay_t<decltype(net)>;
      const xtr::TokenBatch tokens(1, std::min<xtr::Index>(2, c.max_seq_len), 0);
      if constexpr (Net::layers_type::cross_attend) {
        return;
      } else {
        (void)net.forward(tokens);
        if constexpr (Net::layers_type::causal) {
          auto cache = net.make_cache(1);
          (void)net.forward_cached(tokens, cache);
        }
      }
    });
  } catch (const xtr::Error&) {
  }
  return 0;
}
