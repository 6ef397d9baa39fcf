// safetensors: round trips, the exact byte layout, validation of corrupted files, conversions, atomic writes.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "xtr/io/safetensors.hpp"

namespace test_safetensors {  // this file's names (the test executable may compile the files as one unit)

using Catch::Contains;
namespace fs = std::filesystem;
namespace st = xtr::safetensors;
using xtr::Index;

namespace {

/// A fresh directory under the system temp directory, removed with its contents at scope exit.
struct TempDir {
  fs::path path;
  TempDir() {
    static std::atomic<int> counter{0};
    path = fs::temp_directory_path() / ("xtr_safetensors_" + std::to_string(::getpid()) + "_" +
                                        std::to_string(counter++) + "_" + std::to_string(std::random_device{}()));
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(path, ignored);
  }
  [[nodiscard]] std::vector<std::string> entries() const {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(path)) names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  }
};

std::vector<std::byte> slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::vector<char> chars((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::byte> out(chars.size());
  std::memcpy(out.data(), chars.data(), chars.size());
  return out;
}

void spill(const fs::path& p, const std::vector<std::byte>& bytes) {
  std::ofstream out(p, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

/// A file: the u64 little-endian length of `header`, `header`, then `buffer`.
std::vector<std::byte> assemble(const std::string& header, const std::vector<std::uint8_t>& buffer) {
  std::vector<std::byte> out(8);
  const std::uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  for (char c : header) out.push_back(static_cast<std::byte>(c));
  for (std::uint8_t b : buffer) out.push_back(static_cast<std::byte>(b));
  return out;
}

/// Parses a hand-built file whose data buffer holds `buffer_bytes` bytes.
st::File parse_text(const std::string& header, std::size_t buffer_bytes) {
  return st::parse(assemble(header, std::vector<std::uint8_t>(buffer_bytes, 0x5A)), "corrupt.safetensors");
}

template <class T>
std::vector<T> random_values(std::mt19937_64& rng, std::size_t n) {
  std::vector<T> v(n);
  for (T& x : v) {
    if constexpr (std::is_floating_point_v<T>) x = std::uniform_real_distribution<T>(-3, 3)(rng);
    else if constexpr (std::is_same_v<T, bool>) x = rng() & 1;
    else x = static_cast<T>(rng());
  }
  return v;
}

std::vector<std::byte> random_bytes(std::mt19937_64& rng, std::size_t n) {
  std::vector<std::byte> v(n);
  for (std::byte& b : v) b = static_cast<std::byte>(rng());
  return v;
}

template <class T>
st::TensorRecord record(std::string name, std::vector<Index> shape, const std::vector<T>& data) {
  return st::make_record<T>(std::move(name), std::move(shape), std::span<const T>(data));
}

}  // namespace

TEST_CASE("safetensors: write then read round-trips every dtype, odd sizes and metadata", "[safetensors]") {
  std::mt19937_64 rng(std::random_device{}());
  const auto f64 = random_values<double>(rng, 6);
  const auto f32 = random_values<float>(rng, 35);
  const auto i64 = random_values<std::int64_t>(rng, 3);
  const auto i32 = random_values<std::int32_t>(rng, 4);
  const auto i16 = random_values<std::int16_t>(rng, 3);
  const auto i8 = random_values<std::int8_t>(rng, 5);
  const auto u8 = random_values<std::uint8_t>(rng, 7);
  const std::vector<std::uint8_t> flags = {1, 0, 1};
  st::File file;
  file.tensors.push_back(record<float>("layers.0.attn.to_q.weight", {5, 7}, f32));
  file.tensors.push_back(record<std::int8_t>("i8", {5}, i8));  // odd byte counts leave later data unaligned
  file.tensors.push_back(record<double>("f64", {2, 3}, f64));
  file.tensors.push_back(st::TensorRecord{"f16", st::Dtype::F16, {3}, random_bytes(rng, 6)});
  file.tensors.push_back(st::TensorRecord{"bf16", st::Dtype::BF16, {1, 1, 2}, random_bytes(rng, 4)});
  file.tensors.push_back(record<std::int64_t>("i64", {3}, i64));
  file.tensors.push_back(record<std::int32_t>("i32", {2, 2}, i32));
  file.tensors.push_back(record<std::int16_t>("i16", {3}, i16));
  file.tensors.push_back(record<std::uint8_t>("u8", {7}, u8));
  file.tensors.push_back(st::TensorRecord{"mask", st::Dtype::BOOL, {3}, {std::byte{1}, std::byte{0}, std::byte{1}}});
  file.tensors.push_back(record<float>("scalar", {}, std::vector<float>{f32[0]}));
  file.tensors.push_back(record<float>("empty", {0, 4}, std::vector<float>{}));
  file.tensors.push_back(record<float>("caf\xC3\xA9 \"quoted\"", {1}, std::vector<float>{2.5f}));
  file.metadata = {{"format", "pt"}, {"note", "line\nbreak \xE2\x82\xAC"}};

  TempDir dir;
  const fs::path path = dir.path / "model.safetensors";
  st::write(path, file);
  const st::File back = st::read(path);

  REQUIRE(back.tensors.size() == file.tensors.size());
  for (std::size_t i = 0; i < file.tensors.size(); ++i) {
    INFO(file.tensors[i].name);
    CHECK(back.tensors[i].name == file.tensors[i].name);
    CHECK(back.tensors[i].dtype == file.tensors[i].dtype);
    CHECK(back.tensors[i].shape == file.tensors[i].shape);
    CHECK(back.tensors[i].bytes == file.tensors[i].bytes);
  }
  CHECK(back.metadata == file.metadata);
  CHECK(st::to_vector<float>(back.at("layers.0.attn.to_q.weight")) == f32);
  CHECK(st::to_vector<double>(back.at("f64")) == f64);
  CHECK(st::to_vector<std::int64_t>(back.at("i64")) == i64);
  CHECK(st::to_vector<std::int32_t>(back.at("i32")) == i32);
  CHECK(st::to_vector<float>(back.at("scalar")) == std::vector<float>{f32[0]});
  CHECK(st::to_vector<float>(back.at("empty")).empty());
  CHECK(st::numel(back.at("scalar")) == 1);
  CHECK(st::numel(back.at("empty")) == 0);
  CHECK(back.find("absent") == nullptr);
  REQUIRE_THROWS_WITH(back.at("absent"), Contains("no tensor \"absent\" among the 13 tensors (layers.0.attn.to_q."
                                                  "weight, i8, f64, f16, bf16, i64, i32, i16, ...)"));

  // Parsing the bytes in memory gives the same file; the data buffer starts 8-byte aligned.
  const std::vector<std::byte> bytes = slurp(path);
  std::uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  CHECK(n % 8 == 0);
  CHECK(st::parse(bytes, "in memory").tensors[2].bytes == file.tensors[2].bytes);
  CHECK(dir.entries() == std::vector<std::string>{"model.safetensors"});  // no temp file left behind
}

TEST_CASE("safetensors: a file with no tensors and no metadata", "[safetensors]") {
  TempDir dir;
  st::write(dir.path / "empty.safetensors", st::File{});
  const std::vector<std::byte> bytes = slurp(dir.path / "empty.safetensors");
  CHECK(bytes == assemble("{}      ", {}));
  const st::File back = st::read(dir.path / "empty.safetensors");
  CHECK(back.tensors.empty());
  CHECK(back.metadata.empty());
}

TEST_CASE("safetensors: the written bytes match the format exactly", "[safetensors]") {
  st::File file;
  file.tensors.push_back(record<float>("a", {2}, std::vector<float>{1.0f, -2.0f}));
  file.tensors.push_back(record<std::int16_t>("b", {1, 1}, std::vector<std::int16_t>{0x0102}));
  file.metadata = {{"fmt", "pt"}};
  TempDir dir;
  st::write(dir.path / "tiny.safetensors", file);

  const std::string json = R"({"__metadata__":{"fmt":"pt"},)"
                           R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                           R"("b":{"dtype":"I16","shape":[1,1],"data_offsets":[8,10]}})";
  REQUIRE(json.size() == 138);
  const std::string padded = json + "      ";  // 144 = the next multiple of 8
  const std::vector<std::uint8_t> data = {0x00, 0x00, 0x80, 0x3F, 0x00, 0x00, 0x00, 0xC0,  // 1.0f, -2.0f
                                          0x02, 0x01};                                    // 0x0102
  const std::vector<std::byte> expected = assemble(padded, data);
  const std::vector<std::byte> actual = slurp(dir.path / "tiny.safetensors");
  REQUIRE(actual.size() == 8 + 144 + 10);
  CHECK(std::to_integer<int>(actual[0]) == 144);  // little-endian length field
  CHECK(std::all_of(actual.begin() + 1, actual.begin() + 8, [](std::byte b) { return b == std::byte{0}; }));
  CHECK(actual == expected);

  // The reader accepts the same content built by hand, padded or not, with tensors listed in any order.
  CHECK(st::parse(expected, "hand-built").tensors[1].bytes == file.tensors[1].bytes);
  const st::File reordered = parse_text(R"({"b":{"dtype":"I16","shape":[1],"data_offsets":[8,10]},)"
                                        R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                                        10);
  REQUIRE(reordered.tensors.size() == 2);
  CHECK(reordered.tensors[0].name == "a");  // buffer order
  CHECK(reordered.tensors[1].name == "b");
  const st::File zeros = parse_text(R"({"z":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},)"
                                    R"("y":{"dtype":"U8","shape":[2,0],"data_offsets":[0,0]}})",
                                    0);
  CHECK(zeros.tensors.size() == 2);
}

TEST_CASE("safetensors: every truncation of a valid file is rejected", "[safetensors]") {
  st::File file;
  file.tensors.push_back(record<float>("w", {3}, std::vector<float>{1, 2, 3}));
  file.tensors.push_back(record<std::int32_t>("b", {2}, std::vector<std::int32_t>{4, 5}));
  TempDir dir;
  const fs::path path = dir.path / "full.safetensors";
  st::write(path, file);
  const std::vector<std::byte> full = slurp(path);
  std::uint64_t n = 0;
  std::memcpy(&n, full.data(), 8);

  for (std::size_t k = 0; k < full.size(); ++k) {
    INFO("truncated to " << k << " of " << full.size() << " bytes");
    const std::vector<std::byte> cut(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(k));
    if (k < 8) {
      REQUIRE_THROWS_WITH(st::parse(cut, "cut"),
                          Contains("'cut': file is " + std::to_string(k) + " bytes, shorter than the 8-byte header"));
    } else if (k < 8 + n) {
      REQUIRE_THROWS_WITH(st::parse(cut, "cut"), Contains("header length " + std::to_string(n) +
                                                          " runs past the end of the file (" + std::to_string(k - 8) +
                                                          " bytes follow the length field): truncated file?"));
    } else {
      REQUIRE_THROWS_WITH(st::parse(cut, "cut"),
                          Contains("runs past the data buffer of " + std::to_string(k - 8 - n) + " bytes: truncated"));
    }
  }
  // The same through read(), naming the path.
  const fs::path cut_path = dir.path / "cut.safetensors";
  spill(cut_path, std::vector<std::byte>(full.begin(), full.end() - 3));
  REQUIRE_THROWS_WITH(st::read(cut_path), Contains(cut_path.string()) && Contains("tensor \"b\": data_offsets end 20 "
                                                                                  "runs past the data buffer of 17"));
  spill(cut_path, std::vector<std::byte>(full.begin(), full.begin() + 20));
  REQUIRE_THROWS_WITH(st::read(cut_path), Contains("header length " + std::to_string(n) + " runs past the end"));
  spill(cut_path, std::vector<std::byte>(full.begin(), full.begin() + 5));
  REQUIRE_THROWS_WITH(st::read(cut_path), Contains("file is 5 bytes, shorter than the 8-byte header length field"));
  REQUIRE_THROWS_WITH(st::read(dir.path / "absent.safetensors"),
                      Contains("absent.safetensors': cannot read: No such file or directory"));
  REQUIRE_THROWS_WITH(st::read(dir.path), Contains("cannot read"));

  // Appended bytes are rejected too: the tensors must cover the buffer exactly.
  std::vector<std::byte> longer = full;
  longer.push_back(std::byte{0});
  REQUIRE_THROWS_WITH(st::parse(longer, "longer"),
                      Contains("data buffer has 21 bytes but the tensors cover only the first 20 (trailing bytes)"));
}

TEST_CASE("safetensors: corrupt headers are rejected with the file, the tensor and the value", "[safetensors]") {
  const auto fails = [](const std::string& header, std::size_t buffer, const std::string& message) {
    INFO(header);
    REQUIRE_THROWS_WITH(parse_text(header, buffer),
                        Catch::StartsWith("xtr: safetensors 'corrupt.safetensors': ") && Contains(message));
  };
  std::vector<std::byte> huge = assemble("{}", {});
  const std::uint64_t absurd = 200'000'000;
  std::memcpy(huge.data(), &absurd, 8);
  REQUIRE_THROWS_WITH(st::parse(huge, "huge"), Contains("header length 200000000 exceeds the limit of 100000000 bytes"));

  fails("", 0, "header is not valid JSON (its byte 0 is file byte 8): JSON parse error at byte 0");
  fails(R"({"a":)", 0, "header is not valid JSON (its byte 0 is file byte 8): JSON parse error at byte 5: expected a JSON value");
  fails("[1,2]", 0, "header is a JSON array, expected an object");
  fails(R"({"a":3})", 0, "tensor \"a\": entry is a JSON number, expected an object with dtype, shape and data_offsets");
  fails(R"({"a":{"shape":[1],"data_offsets":[0,4]}})", 4, "tensor \"a\": missing \"dtype\"");
  fails(R"({"a":{"dtype":"F32","data_offsets":[0,4]}})", 4, "tensor \"a\": missing \"shape\"");
  fails(R"({"a":{"dtype":"F32","shape":[1]}})", 4, "tensor \"a\": missing \"data_offsets\"");
  fails(R"({"a":{"dtype":32,"shape":[1],"data_offsets":[0,4]}})", 4, "tensor \"a\": \"dtype\" is a JSON number, "
                                                                     "expected string");
  fails(R"({"a":{"dtype":"F32","shape":4,"data_offsets":[0,4]}})", 4, "tensor \"a\": \"shape\" is a JSON number, expected array");
  fails(R"({"a":{"dtype":"F8_E4M3","shape":[1],"data_offsets":[0,1]}})", 1,
        "tensor \"a\": unknown dtype \"F8_E4M3\" (supported: F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL)");
  fails(R"({"a":{"dtype":"F32","shape":[2,-1],"data_offsets":[0,4]}})", 4,
        "tensor \"a\": shape[1] is -1, expected a non-negative integer");
  fails(R"({"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", 4, "shape[0] is 1.5, expected a non-negative");
  fails(R"({"a":{"dtype":"F32","shape":["2"],"data_offsets":[0,4]}})", 4, "shape[0] is \"2\", expected a non-negative");
  fails(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", 4, "data_offsets has 1 entries, expected [begin, end]");
  fails(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}})", 4,
        "tensor \"a\": data_offsets[0] is -4, expected an integer in [0, 2^53]");
  fails(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4.5]}})", 4, "data_offsets[1] is 4.5, expected an integer");
  fails(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}})", 8, "tensor \"a\": data_offsets end 4 < begin 8");
  fails(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8,
        "tensor \"a\": data_offsets [0, 8] span 8 bytes, but shape [3] of F32 needs 12");
  fails(R"({"a":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", 8,
        "tensor \"a\": shape [4294967296, 4294967296] overflows 64-bit byte counts");
  fails(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 8,
        "tensor \"a\": data_offsets end 12 runs past the data buffer of 8 bytes: truncated file?");
  fails(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
        12, "tensor \"b\" at [4, 12) overlaps tensor \"a\" which ends at 8");
  fails(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"z":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}})",
        8, "tensor \"z\" at [4, 4) overlaps tensor \"a\" which ends at 8");
  fails(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
        12, "data buffer bytes [4, 8) belong to no tensor (gap before tensor \"b\")");
  fails(R"({"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8,
        "data buffer bytes [0, 4) belong to no tensor (gap before tensor \"b\")");
  fails(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 6,
        "data buffer has 6 bytes but the tensors cover only the first 4 (trailing bytes)");
  fails(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
        8, "header is not valid JSON (its byte 0 is file byte 8): JSON parse error at byte 54: duplicate key \"a\"");
  fails(R"({"__metadata__":{"k":"v","n":1}})", 0, "__metadata__ value for \"n\" is a JSON number, expected a string");
  fails(R"({"__metadata__":["k"]})", 0, "__metadata__ is a JSON array, expected an object");
}

TEST_CASE("safetensors: typed reads convert where sensible and name the tensor otherwise", "[safetensors]") {
  const auto raw = [](std::string name, st::Dtype dtype, std::vector<Index> shape, std::vector<std::uint8_t> b) {
    std::vector<std::byte> bytes(b.size());
    std::memcpy(bytes.data(), b.data(), b.size());
    return st::TensorRecord{std::move(name), dtype, std::move(shape), std::move(bytes)};
  };
  // F16 (little-endian): 1, -2, 65504 (largest), 2^-24 (smallest subnormal), -0, +inf.
  const auto half = raw("h", st::Dtype::F16, {6}, {0x00, 0x3C, 0x00, 0xC0, 0xFF, 0x7B, 0x01, 0x00, 0x00, 0x80, 0x00, 0x7C});
  const std::vector<float> h = st::to_vector<float>(half);
  CHECK(h[0] == 1.0f);
  CHECK(h[1] == -2.0f);
  CHECK(h[2] == 65504.0f);
  CHECK(h[3] == std::ldexp(1.0f, -24));
  CHECK((h[4] == 0.0f && std::signbit(h[4])));
  CHECK(std::isinf(h[5]));
  CHECK(st::to_vector<double>(half)[2] == 65504.0);
  CHECK(std::isnan(st::to_vector<float>(raw("nan", st::Dtype::F16, {1}, {0x01, 0x7E}))[0]));
  // BF16: 1, -3, 0.15625 as its upper 16 bits.
  CHECK(st::to_vector<float>(raw("bf", st::Dtype::BF16, {3}, {0x80, 0x3F, 0x40, 0xC0, 0x20, 0x3E})) ==
        std::vector<float>{1.0f, -3.0f, 0.15625f});

  std::mt19937_64 rng(std::random_device{}());
  const auto f32 = random_values<float>(rng, 9);
  const auto f64 = random_values<double>(rng, 9);
  CHECK(st::to_vector<double>(record<float>("f", {9}, f32)) == std::vector<double>(f32.begin(), f32.end()));
  std::vector<float> narrowed(f64.size());
  std::transform(f64.begin(), f64.end(), narrowed.begin(), [](double d) { return static_cast<float>(d); });
  CHECK(st::to_vector<float>(record<double>("d", {9}, f64)) == narrowed);

  CHECK(st::to_vector<std::int64_t>(record<std::int32_t>("i", {3}, std::vector<std::int32_t>{-7, 0, 2147483647})) ==
        std::vector<std::int64_t>{-7, 0, 2147483647});
  CHECK(st::to_vector<std::int32_t>(record<std::int64_t>("l", {2}, std::vector<std::int64_t>{-5, 2147483647})) ==
        std::vector<std::int32_t>{-5, 2147483647});
  CHECK(st::to_vector<std::int32_t>(record<std::int8_t>("c", {2}, std::vector<std::int8_t>{-128, 127})) ==
        std::vector<std::int32_t>{-128, 127});
  CHECK(st::to_vector<std::int64_t>(record<std::uint8_t>("u", {2}, std::vector<std::uint8_t>{0, 255})) ==
        std::vector<std::int64_t>{0, 255});
  CHECK(st::to_vector<std::int32_t>(record<std::int16_t>("s", {1}, std::vector<std::int16_t>{-300})) ==
        std::vector<std::int32_t>{-300});

  REQUIRE_THROWS_WITH(
      st::to_vector<std::int32_t>(record<std::int64_t>("big", {3}, std::vector<std::int64_t>{1, 2, 5000000000})),
      Contains("tensor \"big\" element 2 is 5000000000, outside the range of int32_t"));
  REQUIRE_THROWS_WITH(st::to_vector<float>(record<std::int64_t>("ids", {1}, std::vector<std::int64_t>{1})),
                      Contains("tensor \"ids\" has dtype I64, which to_vector<float> does not convert"));
  REQUIRE_THROWS_WITH(st::to_vector<std::int32_t>(record<float>("w", {1}, std::vector<float>{1})),
                      Contains("tensor \"w\" has dtype F32, which to_vector<int32_t> does not convert"));
  REQUIRE_THROWS_WITH(st::to_vector<double>(raw("m", st::Dtype::BOOL, {1}, {1})),
                      Contains("tensor \"m\" has dtype BOOL, which to_vector<double> does not convert"));
  REQUIRE_THROWS_WITH(st::to_vector<float>(raw("short", st::Dtype::F32, {2}, {0, 0, 0})),
                      Contains("tensor \"short\" holds 3 bytes, but shape [2] of F32 needs 8"));
  REQUIRE_THROWS_WITH(record<float>("w", {2, 3}, std::vector<float>(5)),
                      Contains("tensor \"w\" has shape [2, 3] but 5 elements were given"));
  REQUIRE_THROWS_WITH(record<float>("w", {-1}, std::vector<float>{}), Contains("has shape [-1] but 0 elements"));
}

TEST_CASE("safetensors: writes are atomic and leave no temporary files", "[safetensors]") {
  TempDir dir;
  const fs::path path = dir.path / "ckpt.safetensors";
  st::File old_file;
  old_file.tensors.push_back(record<float>("w", {2}, std::vector<float>{1, 2}));
  st::write(path, old_file);
  const std::vector<std::byte> old_bytes = slurp(path);

  st::File new_file;
  new_file.tensors.push_back(record<double>("w", {3}, std::vector<double>{4, 5, 6}));
  new_file.metadata = {{"step", "2"}};

  SECTION("overwriting replaces the file and leaves only it") {
    st::write(path, new_file);
    CHECK(st::to_vector<double>(st::read(path).at("w")) == std::vector<double>{4, 5, 6});
    CHECK(dir.entries() == std::vector<std::string>{"ckpt.safetensors"});
  }
  SECTION("a missing directory throws naming the temporary file, and creates nothing") {
    const fs::path nowhere = dir.path / "no_such_dir" / "x.safetensors";
    REQUIRE_THROWS_WITH(st::write(nowhere, new_file),
                        Contains("cannot create temporary file") && Contains("x.safetensors.tmp.") &&
                            Contains("No such file or directory"));
    CHECK(dir.entries() == std::vector<std::string>{"ckpt.safetensors"});
  }
  SECTION("links planted under the temporary names are never followed; with no free name the old file stays") {
    const fs::path victim = dir.path / "victim";
    std::ofstream(victim) << "keep";
    std::vector<fs::path> planted;
    for (int n = 0; n < 2000; ++n) {  // every name this process's next writes would try
      fs::path temp = path;
      temp += ".tmp." + std::to_string(::getpid()) + "." + std::to_string(n);
      fs::create_symlink(victim, temp);
      planted.push_back(temp);
    }
    REQUIRE_THROWS_WITH(st::write(path, new_file), Contains("cannot create temporary file") && Contains("exists"));
    CHECK(slurp(path) == old_bytes);
    CHECK(fs::file_size(victim) == 4);  // "keep", untouched
    for (const auto& p : planted) fs::remove(p);
    fs::remove(victim);
    CHECK(dir.entries() == std::vector<std::string>{"ckpt.safetensors"});
  }
  SECTION("when the rename fails the temporary file is removed") {
    const fs::path blocked = dir.path / "blocked";
    fs::create_directories(blocked / "inside");  // a non-empty directory cannot be renamed over
    REQUIRE_THROWS_WITH(st::write(blocked, new_file), Contains("cannot move") && Contains("blocked"));
    CHECK(dir.entries() == std::vector<std::string>{"blocked", "ckpt.safetensors"});
    CHECK(fs::is_directory(blocked / "inside"));
  }
  SECTION("invalid records are rejected before anything is written") {
    st::File bad = new_file;
    bad.tensors[0].bytes.pop_back();
    REQUIRE_THROWS_WITH(st::write(path, bad), Contains("'" + path.string() + "': cannot write tensor \"w\": it holds "
                                                       "23 bytes, but shape [3] of F64 needs 24"));
    bad = new_file;
    bad.tensors.push_back(bad.tensors[0]);
    REQUIRE_THROWS_WITH(st::write(path, bad), Contains("cannot write: duplicate tensor name \"w\""));
    bad = new_file;
    bad.tensors[0].name = "__metadata__";
    REQUIRE_THROWS_WITH(st::write(path, bad), Contains("tensor named \"__metadata__\" (reserved)"));
    bad = new_file;
    bad.tensors[0].shape = {-3};
    REQUIRE_THROWS_WITH(st::write(path, bad), Contains("shape [-3] of F64 needs a non-negative, non-overflowing size"));
    CHECK(slurp(path) == old_bytes);
    CHECK(dir.entries() == std::vector<std::string>{"ckpt.safetensors"});
  }
}

}  // namespace test_safetensors
