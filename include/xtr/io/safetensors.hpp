#pragma once
// safetensors (https://github.com/huggingface/safetensors), the Hugging Face checkpoint format. A file is
//   u64 little-endian N | N bytes of UTF-8 JSON header | data buffer
// with header {"__metadata__": {"k": "v"}, "name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}}.
// Offsets count from the start of the buffer; tensors are row-major, little-endian, and together cover the buffer
// exactly (no gaps, no overlap). Writers pad the header with spaces so the buffer starts 8-byte aligned.
#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <numeric>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

#include <fcntl.h>   // POSIX open/fsync for the atomic write
#include <signal.h>  // kill(pid, 0): whether a temporary file's writer still runs
#include <unistd.h>

#include "xtr/core/half.hpp"
#include "xtr/core/error.hpp"
#include "xtr/core/tensor.hpp"
#include "xtr/io/json.hpp"

namespace xtr::safetensors {

static_assert(std::endian::native == std::endian::little,
              "xtr: safetensors io copies raw little-endian bytes; big-endian hosts are not supported");

/// The largest header `read` accepts, in bytes (the reference implementation's limit).
inline constexpr std::uint64_t max_header_bytes = 100'000'000;

enum class Dtype { F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL };

struct DtypeInfo {
  Dtype dtype;
  std::string_view name;  // as spelled in the header
  std::size_t size;       // bytes per element
};
inline constexpr std::array<DtypeInfo, 10> dtypes{{{Dtype::F64, "F64", 8},
                                                   {Dtype::F32, "F32", 4},
                                                   {Dtype::F16, "F16", 2},
                                                   {Dtype::BF16, "BF16", 2},
                                                   {Dtype::I64, "I64", 8},
                                                   {Dtype::I32, "I32", 4},
                                                   {Dtype::I16, "I16", 2},
                                                   {Dtype::I8, "I8", 1},
                                                   {Dtype::U8, "U8", 1},
                                                   {Dtype::BOOL, "BOOL", 1}}};

[[nodiscard]] constexpr std::string_view dtype_name(Dtype d) { return dtypes[static_cast<std::size_t>(d)].name; }
[[nodiscard]] constexpr std::size_t dtype_size(Dtype d) { return dtypes[static_cast<std::size_t>(d)].size; }
[[nodiscard]] constexpr std::optional<Dtype> dtype_from_name(std::string_view name) {
  for (const DtypeInfo& info : dtypes)
    if (info.name == name) return info.dtype;
  return std::nullopt;
}

/// The dtype that stores a C++ element type as is.
template <class T>
inline constexpr Dtype dtype_of = [] {
  if constexpr (std::is_same_v<T, double>) return Dtype::F64;
  else if constexpr (std::is_same_v<T, float>) return Dtype::F32;
  else if constexpr (std::is_same_v<T, std::int64_t>) return Dtype::I64;
  else if constexpr (std::is_same_v<T, std::int32_t>) return Dtype::I32;
  else if constexpr (std::is_same_v<T, std::int16_t>) return Dtype::I16;
  else if constexpr (std::is_same_v<T, std::int8_t>) return Dtype::I8;
  else if constexpr (std::is_same_v<T, std::uint8_t>) return Dtype::U8;
  else if constexpr (std::is_same_v<T, bool>) return Dtype::BOOL;
  else static_assert(sizeof(T) == 0, "xtr: no safetensors dtype stores this type; use double, float, int64_t, "
                                     "int32_t, int16_t, int8_t, uint8_t or bool");
}();

/// One named tensor: its dtype, shape and raw bytes (row-major, little-endian).
struct TensorRecord {
  std::string name;
  Dtype dtype = Dtype::F32;
  std::vector<Index> shape;      // outermost first; {} is a scalar
  std::vector<std::byte> bytes;  // numel * dtype_size(dtype) bytes
};

/// The contents of a safetensors file.
struct File {
  std::vector<TensorRecord> tensors;           // in the order of their data in the buffer
  std::map<std::string, std::string> metadata;  // "__metadata__": strings only

  [[nodiscard]] const TensorRecord* find(std::string_view name) const {
    for (const TensorRecord& t : tensors)
      if (t.name == name) return &t;
    return nullptr;
  }
  [[nodiscard]] const TensorRecord& at(std::string_view name) const {
    if (const TensorRecord* t = find(name)) return *t;
    std::string names;
    for (std::size_t i = 0; i < tensors.size() && i < 8; ++i) names += (i ? ", " : "") + tensors[i].name;
    if (tensors.size() > 8) names += ", ...";
    throw Error(xtr::detail::cat("xtr: safetensors: no tensor ", json::Value(name).dump(), " among the ",
                                 tensors.size(), " tensors (", names, ")"));
  }
};

namespace detail {

template <class... Parts>
[[noreturn]] void fail(std::string_view what, Parts&&... parts) {
  throw Error(xtr::detail::cat("xtr: safetensors '", what, "': ", std::forward<Parts>(parts)...));
}
inline std::string quote(std::string_view s) { return json::Value(s).dump(); }
inline std::string shape_str(const std::vector<Index>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

/// numel(shape) * element_size, or nullopt if a dimension is negative or the product overflows 64 bits.
inline std::optional<std::uint64_t> byte_count(const std::vector<Index>& shape, std::size_t element_size) {
  std::uint64_t n = element_size;
  for (Index d : shape) {
    if (d < 0) return std::nullopt;
    const auto u = static_cast<std::uint64_t>(d);
    if (u != 0 && n > std::numeric_limits<std::uint64_t>::max() / u) return std::nullopt;
    n *= u;
  }
  return n;
}

/// The header length field, checked against the limit and the file size.
inline std::uint64_t header_length(std::span<const std::byte> first8, std::uint64_t file_bytes,
                                   std::string_view what) {
  if (file_bytes < 8) fail(what, "file is ", file_bytes, " bytes, shorter than the 8-byte header length field");
  std::uint64_t n = 0;
  std::memcpy(&n, first8.data(), 8);
  if (n > max_header_bytes) fail(what, "header length ", n, " exceeds the limit of ", max_header_bytes, " bytes");
  if (n > file_bytes - 8)
    fail(what, "header length ", n, " runs past the end of the file (", file_bytes - 8,
         " bytes follow the length field): truncated file?");
  return n;
}

/// A parsed header: records without bytes, and each record's [begin, end) in the buffer, both in buffer order.
struct Layout {
  File file;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> offsets;
};

inline std::uint64_t offset_value(const json::Value& v, std::string_view what, const std::string& tensor,
                                  int i) {
  if (!v.is_number() || v.as_number() < 0 || v.as_number() != std::trunc(v.as_number()) ||
      v.as_number() > static_cast<double>(json::max_exact_int))
    fail(what, "tensor ", tensor, ": data_offsets[", i, "] is ", v.dump(), ", expected an integer in [0, 2^53]");
  return static_cast<std::uint64_t>(v.as_int());
}

/// Validates the header against a data buffer of `buffer_bytes` bytes.
inline Layout parse_header(std::string_view text, std::uint64_t buffer_bytes, std::string_view what) {
  json::Value header;
  try {
    header = json::parse(text);
  } catch (const Error& e) {
    fail(what, "header is not valid JSON (its byte 0 is file byte 8): ", std::string_view(e.what()).substr(5));
  }
  if (!header.is_object()) fail(what, "header is a JSON ", json::kind_name(header.kind()), ", expected an object");

  Layout out;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> offsets;
  std::vector<TensorRecord> records;
  for (const auto& member : header.as_object()) {
    const std::string& key = member.first;  // not a structured binding: lambdas below capture these
    const json::Value& entry = member.second;
    const std::string name = quote(key);
    if (key == "__metadata__") {
      if (!entry.is_object()) fail(what, "__metadata__ is a JSON ", json::kind_name(entry.kind()), ", expected an object");
      for (const auto& [k, v] : entry.as_object()) {
        if (!v.is_string())
          fail(what, "__metadata__ value for ", quote(k), " is a JSON ", json::kind_name(v.kind()),
               ", expected a string");
        out.file.metadata.emplace(k, v.as_string());
      }
      continue;
    }
    if (!entry.is_object())
      fail(what, "tensor ", name, ": entry is a JSON ", json::kind_name(entry.kind()),
           ", expected an object with dtype, shape and data_offsets");
    const auto field = [&](std::string_view field_name, json::Kind kind) -> const json::Value& {
      const json::Value* v = entry.find(field_name);
      if (v == nullptr) fail(what, "tensor ", name, ": missing \"", field_name, "\"");
      if (v->kind() != kind)
        fail(what, "tensor ", name, ": \"", field_name, "\" is a JSON ", json::kind_name(v->kind()), ", expected ",
             json::kind_name(kind));
      return *v;
    };
    TensorRecord record;
    record.name = key;
    const std::string& dtype = field("dtype", json::Kind::string).as_string();
    const std::optional<Dtype> d = dtype_from_name(dtype);
    if (!d)
      fail(what, "tensor ", name, ": unknown dtype ", quote(dtype),
           " (supported: F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL)");
    record.dtype = *d;
    const json::Value::Array& dims = field("shape", json::Kind::array).as_array();
    for (std::size_t i = 0; i < dims.size(); ++i) {
      const double x = dims[i].is_number() ? dims[i].as_number() : -1;
      if (x < 0 || x != std::trunc(x) || x > static_cast<double>(json::max_exact_int))
        fail(what, "tensor ", name, ": shape[", i, "] is ", dims[i].dump(), ", expected a non-negative integer");
      record.shape.push_back(static_cast<Index>(x));
    }
    const json::Value::Array& range = field("data_offsets", json::Kind::array).as_array();
    if (range.size() != 2)
      fail(what, "tensor ", name, ": data_offsets has ", range.size(), " entries, expected [begin, end]");
    const std::uint64_t begin = offset_value(range[0], what, name, 0), end = offset_value(range[1], what, name, 1);
    if (end < begin) fail(what, "tensor ", name, ": data_offsets end ", end, " < begin ", begin);
    const std::optional<std::uint64_t> need = byte_count(record.shape, dtype_size(record.dtype));
    if (!need) fail(what, "tensor ", name, ": shape ", shape_str(record.shape), " overflows 64-bit byte counts");
    if (*need != end - begin)
      fail(what, "tensor ", name, ": data_offsets [", begin, ", ", end, "] span ", end - begin, " bytes, but shape ",
           shape_str(record.shape), " of ", dtype, " needs ", *need);
    if (end > buffer_bytes)
      fail(what, "tensor ", name, ": data_offsets end ", end, " runs past the data buffer of ", buffer_bytes,
           " bytes: truncated file?");
    records.push_back(std::move(record));
    offsets.emplace_back(begin, end);
  }

  // The tensors, in buffer order, must tile [0, buffer_bytes) exactly.
  std::vector<std::size_t> order(records.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return offsets[a] < offsets[b]; });
  std::uint64_t covered = 0;
  const TensorRecord* previous = nullptr;
  for (std::size_t i : order) {
    const auto [begin, end] = offsets[i];
    if (begin > covered)
      fail(what, "data buffer bytes [", covered, ", ", begin, ") belong to no tensor (gap before tensor ",
           quote(records[i].name), ")");
    if (begin < covered)
      fail(what, "tensor ", quote(records[i].name), " at [", begin, ", ", end, ") overlaps tensor ",
           quote(previous->name), " which ends at ", covered);
    covered = end;
    previous = &records[i];
  }
  if (covered != buffer_bytes)
    fail(what, "data buffer has ", buffer_bytes, " bytes but the tensors cover only the first ", covered,
         " (trailing bytes)");
  for (std::size_t i : order) {
    out.file.tensors.push_back(std::move(records[i]));
    out.offsets.push_back(offsets[i]);
  }
  return out;
}

inline std::string errno_text() { return std::error_code(errno, std::generic_category()).message(); }

/// Removes "<path>.tmp.<pid>[.<n>]" files whose process no longer runs (what a killed save leaves behind); files of
/// a live process (a save in progress) and anything else are left alone.
inline void remove_stale_temporaries(const std::filesystem::path& path) {
  const std::filesystem::path dir = path.has_parent_path() ? path.parent_path() : std::filesystem::path(".");
  const std::string prefix = path.filename().string() + ".tmp.";
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) continue;
    const std::string rest = name.substr(prefix.size());
    const std::string pid_text = rest.substr(0, rest.find('.'));
    if (pid_text.empty() || pid_text.size() > 9 ||
        !std::all_of(pid_text.begin(), pid_text.end(), [](char c) { return c >= '0' && c <= '9'; }))
      continue;
    const pid_t pid = static_cast<pid_t>(std::stol(pid_text));
    if (pid == ::getpid() || ::kill(pid, 0) == 0 || errno != ESRCH) continue;  // alive (or not ours to judge)
    if (!entry.is_regular_file(ec) || entry.is_symlink(ec)) continue;
    std::error_code ignored;
    std::filesystem::remove(entry.path(), ignored);
  }
}

inline void write_all(int fd, const void* data, std::size_t n, std::string_view what,
                      const std::filesystem::path& temp) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ::ssize_t k = ::write(fd, p, n);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) fail(what, "write to ", temp, " failed: ", errno_text());
    p += k, n -= static_cast<std::size_t>(k);
  }
}

inline float half_to_float(std::uint16_t h) { return xtr::detail::half_bits_to_float(h); }

template <class S>
S load(const std::byte* p) {
  S s;
  std::memcpy(&s, p, sizeof(S));
  return s;
}

}  // namespace detail

/// Parses a whole file held in memory; `what` names it in errors. Validates everything `read` does.
[[nodiscard]] inline File parse(std::span<const std::byte> whole_file, const std::string& what) {
  const std::uint64_t n = detail::header_length(whole_file.first(std::min<std::size_t>(8, whole_file.size())),
                                                whole_file.size(), what);
  const auto header = whole_file.subspan(8, n);
  const auto buffer = whole_file.subspan(8 + n);
  detail::Layout layout = detail::parse_header(
      std::string_view(reinterpret_cast<const char*>(header.data()), header.size()), buffer.size(), what);
  for (std::size_t i = 0; i < layout.file.tensors.size(); ++i) {
    const auto [begin, end] = layout.offsets[i];
    layout.file.tensors[i].bytes.assign(buffer.begin() + begin, buffer.begin() + end);
  }
  return std::move(layout.file);
}

/// Reads and validates a safetensors file; errors name the file, the tensor, the value and the limit.
[[nodiscard]] inline File read(const std::filesystem::path& path) {
  const std::string what = path.string();
  std::error_code ec;
  const std::uintmax_t file_bytes = std::filesystem::file_size(path, ec);
  if (ec) detail::fail(what, "cannot read: ", ec.message());
  std::ifstream in(path, std::ios::binary);
  if (!in) detail::fail(what, "cannot open for reading: ", detail::errno_text());
  std::array<std::byte, 8> first{};
  in.read(reinterpret_cast<char*>(first.data()), static_cast<std::streamsize>(std::min<std::uintmax_t>(8, file_bytes)));
  const std::uint64_t n = detail::header_length(first, file_bytes, what);
  std::string header(n, '\0');
  in.read(header.data(), static_cast<std::streamsize>(n));
  if (!in) detail::fail(what, "file ended while reading the ", n, "-byte header");
  detail::Layout layout = detail::parse_header(header, file_bytes - 8 - n, what);
  // Validation proved the tensors tile the buffer in this order, so the buffer reads sequentially.
  for (std::size_t i = 0; i < layout.file.tensors.size(); ++i) {
    TensorRecord& t = layout.file.tensors[i];
    t.bytes.resize(layout.offsets[i].second - layout.offsets[i].first);
    in.read(reinterpret_cast<char*>(t.bytes.data()), static_cast<std::streamsize>(t.bytes.size()));
    if (!in) detail::fail(what, "file ended while reading tensor ", detail::quote(t.name), " (changed while reading?)");
  }
  return std::move(layout.file);
}

/// Writes `file` atomically: to a new "<path>.tmp.<pid>.<n>" in the same directory (created with O_EXCL and
/// O_NOFOLLOW: never an existing file or a link), fsync, then rename over `path`. Data is laid out in the order of
/// `file.tensors`. On failure the temp file is removed and `path` is untouched. Temporary files of `path` left by a
/// process that no longer runs (a killed save) are removed first.
inline void write(const std::filesystem::path& path, const File& file) {
  const std::string what = path.string();
  std::set<std::string_view> names;
  json::Value header = json::Value::object();
  if (!file.metadata.empty()) {
    json::Value& meta = header.set("__metadata__", json::Value::object());
    for (const auto& [k, v] : file.metadata) meta.as_object().emplace_back(k, v);
  }
  std::uint64_t offset = 0;
  for (const TensorRecord& t : file.tensors) {
    const std::string name = detail::quote(t.name);
    if (t.name == "__metadata__") detail::fail(what, "cannot write a tensor named \"__metadata__\" (reserved)");
    if (!names.insert(t.name).second) detail::fail(what, "cannot write: duplicate tensor name ", name);
    const std::optional<std::uint64_t> need = detail::byte_count(t.shape, dtype_size(t.dtype));
    if (!need || *need != t.bytes.size())
      detail::fail(what, "cannot write tensor ", name, ": it holds ", t.bytes.size(), " bytes, but shape ",
                   detail::shape_str(t.shape), " of ", dtype_name(t.dtype), " needs ",
                   need ? std::to_string(*need) : std::string("a non-negative, non-overflowing size"));
    json::Value entry = json::Value::object();
    entry.as_object().emplace_back("dtype", dtype_name(t.dtype));
    entry.as_object().emplace_back("shape", json::Value::Array(t.shape.begin(), t.shape.end()));
    entry.as_object().emplace_back("data_offsets", json::Value::Array{offset, offset + *need});
    header.as_object().emplace_back(t.name, std::move(entry));
    offset += *need;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // the buffer then starts at an 8-byte boundary
  const std::uint64_t n = text.size();

  detail::remove_stale_temporaries(path);
  static std::atomic<std::uint64_t> counter{0};
  std::filesystem::path temp;
  int fd = -1;
  for (int attempt = 0; attempt < 100 && fd < 0; ++attempt) {
    temp = path;
    temp += ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter++);
    fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0666);
    if (fd < 0 && errno != EEXIST) break;
  }
  if (fd < 0) detail::fail(what, "cannot create temporary file ", temp, ": ", detail::errno_text());
  try {
    detail::write_all(fd, &n, 8, what, temp);
    detail::write_all(fd, text.data(), text.size(), what, temp);
    for (const TensorRecord& t : file.tensors) detail::write_all(fd, t.bytes.data(), t.bytes.size(), what, temp);
    if (::fsync(fd) != 0) detail::fail(what, "fsync of ", temp, " failed: ", detail::errno_text());
  } catch (...) {
    ::close(fd);
    std::error_code ignored;
    std::filesystem::remove(temp, ignored);
    throw;
  }
  std::error_code ec;
  if (::close(fd) != 0) ec = std::error_code(errno, std::generic_category());
  if (!ec) std::filesystem::rename(temp, path, ec);
  if (ec) {
    std::error_code ignored;
    std::filesystem::remove(temp, ignored);
    detail::fail(what, "cannot move ", temp, " over ", path, ": ", ec.message());
  }
  // Make the rename itself durable; a failure here leaves a complete file, so it is not an error.
  const std::filesystem::path dir = path.has_parent_path() ? path.parent_path() : std::filesystem::path(".");
  if (const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

/// Numel of a record's shape (throws on negative or overflowing shapes).
[[nodiscard]] inline Index numel(const TensorRecord& t) {
  const std::optional<std::uint64_t> n = detail::byte_count(t.shape, 1);
  require(n && *n <= static_cast<std::uint64_t>(std::numeric_limits<Index>::max()), "safetensors: tensor ",
          detail::quote(t.name), " has invalid shape ", detail::shape_str(t.shape));
  return static_cast<Index>(*n);
}

/// The elements of `t` as T. float/double read F64, F32, F16 and BF16; int64_t/int32_t read I64, I32, I16, I8 and
/// U8 (int32_t checks each I64 value fits). Other pairs throw naming the dtype and the tensor.
template <class T>
[[nodiscard]] std::vector<T> to_vector(const TensorRecord& t) {
  constexpr bool floating = std::is_same_v<T, float> || std::is_same_v<T, double>;
  static_assert(floating || std::is_same_v<T, std::int64_t> || std::is_same_v<T, std::int32_t>,
                "xtr: safetensors::to_vector reads float, double, std::int64_t or std::int32_t");
  constexpr std::string_view type_name = std::is_same_v<T, float>    ? "float"
                                         : std::is_same_v<T, double> ? "double"
                                         : std::is_same_v<T, std::int64_t> ? "int64_t" : "int32_t";
  const auto n = static_cast<std::size_t>(numel(t));
  const std::size_t size = dtype_size(t.dtype);
  require(t.bytes.size() == n * size, "safetensors: tensor ", detail::quote(t.name), " holds ", t.bytes.size(),
          " bytes, but shape ", detail::shape_str(t.shape), " of ", dtype_name(t.dtype), " needs ", n * size);
  std::vector<T> out(n);
  const std::byte* p = t.bytes.data();
  const auto convert = [&](auto read_one) {
    for (std::size_t i = 0; i < n; ++i) {
      const auto v = read_one(p + i * size);
      if constexpr (std::is_same_v<T, std::int32_t> && std::is_same_v<decltype(v), const std::int64_t>)
        require(std::in_range<std::int32_t>(v), "safetensors: tensor ", detail::quote(t.name), " element ", i,
                " is ", v, ", outside the range of int32_t");
      out[i] = static_cast<T>(v);
    }
  };
  using detail::load;
  if constexpr (floating) {
    switch (t.dtype) {
      case Dtype::F64: convert(load<double>); return out;
      case Dtype::F32: convert(load<float>); return out;
      case Dtype::F16: convert([](const std::byte* b) { return detail::half_to_float(load<std::uint16_t>(b)); }); return out;
      case Dtype::BF16: convert([](const std::byte* b) { return xtr::detail::bf16_bits_to_float(load<std::uint16_t>(b)); }); return out;
      default: break;
    }
  } else {
    switch (t.dtype) {
      case Dtype::I64: convert(load<std::int64_t>); return out;
      case Dtype::I32: convert(load<std::int32_t>); return out;
      case Dtype::I16: convert(load<std::int16_t>); return out;
      case Dtype::I8: convert(load<std::int8_t>); return out;
      case Dtype::U8: convert(load<std::uint8_t>); return out;
      default: break;
    }
  }
  throw Error(xtr::detail::cat("xtr: safetensors: tensor ", detail::quote(t.name), " has dtype ",
                               dtype_name(t.dtype), ", which to_vector<", type_name, "> does not convert"));
}

/// A record holding `data` (row-major, numel(shape) elements) in the dtype that stores T as is.
template <class T>
[[nodiscard]] TensorRecord make_record(std::string name, std::vector<Index> shape, std::span<const T> data) {
  TensorRecord t{.name = std::move(name), .dtype = dtype_of<T>, .shape = std::move(shape), .bytes = {}};
  const std::optional<std::uint64_t> n = detail::byte_count(t.shape, 1);
  require(n.has_value() && *n == data.size(), "safetensors: tensor ", detail::quote(t.name), " has shape ",
          detail::shape_str(t.shape), " but ", data.size(), " elements were given");
  t.bytes.resize(data.size_bytes());
  if (!data.empty()) std::memcpy(t.bytes.data(), data.data(), data.size_bytes());
  return t;
}

}  // namespace xtr::safetensors
