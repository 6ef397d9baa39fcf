#pragma once
// A model with its decoding weights quantised, as one safetensors file: every quantised matrix as its int8 values
// (I8, shape (rows, cols)) or packed 4-bit values (U8, (rows, cols / 2), byte k of a group holding values k and
// k + group/2 in its low and high nibble), with "<name>.scales" (F16, (rows, cols / group): the copy's half-precision
// scales; files with F32 scales load too, each rounded to the nearest half) beside it; every other parameter in F32.
// Metadata: xtr.model, xtr.config (as checkpoints), xtr.weight_format, xtr.group, xtr.crc32c.
// Loading fills the parameters with the dequantised values and gives the model the very copy that was saved (no
// second rounding), so a loaded model decodes exactly as the one that was saved.
#include <filesystem>
#include <memory>
#include <span>
#include <string>

#include "xtr/core/checked.hpp"
#include "xtr/core/weight_format.hpp"
#include "xtr/io/checksum.hpp"
#include "xtr/io/safetensors.hpp"
#include "xtr/training/checkpoint.hpp"

namespace xtr {

/// Writes `net` with its int8 / q4 decoding copy (net.quantize() first) to `path` (atomically).
template <class Net>
void save_quantized(const std::filesystem::path& path, const Net& net) {
  using T = typename Net::scalar;
  const auto& copy = net.decode_weights();
  require(copy && copy->quantized(), "save_quantized: the model has no int8 or q4 weights; call quantize() first");
  const auto& params = net.parameters();
  require(!copy->stale(params), "save_quantized: the weight copy is stale (the parameters changed); quantize() again");
  safetensors::File file;
  for (std::size_t e = 0; e < params.entries().size(); ++e) {
    const auto& entry = params.entries()[e];
    if (entry.alias_of >= 0) continue;  // tied names share the target's storage
    const Index rows = entry.shape.rows(), cols = entry.shape.cols();
    if (!copy->holds(int(e))) {
      file.tensors.push_back(safetensors::make_record<T>(
          entry.name, entry.shape.dims(),
          std::span<const T>(params.values().data() + entry.offset, std::size_t(entry.shape.numel()))));
      continue;
    }
    if (copy->format == WeightFormat::int8)
      file.tensors.push_back(safetensors::make_record<std::int8_t>(
          entry.name, entry.shape.dims(),
          std::span<const std::int8_t>(copy->q8.data() + entry.offset, std::size_t(entry.shape.numel()))));
    else
      file.tensors.push_back(safetensors::make_record<std::uint8_t>(
          entry.name, {rows, cols / 2},
          std::span<const std::uint8_t>(copy->q4.data() + copy->q4_offset[e], std::size_t(rows * cols / 2))));
    auto scales = safetensors::make_record<std::int16_t>(  // the halves' bits, recorded as F16
        entry.name + ".scales", {rows, cols / copy->group},
        std::span<const std::int16_t>(reinterpret_cast<const std::int16_t*>(copy->scales.data() + copy->scale_offset[e]),
                                      std::size_t(rows * cols / copy->group)));
    scales.dtype = safetensors::Dtype::F16;
    file.tensors.push_back(std::move(scales));
  }
  file.metadata["xtr.model"] = Net::describe();
  file.metadata["xtr.config"] = checkpoint_config(net).dump();
  file.metadata["xtr.weight_format"] = std::string(format_name(copy->format));
  file.metadata["xtr.group"] = std::to_string(copy->group);
  file.metadata["xtr.crc32c"] = tensor_checksum(file);
  safetensors::write(path, file);
}

/// Reads a save_quantized() file into `net` (same type and configuration): the parameters become the dequantised
/// values and the model decodes from the saved copy. Errors name the tensor and what was expected; a failed load
/// changes nothing. `activations`: as TransformerWrapper::quantize (the file holds weights only).
template <class Net>
void load_quantized(const std::filesystem::path& path, Net& net,
                    ActivationFormat activations = ActivationFormat::automatic) {
  using T = typename Net::scalar;
  const auto file = safetensors::read(path);
  const std::string what = "quantised model '" + path.string() + "'";
  auto meta = [&](const std::string& key) -> const std::string& {
    auto it = file.metadata.find(key);
    require(it != file.metadata.end(), what, " has no metadata entry '", key, "' (not written by save_quantized?)");
    return it->second;
  };
  require(meta("xtr.model") == Net::describe(), what, " holds a ", meta("xtr.model"), ", this model is a ",
          Net::describe());
  const std::string config = checkpoint_config(net).dump();
  require(meta("xtr.config") == config, what, " was saved with config ", meta("xtr.config"), ", this model has config ",
          config);
  if (auto it = file.metadata.find("xtr.crc32c"); it != file.metadata.end())
    require(it->second == tensor_checksum(file), what, ": CRC-32C of the tensor data is ", tensor_checksum(file),
            ", the file records ", it->second, " (the file is corrupt)");
  const WeightFormat format = parse_weight_format(meta("xtr.weight_format"));
  require(format == WeightFormat::int8 || format == WeightFormat::q4, what, " has weight format ",
          format_name(format), "; save_quantized writes int8 or q4");
  const Index group = Index(parse_count(meta("xtr.group"), what + " metadata 'xtr.group'", 4096));

  auto& params = net.parameters();
  auto copy = std::make_shared<WeightCopy>();
  copy->format = format;
  copy->group = group;
  copy->activations = resolve_activations(format, activations);
  copy->count = params.count();
  require(group >= 2 && group % 2 == 0, what, ": group ", group, " must be even and at least 2");
  // entries the file stores as floating point stay float (embedding tables, 1-D parameters); the rest are held
  std::vector<int> stored_float;
  for (std::size_t e = 0; e < params.entries().size(); ++e) {
    const auto* t = file.find(params.entries()[e].name);
    if (params.entries()[e].alias_of < 0 && t && t->dtype != safetensors::Dtype::I8 && t->dtype != safetensors::Dtype::U8)
      stored_float.push_back(int(e));
  }
  copy->lay_out(params, stored_float);
  std::vector<T> values(params.values().data(), params.values().data() + params.count());
  using safetensors::Dtype;
  auto shape_text = [](const std::vector<Index>& s) { return safetensors::detail::shape_str(s); };
  for (std::size_t e = 0; e < params.entries().size(); ++e) {
    const auto& entry = params.entries()[e];
    if (entry.alias_of >= 0) continue;
    const auto& t = file.at(entry.name);
    const Index rows = entry.shape.rows(), cols = entry.shape.cols();
    if (!copy->holds(int(e))) {
      require(t.shape == entry.shape.dims(), what, ": tensor '", entry.name, "' has shape ", shape_text(t.shape),
              ", the parameter ", entry.shape.str());
      const auto v = safetensors::to_vector<T>(t);
      std::copy(v.begin(), v.end(), values.begin() + entry.offset);
      continue;
    }
    const bool int8 = format == WeightFormat::int8;
    const std::vector<Index> want = int8 ? entry.shape.dims() : std::vector<Index>{rows, cols / 2};
    require(t.dtype == (int8 ? Dtype::I8 : Dtype::U8) && t.shape == want, what, ": tensor '", entry.name, "' is ",
            safetensors::dtype_name(t.dtype), " ", shape_text(t.shape), ", expected ", int8 ? "I8 " : "U8 ",
            shape_text(want), " (", format_name(format), " values of ", entry.shape.str(), ")");
    const auto& sc = file.at(entry.name + ".scales");
    const std::vector<Index> scale_shape{rows, cols / group};
    require((sc.dtype == Dtype::F16 || sc.dtype == Dtype::F32) && sc.shape == scale_shape, what, ": tensor '",
            entry.name, ".scales' is ", safetensors::dtype_name(sc.dtype), " ", shape_text(sc.shape),
            ", expected F16 (or F32) ", shape_text(scale_shape), " (one scale per group of ", group, " values of ",
            entry.shape.str(), ")");
    const auto scales = safetensors::to_vector<float>(sc);
    auto* out = copy->scales.data() + copy->scale_offset[e];
    for (std::size_t i = 0; i < scales.size(); ++i) {
      const float s = scales[i];
      require(std::isfinite(s) && s >= 0 && s <= detail::kHalfMax, what, ": tensor '", entry.name, ".scales' holds ", s,
              " (scales are finite, >= 0 and at most ", detail::kHalfMax, ", the largest half)");
      out[i] = detail::float_to_half_bits(s, false);  // F16: exactly the stored bits
    }
    if (int8) {
      std::memcpy(copy->q8.data() + entry.offset, t.bytes.data(), t.bytes.size());
    } else {
      std::memcpy(copy->q4.data() + copy->q4_offset[e], t.bytes.data(), t.bytes.size());
    }
  }
  // the parameters hold what the copy holds
  const WeightCopy& c = *copy;
  for (std::size_t e = 0; e < params.entries().size(); ++e) {
    const auto& entry = params.entries()[e];
    if (entry.alias_of >= 0 || !c.holds(int(e))) continue;
    for (Index i = 0; i < entry.shape.numel(); ++i) values[std::size_t(entry.offset + i)] = T(c.value(params, int(e), i));
  }
  std::copy(values.begin(), values.end(), params.values().data());
  copy->fingerprint = WeightCopy::fingerprint_of(params);
  net.use_weights(std::move(copy));
}

}  // namespace xtr
