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
#include <limits>
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
  std::string position, norm, feedforward, score_bias = "NoScoreBias";
  std::string version{current_version};
  Conventions conventions;
};

namespace detail {
inline bool is_norm_parameter(std::string_view name, std::string_view prefix, std::string_view suffix);
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

/// Reads the keywords of options struct S from `object` through its field table (each field that has a keyword);
/// marks them in `seen`. A keyword of the wrong JSON type is an error naming it.
template <class S>
void read_fields(const json::Value& object, S& options, std::vector<std::string>& seen) {
  for_each_field<S>([&](const auto& f) {
    if (f.keyword.empty()) return;
    const auto* v = object.find(std::string(f.keyword));
    if (!v) return;
    seen.emplace_back(f.keyword);
    using M = typename std::decay_t<decltype(f)>::value_type;
    if (v->is_null()) return;  // None: the default
    if constexpr (std::is_same_v<M, bool>) {
      require(v->is_bool(), "x-transformers keyword '", f.keyword, "' must be true or false, got ", v->dump());
      options.*(f.member) = v->as_bool();
    } else if constexpr (std::is_integral_v<M>) {
      require(v->is_number(), "x-transformers keyword '", f.keyword, "' must be an integer, got ", v->dump());
      options.*(f.member) = M(v->as_int());
    } else {
      require(v->is_number(), "x-transformers keyword '", f.keyword, "' must be a number, got ", v->dump());
      options.*(f.member) = M(v->as_number());
    }
  });
}

/// Keywords that select a policy or change nothing numerically: read by parse_description itself.
inline constexpr std::string_view wrapper_keywords[] = {"use_abs_pos_emb", "x_transformers_version", "attn_layers"};
inline constexpr std::string_view layers_keywords[] = {
    "type",          "rotary_pos_emb", "use_rmsnorm",     "use_scalenorm",  "use_simple_rmsnorm", "ff_glu",
    "ff_swish",      "ff_relu_squared", "alibi_pos_bias", "rel_pos_bias",   "dynamic_pos_bias",   "attn_one_kv_head",
    "attn_flash",    "attn_onnxable",   "verbose"};  // the last three change nothing on the CPU (accepted, ignored)
}  // namespace detail

/// Reads an x-transformers constructor description: TransformerWrapper keywords at the top, the attention stack's
/// under "attn_layers" (its class in "type"). Each keyword is a field of an options struct (TransformerConfig,
/// LayersConfig, Rotary, MultiHeadAttention, ALiBi, RelativePositionBias, DynamicPositionBias: their fields() tables)
/// or a policy selection (rotary_pos_emb, use_rmsnorm, ff_glu, alibi_pos_bias, ...). Unknown keywords and unsupported
/// values are errors naming them.
inline ModelDescription parse_description(const json::Value& root) {
  require(root.is_object(), "an x-transformers description must be a JSON object, got ", root.dump());
  ModelDescription m;
  if (const auto* v = root.find("x_transformers_version")) m.version = v->as_string();
  using V = detail::Version;
  const V version = detail::parse_version(m.version);
  require(version >= V{1, 20, 0}, "x_transformers_version ", m.version,
          ": releases before 1.20.0 are not supported (their layout was not checked)");
  require(version != V{1, 31, 2}, "x_transformers_version 1.31.2 cannot build these models (a broken release)");
  // TransformerWrapper's keywords
  std::vector<std::string> seen(std::begin(detail::wrapper_keywords), std::end(detail::wrapper_keywords));
  TransformerConfig& c = m.config;
  detail::read_fields(root, c, seen);
  {
    std::string unknown;
    for (const auto& [key, value] : root.as_object())
      if (std::find(seen.begin(), seen.end(), key) == seen.end())
        unknown += (unknown.empty() ? "" : ", ") + key;
    require(unknown.empty(), "TransformerWrapper keywords not supported by xtr: ", unknown);
  }
  require(root.find("num_tokens") && root.find("max_seq_len"), "an x-transformers description needs num_tokens and "
          "max_seq_len");
  const auto& layers = root.at("attn_layers");
  require(layers.is_object(), "attn_layers must be an object, got ", layers.dump());
  // AttentionLayers' keywords
  auto& L = c.layers;
  seen.assign(std::begin(detail::layers_keywords), std::end(detail::layers_keywords));
  detail::read_fields(layers, L, seen);
  LayersConfig::for_each_policy_options(
      L, [&](std::string_view, auto& options) { detail::read_fields(layers, options, seen); });
  {
    std::string unknown;
    for (const auto& [key, value] : layers.as_object())
      if (std::find(seen.begin(), seen.end(), key) == seen.end()) unknown += (unknown.empty() ? "" : ", ") + key;
    require(unknown.empty(), "attn_layers keywords not supported by xtr: ", unknown);
  }
  m.stack = layers.at("type").as_string();
  require(m.stack == "Decoder" || m.stack == "Encoder", "attn_layers type '", m.stack,
          "' is not supported (Decoder, Encoder)");
  require(layers.find("dim") && layers.find("depth"), "attn_layers needs dim and depth");
  if (detail::flag(layers, "attn_one_kv_head", false)) {
    require(!layers.find("attn_kv_heads") || layers.at("attn_kv_heads").is_null(),
            "attn_one_kv_head=True together with attn_kv_heads: x-transformers asserts one of them");
    L.kv_heads = 1;
  }
  // policies: position
  const bool alibi = detail::flag(layers, "alibi_pos_bias", false), t5 = detail::flag(layers, "rel_pos_bias", false),
             dynamic = detail::flag(layers, "dynamic_pos_bias", false);
  require(int(alibi) + int(t5) + int(dynamic) <= 1, "alibi_pos_bias, rel_pos_bias and dynamic_pos_bias exclude each "
          "other (x-transformers asserts at most one)");
  const bool rotary = detail::flag(layers, "rotary_pos_emb", false) || L.rotary.xpos;
  if (rotary && version < V{1, 42, 18} && L.rotary_dim == 0) L.rotary_dim = std::max<Index>(L.dim_head / 2, 32);
  const bool absolute = detail::flag(root, "use_abs_pos_emb", true);
  require(!(rotary && root.find("use_abs_pos_emb") && absolute),
          "rotary_pos_emb=True together with use_abs_pos_emb=True is not supported (one position encoding)");
  require(!(t5 && root.find("use_abs_pos_emb") && absolute),
          "rel_pos_bias=True together with use_abs_pos_emb=True is not supported (x-transformers drops the absolute "
          "embedding with rel_pos_bias)");
  m.position = rotary ? "Rotary" : absolute && !t5 ? "AbsoluteLearned" : "NoPosition";  // T5 removes pos_emb
  m.score_bias = alibi ? "ALiBi" : t5 ? "RelativePositionBias" : dynamic ? "DynamicPositionBias" : "NoScoreBias";
  // norm
  const bool rms = detail::flag(layers, "use_rmsnorm", false), scale = detail::flag(layers, "use_scalenorm", false),
             simple = detail::flag(layers, "use_simple_rmsnorm", false);
  require(int(rms) + int(scale) + int(simple) <= 1, "use_rmsnorm, use_scalenorm and use_simple_rmsnorm exclude each "
          "other");
  m.norm = rms ? "RMSNorm" : scale ? "ScaleNorm" : simple ? "SimpleRMSNorm" : "LayerNorm";
  const bool layernorm = m.norm == "LayerNorm";
  require(!layers.find("norm_add_unit_offset") || version >= V{1, 31, 0}, "x_transformers_version ", m.version,
          " has no norm_add_unit_offset keyword (from 1.31.0)");
  if (!layers.find("norm_add_unit_offset")) L.norm_unit_offset = version >= V{1, 31, 3};
  L.norm_bias = layernorm && version < V{1, 27, 1};  // nn.LayerNorm's bias; 1.27.0's persistent `beta` buffer
  c.logits_bias = version < V{1, 27, 0};
  m.conventions.layernorm_torch_names = layernorm && (version < V{1, 27, 0} || (version >= V{1, 27, 1} &&
                                                                                version < V{1, 31, 0}));
  m.conventions.rotary_half = rotary && version < V{1, 30, 1};
  // feed-forward: relu² wins over swish, as there; a gate wraps the activation
  const bool glu = detail::flag(layers, "ff_glu", false), swish = detail::flag(layers, "ff_swish", false),
             relu2 = detail::flag(layers, "ff_relu_squared", false);
  require(!(glu && relu2), "ff_glu=True with ff_relu_squared=True (a gated ReLU²) is not supported");
  m.feedforward = relu2 ? "ReLUSquared" : glu ? (swish ? "SwiGLU" : "GEGLU") : swish ? "SiLU" : "GELU";
  L.policies = {m.position, m.norm, m.feedforward, m.score_bias};
  return m;
}

/// Adjusts a description to the layout `file` has where the release alone does not decide it: releases 1.27.1 –
/// 1.30.x saved with torch < 2.1 keep each LayerNorm as x-transformers' own module, `gamma` (the gain) and a persistent
/// `beta` buffer, y = LN(x) · gamma + beta, instead of a bias-less nn.LayerNorm `weight`. Call it before building the
/// model; `prefix` selects one part of a larger model's file ("encoder.", "decoder.net.").
inline void match_layout(ModelDescription& m, const safetensors::File& file, const std::string& prefix = "") {
  using V = detail::Version;
  const V version = detail::parse_version(m.version);
  if (m.norm != "LayerNorm" || version < V{1, 27, 1} || version >= V{1, 31, 0}) return;
  const bool own_layernorm = std::any_of(file.tensors.begin(), file.tensors.end(), [&](const auto& t) {
    return detail::is_norm_parameter(t.name, prefix, "beta") || detail::is_norm_parameter(t.name, prefix, "gamma");
  });
  if (!own_layernorm) return;
  m.config.layers.norm_bias = true;           // beta
  m.conventions.layernorm_torch_names = false;  // gamma and beta are xtr's names already
}

/// A list of layer stacks: a closed set a run-time description may select from (with_model's optional argument).
template <class... Stacks>
struct StackSet {};

/// Every stack of kind `Stack` (Decoder or Encoder) with the static policies of the first releases: 3 positions ×
/// 2 norms × 3 feed-forwards (the set xt_eval compiled before AnyDecoder; kept for code that lists its own types).
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
using Encoders = EveryStack<Encoder>;

/// Whether the stack type can run the description (an Any slot runs every policy of its axis).
template <class Stack>
bool describes(const ModelDescription& m) {
  auto fits = []<class Slot>(const std::string& name) { return is_any<Slot> || name == Slot::name; };
  return m.stack == (Stack::causal ? "Decoder" : "Encoder") &&
         fits.template operator()<typename Stack::position>(m.position) &&
         fits.template operator()<typename Stack::norm>(m.norm) &&
         fits.template operator()<typename Stack::feedforward>(m.feedforward) &&
         fits.template operator()<typename Stack::score_bias>(m.score_bias);
}

/// The model types a run-time description is built as: one per stack kind, every policy chosen at run time.
using AnyDecoder = Decoder<AnyPosition, AnyNorm, AnyFeedForward, AnyScoreBias>;
using AnyEncoder = Encoder<AnyPosition, AnyNorm, AnyFeedForward, AnyScoreBias>;

/// Builds the model `m` describes and calls f(net): a TransformerWrapper<AnyDecoder or AnyEncoder, Backend>.
template <class Backend = Cpu<float>, class F>
void with_model(const ModelDescription& m, F&& f) {
  if (m.stack == "Encoder") {
    TransformerWrapper<AnyEncoder, Backend> net(m.config);
    f(net);
  } else {
    TransformerWrapper<AnyDecoder, Backend> net(m.config);
    f(net);
  }
}

/// Builds the model type of `set` that `m` describes and calls f(net); throws naming the combination otherwise.
template <class Backend = Cpu<float>, class F, class... Stacks>
void with_model(const ModelDescription& m, F&& f, StackSet<Stacks...>) {
  bool found = false;
  (
      [&] {
        if (found || !describes<Stacks>(m)) return;
        found = true;
        TransformerConfig config = m.config;
        config.layers.policies = {};  // a static type's own
        TransformerWrapper<Stacks, Backend> net(config);
        f(net);
      }(),
      ...);
  require(found, "no compiled model type for ", m.stack, "<", m.position, ", ", m.norm, ", ", m.feedforward,
          m.score_bias == "NoScoreBias" ? std::string() : ", " + m.score_bias, "> in this program's set");
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
  if (c.layernorm_torch_names && net.norm_policy() == LayerNorm::name) {
    for (auto& t : file.tensors)
      for (const auto& [xtr_suffix, torch_suffix] : {std::pair{"gamma", "weight"}, std::pair{"beta", "bias"}}) {
        if (xtr_suffix == std::string_view("beta") && !net.config().layers.norm_bias) continue;  // errors name `bias`
        const std::string from = to_xtr ? torch_suffix : xtr_suffix, to = to_xtr ? xtr_suffix : torch_suffix;
        if (is_norm_parameter(t.name, prefix, from)) t.name = t.name.substr(0, t.name.size() - from.size()) + to;
      }
  }
  if constexpr (Layers::self_attend) {
    if (c.rotary_half && net.uses_rotary()) {
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
/// Checks the rotary frequency buffer `name` of `file` (if any) against the model's θ (after base rescaling) and
/// rotary_dim, and with xpos its `scale` buffer next to it.
template <class Net>
void check_rotary_buffer(const Net& net, const safetensors::File& file, const std::string& name,
                         const std::string& what) {
  const auto* buffer = file.find(name);
  require(net.uses_rotary() || buffer == nullptr, what, " has ", name, " but the model has no Rotary");
  if (!buffer) return;
  const auto values = safetensors::to_vector<double>(*buffer);
  const auto spec = net.rotary_spec();
  const Index r = spec.dim;
  require(Index(values.size()) == r / 2, what, ": ", name, " has ", values.size(), " entries, rotary_dim ", r,
          " needs ", r / 2);
  for (Index i = 0; i < r / 2; ++i) {
    const double expected = 1.0 / std::pow(spec.base(), double(2 * i) / double(r));
    require(std::abs(values[i] - expected) <= 1e-6 * expected, what, ": ", name, "[", i, "] = ", values[i],
            ", θ = ", spec.base(), " gives ", expected,
            " (a different rotary base: set layers.rotary.base_rescale_factor, x-transformers' "
            "rotary_base_rescale_factor, for rotary base rescaling)");
  }
  const std::string scale_name = name.substr(0, name.size() - std::string_view("inv_freq").size()) + "scale";
  const auto* scale = file.find(scale_name);
  require(spec.xpos_scale_base != 0 || scale == nullptr, what, " has ", scale_name, " but the model has no xpos");
  if (!scale) return;
  const auto s = safetensors::to_vector<double>(*scale);
  require(Index(s.size()) == r / 2, what, ": ", scale_name, " has ", s.size(), " entries, needs ", r / 2);
  for (Index i = 0; i < r / 2; ++i) {
    const double expected = (double(2 * i) + 0.4 * double(r)) / (1.4 * double(r));
    require(std::abs(s[i] - expected) <= 1e-6, what, ": ", scale_name, "[", i, "] = ", s[i], ", xpos gives ", expected);
  }
}
/// The non-parameter buffers of a rotary part under `prefix`, for load_state_dict's ignore list.
inline std::vector<std::string> rotary_buffers(const std::string& prefix) {
  return {prefix + std::string(rotary_buffer), prefix + "attn_layers.rotary_pos_emb.scale"};
}
}  // namespace detail

/// Loads an x-transformers state dict written by a release with `conventions`; checks the rotary buffers against the
/// model's θ, rotary_dim and xpos.
template <class Net>
void load(Net& net, const safetensors::File& release_file, const std::string& what = "x-transformers state dict",
          const Conventions& conventions = {}) {
  const safetensors::File file = detail::convert_layout(net, release_file, "", conventions, /*to_xtr=*/true);
  load_state_dict(net.parameters(), file, StateDictOptions{.prefix = "", .ignore = detail::rotary_buffers("")}, what);
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
      // what x-transformers' XTransformer hands to each TransformerWrapper; everything else goes to Encoder(...) /
      // Decoder(...), which refuses what it does not know
      const bool wrapper = k == "num_tokens" || k == "max_seq_len" || k == "emb_dropout" || k == "use_abs_pos_emb" ||
                           (enc && k == "num_memory_tokens");
      (wrapper ? parts : layers)[enc ? 0 : 1].set(k, value);
    } else if (key != "dim" && key != "tie_token_emb" && key != "ignore_index" && key != "pad_value" &&
               key != "cross_attn_tokens_dropout" && key != "x_transformers_version" &&
               key != "return_tgt_loss") {  // return_tgt_loss: not a parameter of 2.31.10, ignored there too
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
  auto int32 = [&](const char* key, std::int64_t fallback) {  // token ids are int32: a wider value is an error
    const std::int64_t v = detail::integer(root, key, fallback);
    require(v >= std::numeric_limits<std::int32_t>::min() && v <= std::numeric_limits<std::int32_t>::max(), key, " ",
            v, " does not fit a 32-bit token id (", std::numeric_limits<std::int32_t>::min(), " … ",
            std::numeric_limits<std::int32_t>::max(), ")");
    return std::int32_t(v);
  };
  c.ignore_index = int32("ignore_index", -100);
  c.pad_value = int32("pad_value", 0);
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
  for (const char* part : {"encoder.", "decoder.net."})
    for (auto& name : detail::rotary_buffers(part)) ignore.push_back(name);
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
  if (!net.uses_rotary()) return;
  const auto spec = net.rotary_spec();
  const Index r = spec.dim;
  if (const auto* buffer = source ? source->find(name) : nullptr) {
    file.tensors.push_back(*buffer);
  } else {
    std::vector<float> inv_freq(std::size_t(r / 2));
    for (Index i = 0; i < r / 2; ++i) inv_freq[std::size_t(i)] = spec.inv_freq(i);
    file.tensors.push_back(safetensors::make_record<float>(name, {r / 2}, std::span<const float>(inv_freq)));
  }
  if (spec.xpos_scale_base == 0) return;
  const std::string scale_name = name.substr(0, name.size() - std::string_view("inv_freq").size()) + "scale";
  if (const auto* buffer = source ? source->find(scale_name) : nullptr) {
    file.tensors.push_back(*buffer);
    return;
  }
  std::vector<float> scale(std::size_t(r / 2));
  for (Index i = 0; i < r / 2; ++i) scale[std::size_t(i)] = float((double(2 * i) + 0.4 * double(r)) / (1.4 * double(r)));
  file.tensors.push_back(safetensors::make_record<float>(scale_name, {r / 2}, std::span<const float>(scale)));
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
