#pragma once
// Parameters ↔ safetensors records under their x-transformers names (a state_dict).
// Loading is strict and all-or-nothing: every parameter must be filled with a floating-point tensor of its exact
// shape and every tensor under the prefix must be consumed; otherwise one error lists everything missing, unexpected,
// mismatched in shape or of the wrong dtype, and no parameter has changed.
#include <algorithm>
#include <span>
#include <string>
#include <vector>

#include "xtr/core/parameters.hpp"
#include "xtr/io/safetensors.hpp"

namespace xtr {

/// Appends every parameter as "<prefix><name>" (float → F32, double → F64).
template <class T>
void append_state_dict(const ParameterStore<T>& params, safetensors::File& file, const std::string& prefix = "") {
  for (const auto& e : params.entries())
    file.tensors.push_back(safetensors::make_record<T>(
        prefix + e.name, e.shape.dims(),
        std::span<const T>(params.values().data() + e.offset, std::size_t(e.shape.numel()))));
}

struct StateDictOptions {
  std::string prefix;                 // only tensors whose names start with it are considered; it is stripped
  std::vector<std::string> ignore;    // name prefixes (after stripping) to skip, e.g. non-parameter buffers
};

/// Fills every parameter from `file`; converts F16/BF16/F32/F64 to T.
template <class T>
void load_state_dict(ParameterStore<T>& params, const safetensors::File& file, const StateDictOptions& options = {},
                     const std::string& what = "state dict") {
  std::vector<std::string> missing, unexpected, mismatched, wrong_dtype;
  std::vector<const safetensors::TensorRecord*> source(params.entries().size(), nullptr);
  for (const auto& t : file.tensors) {
    if (!t.name.starts_with(options.prefix)) continue;
    const std::string name = t.name.substr(options.prefix.size());
    if (std::any_of(options.ignore.begin(), options.ignore.end(), [&](const std::string& p) { return name.starts_with(p); }))
      continue;
    const auto* e = params.find(name);
    if (!e) {
      unexpected.push_back(name);
      continue;
    }
    if (t.shape != e->shape.dims()) {
      mismatched.push_back(name + " " + safetensors::detail::shape_str(t.shape) + " vs parameter " + e->shape.str());
      continue;
    }
    using safetensors::Dtype;
    if (t.dtype != Dtype::F32 && t.dtype != Dtype::F64 && t.dtype != Dtype::F16 && t.dtype != Dtype::BF16) {
      wrong_dtype.push_back(name + " " + std::string(safetensors::dtype_name(t.dtype)) +
                            " (expected F32, F64, F16 or BF16)");
      continue;
    }
    source[std::size_t(e - params.entries().data())] = &t;
  }
  for (std::size_t i = 0; i < source.size(); ++i)
    if (!source[i] && std::none_of(mismatched.begin(), mismatched.end(), [&](const std::string& m) {
          return m.starts_with(params.entries()[i].name + " ");
        }) && std::none_of(wrong_dtype.begin(), wrong_dtype.end(), [&](const std::string& m) {
          return m.starts_with(params.entries()[i].name + " ");
        }))
      missing.push_back(params.entries()[i].name);
  if (!missing.empty() || !unexpected.empty() || !mismatched.empty() || !wrong_dtype.empty()) {
    std::string msg = "xtr: " + what + " does not fit the model:";
    auto list = [&](const char* title, const std::vector<std::string>& names) {
      if (names.empty()) return;
      msg += std::string("\n  ") + title + " (" + std::to_string(names.size()) + "):";
      for (const auto& n : names) msg += "\n    " + n;
    };
    list("missing", missing);
    list("unexpected", unexpected);
    list("shape mismatch", mismatched);
    list("wrong dtype", wrong_dtype);
    throw Error(msg);
  }
  for (std::size_t i = 0; i < source.size(); ++i) {
    const auto values = safetensors::to_vector<T>(*source[i]);
    std::copy(values.begin(), values.end(), params.values().data() + params.entries()[i].offset);
  }
}

}  // namespace xtr
