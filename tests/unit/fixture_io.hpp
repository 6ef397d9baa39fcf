#pragma once
// Reading the golden fixtures (tests/fixtures, written by tools/xt_fixture.py): paths, token and mask tensors.
#include <catch2/catch.hpp>

#include <cstddef>
#include <cstdint>
#include <string>

#include <algorithm>
#include <cmath>
#include <set>

#include "xtr/core/parameters.hpp"
#include "xtr/core/tokens.hpp"
#include "xtr/io/json.hpp"
#include "xtr/io/safetensors.hpp"

#ifndef XTR_FIXTURE_DIR
#define XTR_FIXTURE_DIR "tests/fixtures"
#endif

namespace xtr::testing {

inline std::string fixture_path(const std::string& name) {
  return std::string(XTR_FIXTURE_DIR) + "/" + name + ".safetensors";
}

/// An I64 (B, T) tensor of token ids.
inline TokenBatch tokens_of(const safetensors::File& file, const std::string& name) {
  const auto& t = file.at(name);
  REQUIRE(t.shape.size() == 2);
  TokenBatch batch(t.shape[0], t.shape[1]);
  batch.data = safetensors::to_vector<std::int32_t>(t);
  return batch;
}

/// A BOOL (B, T) mask: 1 = real token (attend), 0 = padding.
inline Mask mask_of(const safetensors::File& file, const std::string& name) {
  const auto& t = file.at(name);
  REQUIRE(t.dtype == safetensors::Dtype::BOOL);
  REQUIRE(t.shape.size() == 2);
  Mask mask(t.shape[0], t.shape[1]);
  REQUIRE(t.bytes.size() == mask.data.size());
  for (std::size_t i = 0; i < mask.data.size(); ++i) {
    const auto byte = std::to_integer<std::uint8_t>(t.bytes[i]);
    REQUIRE(byte <= 1);
    mask.data[i] = byte;
  }
  return mask;
}

/// A decoder fixture's x-transformers description: its `config` metadata with its release.
inline json::Value description_of(const safetensors::File& file) {
  auto root = json::parse(file.metadata.at("config"));
  root.set("x_transformers_version", file.metadata.at("x_transformers_version"));
  return root;
}

/// The model's tensors of a fixture file: without the fixture's own inputs, outputs and gradients.
inline safetensors::File model_tensors(const safetensors::File& file) {
  safetensors::File weights;
  for (const auto& t : file.tensors)
    if (!t.name.starts_with("fixture.") && !t.name.starts_with("grad.")) weights.tensors.push_back(t);
  return weights;
}

/// (B, T) → (B, T − 1): the inputs of the wrapper's shifted loss.
inline TokenBatch drop_last(const TokenBatch& x) {
  TokenBatch out(x.batch, x.length - 1);
  for (Index b = 0; b < x.batch; ++b)
    for (Index t = 0; t + 1 < x.length; ++t) out(b, t) = x(b, t);
  return out;
}

/// The worst per-tensor gradient error against a fixture's grad.<name> tensors and where it is.
struct GradientError {
  double worst = 0;
  std::string name;
};

/// Every grad.<name> against the accumulated gradient of <name>, as max |ours − ref| / max |ref| per tensor; a tensor
/// whose reference is 0 up to the fixture's fp32 noise (max |ref| below `noise` times the largest reference gradient)
/// is measured against the largest gradient instead. Every parameter must have a reference (checked here).
template <class T>
GradientError gradient_error(const safetensors::File& file, const ParameterStore<T>& params, double noise = 0) {
  double largest = 0;
  for (const auto& t : file.tensors)
    if (t.name.starts_with("grad."))
      for (double g : safetensors::to_vector<double>(t)) largest = std::max(largest, std::abs(g));
  GradientError out;
  std::set<std::string> with_reference;
  for (const auto& t : file.tensors) {
    if (!t.name.starts_with("grad.")) continue;
    const std::string param = t.name.substr(5);
    const auto* e = params.find(param);
    INFO("reference gradient " << t.name);
    REQUIRE(e != nullptr);
    REQUIRE(t.shape == e->shape.dims());
    with_reference.insert(param);
    const auto expected = safetensors::to_vector<double>(t);
    double max_diff = 0, max_ref = 0;
    for (Index i = 0; i < e->shape.numel(); ++i) {
      max_diff = std::max(max_diff, std::abs(double(params.grads()[e->offset + i]) - expected[std::size_t(i)]));
      max_ref = std::max(max_ref, std::abs(expected[std::size_t(i)]));
    }
    const double scale = max_ref < noise * largest ? largest : max_ref;
    const double err = scale > 0 ? max_diff / scale : max_diff;
    if (err >= out.worst) out.worst = err, out.name = param;
  }
  for (const auto& e : params.entries()) {
    INFO("parameter without a reference gradient: " << e.name);
    CHECK(with_reference.count(e.name) == 1);
  }
  return out;
}

}  // namespace xtr::testing
