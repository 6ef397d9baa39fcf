#pragma once
// x-transformers interop: a model described by its constructor keywords (as JSON) is mapped to the matching compiled
// model type from a closed set, and state dicts are exported under x-transformers' names together with the
// non-parameter buffers Python's load_state_dict(strict=True) expects.
//
//   {"num_tokens": 256, "max_seq_len": 64, "x_transformers_version": "2.31.10",
//    "attn_layers": {"type": "Decoder", "dim": 64, "depth": 2, "heads": 4, "rotary_pos_emb": true}}
//
// Norm gains: from x-transformers 1.31.3 on, `gamma`/`g` hold gain − 1 (unit offset), which is xtr's layout. Older
// conventions (nn.LayerNorm weight/bias before 1.27.0, gain as is in [1.27.0, 1.31.3)) are refused by name, never
// guessed.
#include <cmath>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

#include "xtr/io/json.hpp"
#include "xtr/io/safetensors.hpp"
#include "xtr/io/state_dict.hpp"
#include "xtr/layers/transformer_wrapper.hpp"

namespace xtr::x_transformers {

/// The x-transformers release whose conventions xtr's layout equals (the golden fixtures' version).
inline constexpr std::string_view current_version = "2.31.10";

/// What a JSON description resolved to: sizes, and the policy per axis by name.
struct ModelDescription {
  TransformerConfig config;
  std::string stack = "Decoder";  // Decoder | Encoder
  std::string position, norm, feedforward;
  std::string version{current_version};
};

namespace detail {
struct Version {
  int major = 0, minor = 0, patch = 0;
  friend auto operator<=>(const Version&, const Version&) = default;
};
inline Version parse_version(const std::string& text) {
  Version v;
  char extra = 0;
  const int n = std::sscanf(text.c_str(), "%d.%d.%d%c", &v.major, &v.minor, &v.patch, &extra);
  require(n == 3, "x_transformers_version '", text, "' is not MAJOR.MINOR.PATCH");
  return v;
}
inline bool flag(const json::Value& object, std::string_view key, bool fallback) {
  const auto* v = object.find(std::string(key));
  if (!v) return fallback;
  require(v->is_bool(), "x-transformers keyword '", key, "' must be true or false, got ", v->dump());
  return v->as_bool();
}
inline Index integer(const json::Value& object, std::string_view key, Index fallback) {
  const auto* v = object.find(std::string(key));
  if (!v || v->is_null()) return fallback;
  return Index(v->as_int());
}
inline double real(const json::Value& object, std::string_view key, double fallback) {
  const auto* v = object.find(std::string(key));
  return v ? v->as_number() : fallback;
}
inline void only_known(const json::Value& object, std::initializer_list<std::string_view> known, std::string_view where) {
  std::string unknown;
  for (const auto& [key, value] : object.as_object())
    if (std::find(known.begin(), known.end(), key) == known.end()) unknown += (unknown.empty() ? "" : ", ") + key;
  require(unknown.empty(), where, " keywords not supported by xtr: ", unknown);
}
}  // namespace detail

/// Reads an x-transformers constructor description. Unknown keywords and unsupported values are errors naming them.
inline ModelDescription parse_description(const json::Value& root) {
  require(root.is_object(), "an x-transformers description must be a JSON object, got ", root.dump());
  detail::only_known(root, {"num_tokens", "max_seq_len", "emb_dropout", "use_abs_pos_emb", "x_transformers_version",
                            "attn_layers"},
                     "TransformerWrapper");
  ModelDescription m;
  if (const auto* v = root.find("x_transformers_version")) m.version = v->as_string();
  require(detail::parse_version(m.version) >= detail::Version{1, 31, 3}, "x_transformers_version ", m.version,
          ": norm gains before 1.31.3 (nn.LayerNorm weight/bias before 1.27.0, gain as is until 1.31.3) are not "
          "supported yet; xtr reads the unit-offset gains of 1.31.3 and later");
  m.config.num_tokens = root.at("num_tokens").as_int();
  m.config.max_seq_len = root.at("max_seq_len").as_int();
  m.config.emb_dropout = detail::real(root, "emb_dropout", 0);
  const auto& layers = root.at("attn_layers");
  require(layers.is_object(), "attn_layers must be an object, got ", layers.dump());
  detail::only_known(layers, {"type", "dim", "depth", "heads", "attn_dim_head", "attn_kv_heads", "attn_one_kv_head",
                              "ff_mult", "attn_dropout", "ff_dropout", "rotary_pos_emb", "rotary_emb_dim",
                              "use_rmsnorm", "ff_glu", "ff_swish"},
                     "attn_layers");
  m.stack = layers.at("type").as_string();
  require(m.stack == "Decoder" || m.stack == "Encoder", "attn_layers type '", m.stack,
          "' is not supported (Decoder, Encoder)");
  auto& L = m.config.layers;
  L.dim = layers.at("dim").as_int();
  L.depth = layers.at("depth").as_int();
  L.heads = detail::integer(layers, "heads", 8);
  L.dim_head = detail::integer(layers, "attn_dim_head", 64);
  L.kv_heads = detail::flag(layers, "attn_one_kv_head", false) ? 1 : detail::integer(layers, "attn_kv_heads", 0);
  L.ff_mult = detail::integer(layers, "ff_mult", 4);
  L.attn_dropout = detail::real(layers, "attn_dropout", 0);
  L.ff_dropout = detail::real(layers, "ff_dropout", 0);
  L.rotary_dim = detail::integer(layers, "rotary_emb_dim", 0);

  const bool rotary = detail::flag(layers, "rotary_pos_emb", false);
  const bool absolute = detail::flag(root, "use_abs_pos_emb", true);
  require(!(rotary && root.find("use_abs_pos_emb") && absolute),
          "rotary_pos_emb=True together with use_abs_pos_emb=True is not supported (one position encoding)");
  m.position = rotary ? "Rotary" : absolute ? "AbsoluteLearned" : "NoPosition";
  m.norm = detail::flag(layers, "use_rmsnorm", false) ? "RMSNorm" : "LayerNorm";
  const bool glu = detail::flag(layers, "ff_glu", false), swish = detail::flag(layers, "ff_swish", false);
  require(glu || !swish, "ff_swish=True without ff_glu=True (a plain SiLU feed-forward) is not supported");
  m.feedforward = !glu ? "GELU" : swish ? "SwiGLU" : "GEGLU";
  return m;
}

/// A list of layer stacks: the closed set a run-time description may select from.
template <class... Stacks>
struct StackSet {};

/// Every Decoder the CPU backend implements: 3 positions × 2 norms × 3 feed-forwards.
using Decoders = StackSet<Decoder<AbsoluteLearned, LayerNorm, GELU>, Decoder<AbsoluteLearned, LayerNorm, GEGLU>,
                          Decoder<AbsoluteLearned, LayerNorm, SwiGLU>, Decoder<AbsoluteLearned, RMSNorm, GELU>,
                          Decoder<AbsoluteLearned, RMSNorm, GEGLU>, Decoder<AbsoluteLearned, RMSNorm, SwiGLU>,
                          Decoder<Rotary, LayerNorm, GELU>, Decoder<Rotary, LayerNorm, GEGLU>,
                          Decoder<Rotary, LayerNorm, SwiGLU>, Decoder<Rotary, RMSNorm, GELU>,
                          Decoder<Rotary, RMSNorm, GEGLU>, Decoder<Rotary, RMSNorm, SwiGLU>,
                          Decoder<NoPosition, LayerNorm, GELU>, Decoder<NoPosition, LayerNorm, GEGLU>,
                          Decoder<NoPosition, LayerNorm, SwiGLU>, Decoder<NoPosition, RMSNorm, GELU>,
                          Decoder<NoPosition, RMSNorm, GEGLU>, Decoder<NoPosition, RMSNorm, SwiGLU>>;

template <class Stack>
bool describes(const ModelDescription& m) {
  return m.stack == (Stack::causal ? "Decoder" : "Encoder") && m.position == Stack::position::name &&
         m.norm == Stack::norm::name && m.feedforward == Stack::feedforward::name;
}

/// Builds the model type of `set` that `m` describes and calls f(net); throws naming the combination otherwise.
template <class Backend = Cpu<float>, class F, class... Stacks>
void with_model(const ModelDescription& m, F&& f, StackSet<Stacks...> = {}) {
  bool found = false;
  (
      [&] {
        if (found || !describes<Stacks>(m)) return;
        found = true;
        TransformerWrapper<Stacks, Backend> net(m.config);
        f(net);
      }(),
      ...);
  require(found, "no compiled model type for ", m.stack, "<", m.position, ", ", m.norm, ", ", m.feedforward,
          "> in this program's set");
}

/// Non-parameter buffers x-transformers keeps in its state_dict.
inline constexpr std::string_view rotary_buffer = "attn_layers.rotary_pos_emb.inv_freq";

/// Loads an x-transformers state dict; checks the rotary frequency buffer against the model's θ and rotary_dim.
template <class Net>
void load(Net& net, const safetensors::File& file, const std::string& what = "x-transformers state dict") {
  load_state_dict(net.parameters(), file, StateDictOptions{.prefix = "", .ignore = {std::string(rotary_buffer)}},
                  what);
  const auto* buffer = file.find(rotary_buffer);
  require(Net::has_rotary || buffer == nullptr, what, " has ", rotary_buffer, " but the model has no Rotary");
  if (!buffer) return;
  const auto values = safetensors::to_vector<double>(*buffer);
  const Index r = net.rotary_dim();
  require(Index(values.size()) == r / 2, what, ": ", rotary_buffer, " has ", values.size(), " entries, rotary_dim ",
          r, " needs ", r / 2);
  for (Index i = 0; i < r / 2; ++i) {
    const double expected = 1.0 / std::pow(net.config().layers.rotary_theta, double(2 * i) / double(r));
    require(std::abs(values[i] - expected) <= 1e-6 * expected, what, ": ", rotary_buffer, "[", i, "] = ", values[i],
            ", θ = ", net.config().layers.rotary_theta, " gives ", expected,
            " (rotary base rescaling and interpolation are not supported)");
  }
}

/// The model under x-transformers' names, with the buffers; buffers present in `source` are copied byte for byte
/// (a Python → xtr → Python round trip is then bit-identical), missing ones computed as x-transformers does.
template <class Net>
safetensors::File export_state_dict(const Net& net, const safetensors::File* source = nullptr) {
  safetensors::File file;
  append_state_dict(net.parameters(), file);
  if constexpr (Net::has_rotary) {
    if (const auto* buffer = source ? source->find(rotary_buffer) : nullptr) {
      file.tensors.push_back(*buffer);
    } else {
      const Index r = net.rotary_dim();
      std::vector<float> inv_freq(std::size_t(r / 2));
      for (Index i = 0; i < r / 2; ++i)
        inv_freq[std::size_t(i)] = float(1.0 / std::pow(net.config().layers.rotary_theta, double(2 * i) / double(r)));
      file.tensors.push_back(
          safetensors::make_record<float>(std::string(rotary_buffer), {r / 2}, std::span<const float>(inv_freq)));
    }
  }
  return file;
}

}  // namespace xtr::x_transformers
