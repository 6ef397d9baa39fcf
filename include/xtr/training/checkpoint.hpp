#pragma once
// Training checkpoints in safetensors (readable by Python's `safetensors`):
//   <name>                      model parameters, x-transformers names
//   optimizer.exp_avg.<name>    AdamW first moments
//   optimizer.exp_avg_sq.<name> AdamW second moments
//   __metadata__                xtr.model (type), xtr.config (JSON), step, optimizer.steps and hyperparameters
//                               (optimizer.lr, .beta1, .beta2, .eps, .weight_decay: restored on load, as PyTorch's
//                               optimizer state_dict does), xtr.random_state (the model's counters: dropout
//                               streams, forward passes, wrapper draws), data_position, and the caller's own entries
// for a TransformerWrapper, an XTransformer or a NonAutoregressiveWrapper (anything with parameters(), describe(),
// random_state() and a configuration checkpoint_config() can write).
// Loading checks the whole file first: on any error neither model nor optimiser has changed.
// Written to a temporary file and renamed, so a crash never leaves a half-written checkpoint under the final name.
#include <algorithm>
#include <cctype>
#include <cmath>
#include <limits>
#include <type_traits>
#include <cstdio>
#include <filesystem>
#include <map>
#include <string>

#include "xtr/io/checksum.hpp"
#include "xtr/io/json.hpp"
#include "xtr/io/safetensors.hpp"
#include "xtr/io/state_dict.hpp"
#include "xtr/layers/transformer_wrapper.hpp"
#include "xtr/training/adamw.hpp"
#include "xtr/wrappers/non_autoregressive_wrapper.hpp"
#include "xtr/wrappers/x_transformer.hpp"

namespace xtr {

/// Every field of an options struct as a JSON object (its field table: fields()).
template <class S>
json::Value fields_to_json(const S& options) {
  auto v = json::Value::object();
  for_each_field<S>([&](const auto& f) { v.set(std::string(f.name), json::Value(options.*(f.member))); });
  return v;
}

/// The configuration as JSON (compared on load, so a checkpoint only loads into the model it came from): every field
/// of TransformerConfig, LayersConfig and the policies' options, and the policy names of Any slots.
inline json::Value to_json(const TransformerConfig& c) {
  auto layers = fields_to_json(c.layers);
  LayersConfig::for_each_policy_options(c.layers, [&](std::string_view key, const auto& options) {
    layers.set(std::string(key), fields_to_json(options));
  });
  auto policies = json::Value::object();
  for (const auto& [key, value] : {std::pair{"position", &c.layers.policies.position},
                                   std::pair{"norm", &c.layers.policies.norm},
                                   std::pair{"feedforward", &c.layers.policies.feedforward},
                                   std::pair{"score_bias", &c.layers.policies.score_bias}})
    policies.set(key, *value);
  layers.set("policies", std::move(policies));
  auto v = fields_to_json(c);
  v.set("layers", std::move(layers));
  return v;
}

inline json::Value to_json(const XTransformerConfig& c) {
  auto v = json::Value::object();
  v.set("dim", c.dim);
  v.set("encoder", to_json(c.encoder));
  v.set("decoder", to_json(c.decoder));
  v.set("tie_token_emb", c.tie_token_emb);
  v.set("ignore_index", c.ignore_index);
  v.set("pad_value", c.pad_value);
  v.set("cross_attn_tokens_dropout", c.cross_attn_tokens_dropout);
  v.set("encoder_to_logits", c.encoder_to_logits);
  return v;
}

/// Reads every field of S that `v` (an object) holds; a field of another JSON type is an error naming it.
template <class S>
void fields_from_json(const json::Value& v, S& options, const std::string& where) {
  require(v.is_object(), where, ": expected a JSON object");
  for_each_field<S>([&](const auto& f) {
    const json::Value* x = v.find(f.name);
    if (x == nullptr) return;
    using M = typename std::decay_t<decltype(f)>::value_type;
    auto& member = options.*(f.member);
    if constexpr (std::is_same_v<M, bool>) {
      require(x->is_bool(), where, ".", f.name, " must be true or false");
      member = x->as_bool();
    } else if constexpr (std::is_integral_v<M>) {
      require(x->is_number(), where, ".", f.name, " must be a number");
      member = M(x->as_int());
    } else if constexpr (std::is_floating_point_v<M>) {
      require(x->is_number(), where, ".", f.name, " must be a number");
      member = M(x->as_number());
    } else {
      require(x->is_string(), where, ".", f.name, " must be a string");
      member = x->as_string();
    }
  });
}

/// The configuration a checkpoint recorded (to_json's inverse), e.g. to build the model a checkpoint holds.
inline TransformerConfig transformer_config_from_json(const json::Value& v) {
  TransformerConfig c;
  fields_from_json(v, c, "config");
  const json::Value& layers = v.at("layers");
  fields_from_json(layers, c.layers, "config.layers");
  LayersConfig::for_each_policy_options(c.layers, [&](std::string_view key, auto& options) {
    if (const auto* x = layers.find(std::string(key)))
      fields_from_json(*x, options, "config.layers." + std::string(key));
  });
  if (const auto* p = layers.find("policies"))
    for (const auto& [key, target] : {std::pair{"position", &c.layers.policies.position},
                                      std::pair{"norm", &c.layers.policies.norm},
                                      std::pair{"feedforward", &c.layers.policies.feedforward},
                                      std::pair{"score_bias", &c.layers.policies.score_bias}})
      if (const auto* x = p->find(key)) *target = x->as_string();
  return c;
}

/// What a checkpoint records to recognise its model: the configuration, and a wrapper's options (a
/// NonAutoregressiveWrapper's schedule is a function: not recorded).
template <class Model>
json::Value checkpoint_config(const Model& model) {
  if constexpr (requires { model.options().mask_id; }) {
    const auto& o = model.options();
    auto v = json::Value::object();
    v.set("net", to_json(model.net.config()));
    if constexpr (Model::has_critic) v.set("token_critic", to_json(model.token_critic.config()));
    v.set("mask_id", o.mask_id);
    v.set("steps", o.steps);
    v.set("no_replace_prob", o.no_replace_prob);
    v.set("random_token_prob", o.random_token_prob);
    v.set("can_mask_prev_unmasked", o.can_mask_prev_unmasked);
    v.set("self_cond", o.self_cond);
    v.set("self_cond_train_prob", o.self_cond_train_prob);
    v.set("critic_loss_weight", o.critic_loss_weight);
    return v;
  } else {
    return to_json(model.config());
  }
}

/// Where a training run stands, besides parameters and optimiser state.
struct TrainingState {
  std::int64_t step = 0;             // optimiser steps done
  std::uint64_t data_position = 0;   // batches drawn from the training loader
  std::map<std::string, std::string> extra;  // caller's metadata (e.g. validation loader position)
};

/// The checksum save_checkpoint records ("xtr.crc32c", 8 hex digits) and load_checkpoint verifies: CRC-32C over every
/// tensor, by name order, of its name, a NUL and its data bytes.
inline std::string tensor_checksum(const safetensors::File& file) {
  std::vector<const safetensors::TensorRecord*> order;
  for (const auto& t : file.tensors) order.push_back(&t);
  std::sort(order.begin(), order.end(), [](const auto* a, const auto* b) { return a->name < b->name; });
  std::uint32_t crc = 0;
  for (const auto* t : order) {
    crc = crc32c(std::as_bytes(std::span(t->name.data(), t->name.size() + 1)), crc);  // the name and its NUL
    crc = crc32c(std::span<const std::byte>(t->bytes), crc);
  }
  char text[9];
  std::snprintf(text, sizeof text, "%08x", crc);
  return text;
}

/// What save_checkpoint and load_checkpoint accept beyond the defaults.
struct CheckpointOptions {
  bool allow_non_finite = false;  // write / read NaN or infinite parameters or optimizer state (for inspection only)
};

/// Writes parameters, optimiser state, the model's random state and `state` (atomically: a temporary file renamed).
/// Net: a TransformerWrapper, an XTransformer or a NonAutoregressiveWrapper. Non-finite parameters or optimizer state
/// are refused (nothing is written) unless options.allow_non_finite.
template <class Net>
void save_checkpoint(const std::filesystem::path& path, const Net& net, AdamW<typename Net::scalar>& optimizer,
                     const TrainingState& state, const CheckpointOptions& options = {}) {
  using T = typename Net::scalar;
  const auto& params = net.parameters();
  if (!options.allow_non_finite)
    for (const auto& [buffer, what] : {std::pair{&params.values(), "parameter"},
                                       std::pair{static_cast<const Tensor<T>*>(&optimizer.exp_avg()), "optimizer exp_avg"},
                                       std::pair{static_cast<const Tensor<T>*>(&optimizer.exp_avg_sq()), "optimizer exp_avg_sq"}}) {
      const std::string bad = params.first_non_finite(*buffer);
      require(bad.empty(), "refusing to save checkpoint '", path.string(), "': ", what, " ", bad,
              " is not finite (non-finite state is never saved; CheckpointOptions{.allow_non_finite = true} writes it "
              "for inspection)");
    }
  safetensors::File file;
  append_state_dict(params, file);
  for (const auto& [moments, prefix] : {std::pair{&optimizer.exp_avg(), "optimizer.exp_avg."},
                                        std::pair{&optimizer.exp_avg_sq(), "optimizer.exp_avg_sq."}})
    for (const auto& e : params.entries())
      file.tensors.push_back(safetensors::make_record<T>(
          prefix + e.name, e.shape.dims(), std::span<const T>(moments->data() + e.offset, std::size_t(e.shape.numel()))));
  file.metadata = state.extra;
  file.metadata["xtr.model"] = Net::describe();
  file.metadata["xtr.config"] = checkpoint_config(net).dump();
  file.metadata["step"] = std::to_string(state.step);
  file.metadata["optimizer.steps"] = std::to_string(optimizer.steps());
  const auto& o = optimizer.options();
  for (auto [key, value] : {std::pair{"optimizer.lr", o.lr}, std::pair{"optimizer.beta1", o.beta1},
                            std::pair{"optimizer.beta2", o.beta2}, std::pair{"optimizer.eps", o.eps},
                            std::pair{"optimizer.weight_decay", o.weight_decay}}) {
    char text[32];
    std::snprintf(text, sizeof text, "%.17g", value);
    file.metadata[key] = text;
  }
  std::string counters;
  for (const auto c : net.random_state()) counters += (counters.empty() ? "" : ",") + std::to_string(c);
  file.metadata["xtr.random_state"] = counters;
  file.metadata["data_position"] = std::to_string(state.data_position);
  file.metadata["xtr.crc32c"] = tensor_checksum(file);
  safetensors::write(path, file);
}

/// Restores parameters, optimiser state and the dropout stream; returns the training state. Errors when the file
/// comes from another model type or configuration, holds non-finite tensors (unless options.allow_non_finite), or
/// optimizer settings the optimizer's constructor would refuse; a failed load changes nothing.
template <class Net>
TrainingState load_checkpoint(const std::filesystem::path& path, Net& net, AdamW<typename Net::scalar>& optimizer,
                              const CheckpointOptions& options = {}) {
  using T = typename Net::scalar;
  using Optimizer = std::decay_t<decltype(optimizer)>;
  const auto file = safetensors::read(path);
  const std::string what = "checkpoint '" + path.string() + "'";
  auto meta = [&](const std::string& key) -> const std::string& {
    auto it = file.metadata.find(key);
    require(it != file.metadata.end(), what, " has no metadata entry '", key, "' (not an xtr training checkpoint?)");
    return it->second;
  };
  require(meta("xtr.model") == Net::describe(), what, " holds a ", meta("xtr.model"), ", this model is a ",
          Net::describe());
  const std::string config = checkpoint_config(net).dump();
  require(meta("xtr.config") == config, what, " was saved with config ", meta("xtr.config"),
          ", this model has config ", config);
  // metadata values: whole strings that parse as a count (≥ 0) or a finite number
  auto parsed = [&](const std::string& key, auto parse, const char* kind, auto valid) {
    const std::string& s = meta(key);
    std::size_t used = 0;
    decltype(parse(s, &used)) v{};
    try {
      v = parse(s, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    require(used == s.size() && !s.empty() && valid(v), what, " metadata '", key, "' is not ", kind, ": '", s, "'");
    return v;
  };
  auto number = [&](const std::string& key) {  // a count: digits only, within int64
    return std::int64_t(parse_count(meta(key), what + " metadata '" + key + "'",
                                    std::uint64_t(std::numeric_limits<std::int64_t>::max())));
  };
  auto real = [&](const std::string& key) {
    require(!meta(key).empty() && !std::isspace(static_cast<unsigned char>(meta(key)[0])), what, " metadata '", key,
            "' is not a number: '", meta(key), "'");
    return parsed(key, [](const std::string& s, std::size_t* n) { return std::stod(s, n); }, "a number",
                  [](double v) { return std::isfinite(v); });
  };
  // Check everything before changing anything: a failed load leaves model and optimiser as they were.
  if (const auto it = file.metadata.find("xtr.crc32c"); it != file.metadata.end()) {  // files from elsewhere: none
    const std::string actual = tensor_checksum(file);
    require(it->second == actual, what, " is corrupt: its tensor data has CRC-32C ", actual, ", the file records ",
            it->second, " (a changed or damaged file)");
  }
  std::vector<std::pair<const safetensors::TensorRecord*, T*>> moments;
  for (const auto& [buffer, prefix] : {std::pair{&optimizer.exp_avg(), "optimizer.exp_avg."},
                                       std::pair{&optimizer.exp_avg_sq(), "optimizer.exp_avg_sq."}})
    for (const auto& e : net.parameters().entries()) {
      const auto* t = file.find(prefix + e.name);
      require(t != nullptr, what, " is missing optimizer state '", prefix, e.name, "'");
      require(t->shape == e.shape.dims(), what, " optimizer state '", prefix, e.name, "' has shape ",
              safetensors::detail::shape_str(t->shape), ", the parameter has ", e.shape.str());
      require(t->dtype == safetensors::dtype_of<T>, what, " optimizer state '", prefix, e.name, "' has dtype ",
              safetensors::dtype_name(t->dtype), ", expected ", safetensors::dtype_name(safetensors::dtype_of<T>));
      moments.emplace_back(t, buffer->data() + e.offset);
    }
  AdamWOptions hyper;
  for (auto [key, field] : {std::pair{"optimizer.lr", &hyper.lr}, std::pair{"optimizer.beta1", &hyper.beta1},
                            std::pair{"optimizer.beta2", &hyper.beta2}, std::pair{"optimizer.eps", &hyper.eps},
                            std::pair{"optimizer.weight_decay", &hyper.weight_decay}})
    *field = real(key);
  try {
    (void)Optimizer::validated(hyper);
  } catch (const Error& e) {
    std::string why = e.what();
    if (why.rfind("xtr: ", 0) == 0) why.erase(0, 5);
    throw Error("xtr: " + what + " holds optimizer settings the optimizer refuses: " + why);
  }
  const auto steps = number("optimizer.steps"), step = number("step"), position = number("data_position");
  require(steps <= Optimizer::kMaxSteps, what, " metadata 'optimizer.steps' = ", steps, " exceeds the limit 2^53 = ",
          Optimizer::kMaxSteps);
  if (!options.allow_non_finite)
    for (const auto& t : file.tensors) {
      if (t.dtype != safetensors::Dtype::F32 && t.dtype != safetensors::Dtype::F64) continue;
      const auto values = safetensors::to_vector<double>(t);
      for (std::size_t i = 0; i < values.size(); ++i)
        require(std::isfinite(values[i]), what, " tensor '", t.name, "' [", i, "] = ", values[i],
                " is not finite (CheckpointOptions{.allow_non_finite = true} loads it for inspection)");
    }
  std::vector<std::uint64_t> random_state;  // comma-separated counters, as many as the model has
  {
    const std::string& list = meta("xtr.random_state");
    std::size_t begin = 0;
    while (begin <= list.size()) {
      const std::size_t end = std::min(list.find(',', begin), list.size());
      const std::string item = list.substr(begin, end - begin);
      random_state.push_back(parse_count(item, what + " metadata 'xtr.random_state' item " +
                                                   std::to_string(random_state.size()) + " ('" + list + "')"));
      begin = end + 1;
    }
    require(random_state.size() == net.random_state().size(), what, " holds ", random_state.size(),
            " random-state counters, this model has ", net.random_state().size());
  }
  load_state_dict(net.parameters(), file, StateDictOptions{.prefix = "", .ignore = {"optimizer."}}, what);
  for (const auto& [record, destination] : moments) {
    const auto values = safetensors::to_vector<T>(*record);
    std::copy(values.begin(), values.end(), destination);
  }
  optimizer.options() = hyper;
  optimizer.set_steps(steps);
  net.set_random_state(std::span<const std::uint64_t>(random_state));
  TrainingState state;
  state.step = step;
  state.data_position = std::uint64_t(position);
  for (const auto& [k, v] : file.metadata)
    if (!k.starts_with("xtr.") && !k.starts_with("optimizer.") && k != "step" && k != "data_position")
      state.extra[k] = v;
  return state;
}

}  // namespace xtr
