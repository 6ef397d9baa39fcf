#pragma once
// x-transformers interop: a model described by its constructor keywords (as JSON) is mapped to the matching compiled
// model type from a closed set, and state dicts are exported under x-transformers' names together with the
// non-parameter buffers Python's load_state_dict(strict=True) expects.
//
//   {"num_tokens": 256, "max_seq_len": 64, "x_transformers_version": "2.31.10",
//    "attn_layers": {"type": "Decoder", "dim": 64, "depth": 2, "heads": 4, "rotary_pos_emb": true}}
//
// The layout follows the release named by x_transformers_version (tests/fixtures/README.md has the table), never a
// guess from the names:
//   ≥ 1.31.3           `gamma` (LayerNorm) / `g` (RMSNorm) hold gain − 1 (unit offset): xtr's default layout
//   1.31.0 – 1.31.1    `gamma` / `g` hold the gain itself                       → layers.norm_unit_offset = false
//   1.27.1 – 1.30.x    bias-less nn.LayerNorm `weight` / RMSNorm `g`, the gain  → renamed, norm_unit_offset = false
//   1.27.0             LayerNorm `gamma` + persistent buffer `beta`             → layers.norm_bias = true
//   1.20.0 – 1.26.x    nn.LayerNorm `weight` + `bias`, and `to_logits.bias`     → norm_bias, logits_bias = true
// Rotary models before 1.30.1 rotate pairs (i, i + r/2) ("half"), later ones (2i, 2i + 1): q·k is unchanged when q
// and k permute their channels alike, so the loader permutes the rows of to_q / to_k of each head into the
// interleaved layout and the exporter permutes them back (exact both ways). 1.31.2 cannot build a default model and is
// refused. Before 1.42.18 the default rotary_dim was max(dim_head / 2, 32).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

#include "xtr/io/json.hpp"
#include "xtr/io/safetensors.hpp"
#include "xtr/io/state_dict.hpp"
#include "xtr/layers/transformer_wrapper.hpp"
#include "xtr/wrappers/non_autoregressive_wrapper.hpp"
#include "xtr/wrappers/x_transformer.hpp"

namespace xtr::x_transformers {

/// The x-transformers release whose conventions xtr's layout equals (the golden fixtures' version).
inline constexpr std::string_view current_version = "2.31.10";

/// How a release's state dict differs from xtr's names and layout (values: the model's config says how gains and
/// biases are read, see LayersConfig::norm_unit_offset / norm_bias and TransformerConfig::logits_bias).
struct Conventions {
  bool layernorm_torch_names = false;  // LayerNorm `weight` / `bias` for xtr's `gamma` / `beta` (torch's nn.LayerNorm)
  bool rotary_half = false;            // rotary pairs (i, i + r/2): to_q / to_k rows permuted on load and export
};

/// What a JSON description resolved to: sizes, the policy per axis by name, and the release's conventions.
struct ModelDescription {
  TransformerConfig config;
  std::string stack = "Decoder";  // Decoder | Encoder
  std::string position, norm, feedforward;
  std::string version{current_version};
  Conventions conventions;
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
  using V = detail::Version;
  const V version = detail::parse_version(m.version);
  require(version >= V{1, 20, 0}, "x_transformers_version ", m.version,
          ": releases before 1.20.0 are not supported (their layout was not checked)");
  require(version != V{1, 31, 2}, "x_transformers_version 1.31.2 cannot build these models (a broken release)");
  m.config.num_tokens = root.at("num_tokens").as_int();
  m.config.max_seq_len = root.at("max_seq_len").as_int();
  m.config.emb_dropout = detail::real(root, "emb_dropout", 0);
  const auto& layers = root.at("attn_layers");
  require(layers.is_object(), "attn_layers must be an object, got ", layers.dump());
  detail::only_known(layers, {"type", "dim", "depth", "heads", "attn_dim_head", "attn_kv_heads", "attn_one_kv_head",
                              "ff_mult", "attn_dropout", "ff_dropout", "rotary_pos_emb", "rotary_emb_dim",
                              "use_rmsnorm", "ff_glu", "ff_swish", "norm_add_unit_offset"},
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
  if (rotary && version < V{1, 42, 18} && L.rotary_dim == 0) L.rotary_dim = std::max<Index>(L.dim_head / 2, 32);
  const bool absolute = detail::flag(root, "use_abs_pos_emb", true);
  require(!(rotary && root.find("use_abs_pos_emb") && absolute),
          "rotary_pos_emb=True together with use_abs_pos_emb=True is not supported (one position encoding)");
  m.position = rotary ? "Rotary" : absolute ? "AbsoluteLearned" : "NoPosition";
  m.norm = detail::flag(layers, "use_rmsnorm", false) ? "RMSNorm" : "LayerNorm";
  const bool layernorm = m.norm == "LayerNorm";
  require(!layers.find("norm_add_unit_offset") || version >= V{1, 31, 0}, "x_transformers_version ", m.version,
          " has no norm_add_unit_offset keyword (from 1.31.0)");
  L.norm_unit_offset = detail::flag(layers, "norm_add_unit_offset", version >= V{1, 31, 3});
  L.norm_bias = layernorm && version < V{1, 27, 1};  // nn.LayerNorm's bias; 1.27.0's persistent `beta` buffer
  m.config.logits_bias = version < V{1, 27, 0};
  m.conventions.layernorm_torch_names = layernorm && (version < V{1, 27, 0} || (version >= V{1, 27, 1} &&
                                                                                version < V{1, 31, 0}));
  m.conventions.rotary_half = rotary && version < V{1, 30, 1};
  const bool glu = detail::flag(layers, "ff_glu", false), swish = detail::flag(layers, "ff_swish", false);
  require(glu || !swish, "ff_swish=True without ff_glu=True (a plain SiLU feed-forward) is not supported");
  m.feedforward = !glu ? "GELU" : swish ? "SwiGLU" : "GEGLU";
  return m;
}

/// A list of layer stacks: the closed set a run-time description may select from.
template <class... Stacks>
struct StackSet {};

/// Every stack of kind `Stack` (Decoder or Encoder) the CPU backend implements: 3 positions × 2 norms × 3
/// feed-forwards.
template <template <class...> class Stack>
using EveryStack = StackSet<Stack<AbsoluteLearned, LayerNorm, GELU>, Stack<AbsoluteLearned, LayerNorm, GEGLU>,
                            Stack<AbsoluteLearned, LayerNorm, SwiGLU>, Stack<AbsoluteLearned, RMSNorm, GELU>,
                            Stack<AbsoluteLearned, RMSNorm, GEGLU>, Stack<AbsoluteLearned, RMSNorm, SwiGLU>,
                            Stack<Rotary, LayerNorm, GELU>, Stack<Rotary, LayerNorm, GEGLU>,
                            Stack<Rotary, LayerNorm, SwiGLU>, Stack<Rotary, RMSNorm, GELU>,
                            Stack<Rotary, RMSNorm, GEGLU>, Stack<Rotary, RMSNorm, SwiGLU>,
                            Stack<NoPosition, LayerNorm, GELU>, Stack<NoPosition, LayerNorm, GEGLU>,
                            Stack<NoPosition, LayerNorm, SwiGLU>, Stack<NoPosition, RMSNorm, GELU>,
                            Stack<NoPosition, RMSNorm, GEGLU>, Stack<NoPosition, RMSNorm, SwiGLU>>;
using Decoders = EveryStack<Decoder>;
using Encoders = EveryStack<Encoder>;  // xt_eval dispatches encoder descriptions to these

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

namespace detail {
/// Whether `name` is `<prefix>attn_layers.final_norm.<suffix>` or `<prefix>attn_layers.layers.<i>.0.0.<suffix>`.
inline bool is_norm_parameter(std::string_view name, std::string_view prefix, std::string_view suffix) {
  if (!name.starts_with(prefix)) return false;
  name.remove_prefix(prefix.size());
  if (name.size() == std::string_view("attn_layers.final_norm.").size() + suffix.size() &&
      name.starts_with("attn_layers.final_norm.") && name.ends_with(suffix))
    return true;
  constexpr std::string_view layers = "attn_layers.layers.";  // then "<i>.0.0.<suffix>"
  if (!name.starts_with(layers)) return false;
  std::size_t i = layers.size();
  const std::size_t digits = i;
  while (i < name.size() && name[i] >= '0' && name[i] <= '9') ++i;
  const std::string_view rest = name.substr(i);
  return i > digits && rest.size() == 5 + suffix.size() && rest.starts_with(".0.0.") && rest.ends_with(suffix);
}

/// Rows of a (heads · dim_head, ·) projection reordered within each head between rotary layouts: the interleaved
/// row 2i is the half-layout row i and 2i + 1 is i + r/2 (i < r/2); rows r.. stay. Bytes move, values do not change.
inline void permute_rotary_rows(safetensors::TensorRecord& t, Index heads, Index dim_head, Index rotary_dim,
                                bool half_to_interleaved) {
  require(t.shape.size() == 2 && t.shape[0] == heads * dim_head, t.name, " has shape ",
          safetensors::detail::shape_str(t.shape), ", expected (", heads * dim_head, ", ·)");
  const std::size_t row = t.bytes.size() / std::size_t(t.shape[0]);
  const auto original = t.bytes;
  for (Index h = 0; h < heads; ++h)
    for (Index i = 0; i < rotary_dim / 2; ++i)
      for (const auto& [interleaved, half] : {std::pair{2 * i, i}, std::pair{2 * i + 1, i + rotary_dim / 2}}) {
        const Index to = h * dim_head + (half_to_interleaved ? interleaved : half);
        const Index from = h * dim_head + (half_to_interleaved ? half : interleaved);
        std::copy_n(original.begin() + std::ptrdiff_t(std::size_t(from) * row), row,
                    t.bytes.begin() + std::ptrdiff_t(std::size_t(to) * row));
      }
}

/// `file` with the tensors of one part (names starting with `prefix`) moved between a release's layout (`to_xtr`:
/// from it) and xtr's: LayerNorm `weight` / `bias` ↔ `gamma` / `beta`, rotary to_q / to_k rows half ↔ interleaved.
template <class Net>
safetensors::File convert_layout(const Net& net, safetensors::File file, const std::string& prefix,
                                 const Conventions& c, bool to_xtr) {
  using Layers = typename Net::layers_type;
  if (c.layernorm_torch_names && Net::Norm::name == LayerNorm::name) {
    for (auto& t : file.tensors)
      for (const auto& [xtr_suffix, torch_suffix] : {std::pair{"gamma", "weight"}, std::pair{"beta", "bias"}}) {
        if (xtr_suffix == std::string_view("beta") && !net.config().layers.norm_bias) continue;  // errors name `bias`
        const std::string from = to_xtr ? torch_suffix : xtr_suffix, to = to_xtr ? xtr_suffix : torch_suffix;
        if (is_norm_parameter(t.name, prefix, from)) t.name = t.name.substr(0, t.name.size() - from.size()) + to;
      }
  }
  if constexpr (Net::has_rotary && Layers::self_attend) {
    if (c.rotary_half) {
      const auto& L = net.config().layers;
      const Index blocks_per_layer = 2 + Index(Layers::cross_attend);
      for (Index l = 0; l < L.depth; ++l) {
        const std::string block = prefix + "attn_layers.layers." + std::to_string(l * blocks_per_layer) + ".1.";
        for (const auto& [projection, heads] : {std::pair{"to_q", L.heads}, std::pair{"to_k", net.kv_heads()}})
          for (auto& t : file.tensors)
            if (t.name == block + projection + ".weight")
              permute_rotary_rows(t, heads, L.dim_head, net.rotary_dim(), to_xtr);
      }
    }
  }
  return file;
}
}  // namespace detail

namespace detail {
/// Checks the rotary frequency buffer `name` of `file` (if any) against the model's θ and rotary_dim.
template <class Net>
void check_rotary_buffer(const Net& net, const safetensors::File& file, const std::string& name,
                         const std::string& what) {
  const auto* buffer = file.find(name);
  require(Net::has_rotary || buffer == nullptr, what, " has ", name, " but the model has no Rotary");
  if (!buffer) return;
  const auto values = safetensors::to_vector<double>(*buffer);
  const Index r = net.rotary_dim();
  require(Index(values.size()) == r / 2, what, ": ", name, " has ", values.size(), " entries, rotary_dim ", r,
          " needs ", r / 2);
  for (Index i = 0; i < r / 2; ++i) {
    const double expected = 1.0 / std::pow(net.config().layers.rotary_theta, double(2 * i) / double(r));
    require(std::abs(values[i] - expected) <= 1e-6 * expected, what, ": ", name, "[", i, "] = ", values[i],
            ", θ = ", net.config().layers.rotary_theta, " gives ", expected,
            " (rotary base rescaling and interpolation are not supported)");
  }
}
}  // namespace detail

/// Loads an x-transformers state dict written by a release with `conventions`; checks the rotary frequency buffer
/// against the model's θ and rotary_dim.
template <class Net>
void load(Net& net, const safetensors::File& release_file, const std::string& what = "x-transformers state dict",
          const Conventions& conventions = {}) {
  const safetensors::File file = detail::convert_layout(net, release_file, "", conventions, /*to_xtr=*/true);
  load_state_dict(net.parameters(), file, StateDictOptions{.prefix = "", .ignore = {std::string(rotary_buffer)}},
                  what);
  detail::check_rotary_buffer(net, file, std::string(rotary_buffer), what);
}

/// How each part of an XTransformer's state dict differs from xtr's layout.
struct XTransformerConventions {
  Conventions encoder, decoder;
};

/// What an XTransformer description resolved to: the config and each part's policies by name.
struct XTransformerDescription {
  XTransformerConfig config;
  ModelDescription encoder, decoder;
  [[nodiscard]] XTransformerConventions conventions() const { return {encoder.conventions, decoder.conventions}; }
};

/// Reads x-transformers' XTransformer keywords: dim, tie_token_emb, ignore_index, pad_value, cross_attn_tokens_dropout,
/// and enc_* / dec_* keywords, each of which TransformerWrapper(...) or Encoder(...) / Decoder(...) would take.
///   {"dim": 128, "tie_token_emb": true, "enc_num_tokens": 18, "enc_depth": 3, "enc_max_seq_len": 32,
///    "dec_num_tokens": 18, "dec_depth": 3, "dec_max_seq_len": 65, "x_transformers_version": "2.31.10"}
inline XTransformerDescription parse_xtransformer_description(const json::Value& root) {
  require(root.is_object(), "an XTransformer description must be a JSON object, got ", root.dump());
  json::Value parts[2], layers[2];  // TransformerWrapper and attn_layers keywords of the encoder and the decoder
  for (int i = 0; i < 2; ++i) {
    parts[i] = json::Value::object();
    layers[i] = json::Value::object();
    layers[i].set("type", i == 0 ? "Encoder" : "Decoder");
    layers[i].set("dim", root.at("dim"));
    if (const auto* v = root.find("x_transformers_version")) parts[i].set("x_transformers_version", *v);
  }
  std::string unknown;
  for (const auto& [key, value] : root.as_object()) {
    const bool enc = key.starts_with("enc_"), dec = key.starts_with("dec_");
    if (enc || dec) {
      const std::string k = key.substr(4);
      require(k != "dim", "XTransformer takes one `dim`; ", key, " is not a keyword");
      const bool wrapper = k == "num_tokens" || k == "max_seq_len" || k == "emb_dropout" || k == "use_abs_pos_emb";
      (wrapper ? parts : layers)[enc ? 0 : 1].set(k, value);
    } else if (key != "dim" && key != "tie_token_emb" && key != "ignore_index" && key != "pad_value" &&
               key != "cross_attn_tokens_dropout" && key != "x_transformers_version") {
      unknown += (unknown.empty() ? "" : ", ") + key;
    }
  }
  for (int i = 0; i < 2; ++i) parts[i].set("attn_layers", layers[i]);
  require(unknown.empty(), "XTransformer keywords not supported by xtr: ", unknown);
  XTransformerDescription d;
  d.encoder = parse_description(parts[0]);
  d.decoder = parse_description(parts[1]);
  auto& c = d.config;
  c.dim = root.at("dim").as_int();
  c.encoder = d.encoder.config;
  c.decoder = d.decoder.config;
  c.tie_token_emb = detail::flag(root, "tie_token_emb", false);
  c.ignore_index = std::int32_t(detail::integer(root, "ignore_index", -100));
  c.pad_value = std::int32_t(detail::integer(root, "pad_value", 0));
  c.cross_attn_tokens_dropout = detail::real(root, "cross_attn_tokens_dropout", 0);
  c.encoder_to_logits = detail::parse_version(d.encoder.version) < detail::Version{1, 35, 2};
  return d;
}

/// Whether the XTransformer type Model is the one `d` describes.
template <class Model>
bool describes(const XTransformerDescription& d) {
  return describes<typename Model::EncoderNet::layers_type>(d.encoder) &&
         describes<typename Model::DecoderNet::layers_type>(d.decoder);
}

/// The rotary buffers of an XTransformer's state dict.
inline constexpr std::string_view encoder_rotary_buffer = "encoder.attn_layers.rotary_pos_emb.inv_freq";
inline constexpr std::string_view decoder_rotary_buffer = "decoder.net.attn_layers.rotary_pos_emb.inv_freq";

/// Loads an XTransformer state dict (`encoder.…`, `decoder.net.…`; with tie_token_emb both token embedding names,
/// which must hold equal values) written by a release with `conventions`; checks the rotary buffers. `ignore`:
/// further name prefixes to skip.
template <class Model>
void load_xtransformer(Model& model, const safetensors::File& release_file,
                       const std::string& what = "x-transformers state dict", std::vector<std::string> ignore = {},
                       const XTransformerConventions& conventions = {}) {
  safetensors::File file =
      detail::convert_layout(model.encoder, release_file, "encoder.", conventions.encoder, /*to_xtr=*/true);
  file = detail::convert_layout(model.decoder.net, std::move(file), "decoder.net.", conventions.decoder, true);
  ignore.emplace_back(encoder_rotary_buffer);
  ignore.emplace_back(decoder_rotary_buffer);
  detail::check_rotary_buffer(model.encoder, file, std::string(encoder_rotary_buffer), what);
  detail::check_rotary_buffer(model.decoder.net, file, std::string(decoder_rotary_buffer), what);
  if (model.config().tie_token_emb) {
    const auto* enc = file.find("encoder.token_emb.emb.weight");
    const auto* dec = file.find("decoder.net.token_emb.emb.weight");
    require(!enc || !dec || safetensors::to_vector<double>(*enc) == safetensors::to_vector<double>(*dec), what,
            ": tie_token_emb, but encoder.token_emb.emb.weight and decoder.net.token_emb.emb.weight differ");
  }
  load_state_dict(model.parameters(), file, StateDictOptions{.prefix = "", .ignore = std::move(ignore)}, what);
}

namespace detail {
/// The rotary frequency buffer `name` of a part: copied from `source` when there, else computed as x-transformers does.
template <class Net>
void append_rotary_buffer(const Net& net, const std::string& name, const safetensors::File* source,
                          safetensors::File& file) {
  if constexpr (Net::has_rotary) {
    if (const auto* buffer = source ? source->find(name) : nullptr) {
      file.tensors.push_back(*buffer);
      return;
    }
    const Index r = net.rotary_dim();
    std::vector<float> inv_freq(std::size_t(r / 2));
    for (Index i = 0; i < r / 2; ++i)
      inv_freq[std::size_t(i)] = float(1.0 / std::pow(net.config().layers.rotary_theta, double(2 * i) / double(r)));
    file.tensors.push_back(safetensors::make_record<float>(name, {r / 2}, std::span<const float>(inv_freq)));
  }
}
}  // namespace detail

/// The model under x-transformers' names (in the layout of a release with `conventions`), with the buffers; buffers
/// present in `source` are copied byte for byte (a Python → xtr → Python round trip is then bit-identical for
/// ≥ 1.31.3), missing ones computed as x-transformers does.
template <class Net>
safetensors::File export_state_dict(const Net& net, const safetensors::File* source = nullptr,
                                    const Conventions& conventions = {}) {
  safetensors::File file;
  append_state_dict(net.parameters(), file);
  detail::append_rotary_buffer(net, std::string(rotary_buffer), source, file);
  return detail::convert_layout(net, std::move(file), "", conventions, /*to_xtr=*/false);
}


/// An XTransformer's state dict under x-transformers' names (both names of a tied embedding; in the layout of a
/// release with `conventions`) with the rotary buffers its load_state_dict(strict=True) expects; buffers present in
/// `source` are copied byte for byte.
template <class Model>
safetensors::File export_xtransformer_state_dict(const Model& model, const safetensors::File* source = nullptr,
                                                 const XTransformerConventions& conventions = {}) {
  safetensors::File file;
  append_state_dict(model.parameters(), file);
  detail::append_rotary_buffer(model.encoder, std::string(encoder_rotary_buffer), source, file);
  detail::append_rotary_buffer(model.decoder.net, std::string(decoder_rotary_buffer), source, file);
  file = detail::convert_layout(model.encoder, std::move(file), "encoder.", conventions.encoder, /*to_xtr=*/false);
  return detail::convert_layout(model.decoder.net, std::move(file), "decoder.net.", conventions.decoder, false);
}

/// A NonAutoregressiveWrapper's state dict (x-transformers' names: `net.…`, with self_cond `null_embed` and
/// `to_self_cond.weight`, with a token critic `token_critic.…`) in the current layout; checks the rotary buffers.
/// `ignore`: further name prefixes to skip.
template <class Model>
void load_non_autoregressive(Model& model, const safetensors::File& file,
                             const std::string& what = "x-transformers state dict",
                             std::vector<std::string> ignore = {}) {
  const std::string net_buffer = "net." + std::string(rotary_buffer);
  const std::string critic_buffer = "token_critic." + std::string(rotary_buffer);
  detail::check_rotary_buffer(model.net, file, net_buffer, what);
  ignore.push_back(net_buffer);
  if constexpr (Model::has_critic) {
    detail::check_rotary_buffer(model.token_critic, file, critic_buffer, what);
    ignore.push_back(critic_buffer);
  }
  load_state_dict(model.parameters(), file, StateDictOptions{.prefix = "", .ignore = std::move(ignore)}, what);
}

/// A NonAutoregressiveWrapper's state dict with the rotary buffers its load_state_dict(strict=True) expects; buffers
/// present in `source` are copied byte for byte.
template <class Model>
safetensors::File export_non_autoregressive_state_dict(const Model& model, const safetensors::File* source = nullptr) {
  safetensors::File file;
  append_state_dict(model.parameters(), file);
  detail::append_rotary_buffer(model.net, "net." + std::string(rotary_buffer), source, file);
  if constexpr (Model::has_critic)
    detail::append_rotary_buffer(model.token_critic, "token_critic." + std::string(rotary_buffer), source, file);
  return file;
}

}  // namespace xtr::x_transformers
