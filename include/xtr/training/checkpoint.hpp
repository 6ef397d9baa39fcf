#pragma once
// Training checkpoints in safetensors (readable by Python's `safetensors`):
//   <name>                      model parameters, x-transformers names
//   optimizer.exp_avg.<name>    AdamW first moments
//   optimizer.exp_avg_sq.<name> AdamW second moments
//   __metadata__                xtr.model (type), xtr.config (JSON), step, optimizer.steps and hyperparameters
//                               (optimizer.lr, .beta1, .beta2, .eps, .weight_decay: restored on load, as PyTorch's
//                               optimizer state_dict does), forward_count, dropout_seed, data_position, and the
//                               caller's own entries
// Loading checks the whole file first: on any error neither model nor optimiser has changed.
// Written to a temporary file and renamed, so a crash never leaves a half-written checkpoint under the final name.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <string>

#include "xtr/io/json.hpp"
#include "xtr/io/safetensors.hpp"
#include "xtr/io/state_dict.hpp"
#include "xtr/layers/transformer_wrapper.hpp"
#include "xtr/training/adamw.hpp"

namespace xtr {

/// The configuration as JSON (compared on load, so a checkpoint only loads into the model it came from).
inline json::Value to_json(const TransformerConfig& c) {
  auto layers = json::Value::object();
  for (const auto& [key, value] : {std::pair<const char*, json::Value>{"dim", c.layers.dim},
                                   {"depth", c.layers.depth},
                                   {"heads", c.layers.heads},
                                   {"dim_head", c.layers.dim_head},
                                   {"kv_heads", c.layers.kv_heads},
                                   {"ff_mult", c.layers.ff_mult},
                                   {"attn_dropout", c.layers.attn_dropout},
                                   {"ff_dropout", c.layers.ff_dropout},
                                   {"rotary_dim", c.layers.rotary_dim},
                                   {"rotary_theta", c.layers.rotary_theta},
                                   {"dim_context", c.layers.dim_context},
                                   {"norm_unit_offset", c.layers.norm_unit_offset},
                                   {"norm_bias", c.layers.norm_bias}})
    layers.set(key, value);
  auto v = json::Value::object();
  v.set("num_tokens", c.num_tokens);
  v.set("max_seq_len", c.max_seq_len);
  v.set("emb_dropout", c.emb_dropout);
  v.set("return_only_embed", c.return_only_embed);
  v.set("logits_dim", c.logits_dim);
  v.set("logits_bias", c.logits_bias);
  v.set("layers", std::move(layers));
  return v;
}

/// Where a training run stands, besides parameters and optimiser state.
struct TrainingState {
  std::int64_t step = 0;             // optimiser steps done
  std::uint64_t data_position = 0;   // batches drawn from the training loader
  std::map<std::string, std::string> extra;  // caller's metadata (e.g. validation loader position)
};

template <class Net>
void save_checkpoint(const std::filesystem::path& path, const Net& net, AdamW<typename Net::scalar>& optimizer,
                     const TrainingState& state) {
  using T = typename Net::scalar;
  const auto& params = net.parameters();
  safetensors::File file;
  append_state_dict(params, file);
  for (const auto& [moments, prefix] : {std::pair{&optimizer.exp_avg(), "optimizer.exp_avg."},
                                        std::pair{&optimizer.exp_avg_sq(), "optimizer.exp_avg_sq."}})
    for (const auto& e : params.entries())
      file.tensors.push_back(safetensors::make_record<T>(
          prefix + e.name, e.shape.dims(), std::span<const T>(moments->data() + e.offset, std::size_t(e.shape.numel()))));
  file.metadata = state.extra;
  file.metadata["xtr.model"] = Net::describe();
  file.metadata["xtr.config"] = to_json(net.config()).dump();
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
  file.metadata["forward_count"] = std::to_string(net.forward_count());
  file.metadata["dropout_seed"] = std::to_string(net.dropout_seed());
  file.metadata["data_position"] = std::to_string(state.data_position);
  safetensors::write(path, file);
}

/// Restores parameters, optimiser state and the dropout stream; returns the training state. Errors when the file
/// comes from another model type or configuration.
template <class Net>
TrainingState load_checkpoint(const std::filesystem::path& path, Net& net, AdamW<typename Net::scalar>& optimizer) {
  using T = typename Net::scalar;
  const auto file = safetensors::read(path);
  const std::string what = "checkpoint '" + path.string() + "'";
  auto meta = [&](const std::string& key) -> const std::string& {
    auto it = file.metadata.find(key);
    require(it != file.metadata.end(), what, " has no metadata entry '", key, "' (not an xtr training checkpoint?)");
    return it->second;
  };
  require(meta("xtr.model") == Net::describe(), what, " holds a ", meta("xtr.model"), ", this model is a ",
          Net::describe());
  const std::string config = to_json(net.config()).dump();
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
  auto number = [&](const std::string& key) {
    return parsed(key, [](const std::string& s, std::size_t* n) { return std::stoll(s, n); }, "a count",
                  [](long long v) { return v >= 0; });
  };
  auto real = [&](const std::string& key) {
    return parsed(key, [](const std::string& s, std::size_t* n) { return std::stod(s, n); }, "a number",
                  [](double v) { return std::isfinite(v); });
  };
  // Check everything before changing anything: a failed load leaves model and optimiser as they were.
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
  const auto steps = number("optimizer.steps"), forward_count = number("forward_count");
  const auto dropout_seed = number("dropout_seed"), step = number("step"), position = number("data_position");
  load_state_dict(net.parameters(), file, StateDictOptions{.prefix = "", .ignore = {"optimizer."}}, what);
  for (const auto& [record, destination] : moments) {
    const auto values = safetensors::to_vector<T>(*record);
    std::copy(values.begin(), values.end(), destination);
  }
  optimizer.options() = hyper;
  optimizer.set_steps(steps);
  net.set_random_state(std::uint64_t(dropout_seed), std::uint64_t(forward_count));
  TrainingState state;
  state.step = step;
  state.data_position = std::uint64_t(position);
  for (const auto& [k, v] : file.metadata)
    if (!k.starts_with("xtr.") && !k.starts_with("optimizer.") && k != "step" && k != "forward_count" &&
        k != "dropout_seed" && k != "data_position")
      state.extra[k] = v;
  return state;
}

}  // namespace xtr
