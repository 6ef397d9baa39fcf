// Byte-level text data: reading raw / .gz / .zip / directories, splits, random windows and the cycling batch loader.
#include <unistd.h>
#include <zlib.h>

#include <catch2/catch.hpp>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "xtr/data/text_dataset.hpp"

#ifndef XTR_SHARED_DATA_DIR
#define XTR_SHARED_DATA_DIR "../shared/data"
#endif

namespace test_text_dataset {  // this file's names (the test executable may compile the files as one unit)

namespace fs = std::filesystem;
using Bytes = std::vector<std::uint8_t>;
using Catch::Contains;

namespace {

/// A fresh directory under the system temp dir, removed with everything in it.
struct TempDir {
  fs::path path;
  TempDir() {
    static int counter = 0;
    path = fs::temp_directory_path() /
           ("xtr_text_dataset_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::permissions(path / "locked", fs::perms::owner_all, ec);
    fs::remove_all(path, ec);
  }
  fs::path operator/(const std::string& name) const { return path / name; }
};

void write_file(const fs::path& path, const Bytes& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out.good());
}

/// Text-like bytes (compressible, so deflate really compresses) with some random bytes in [0, 256) mixed in.
Bytes make_text(std::size_t n, std::uint64_t seed) {
  const std::string words[] = {"the ", "quick ", "brown ", "fox ", "jumps ", "over ", "lazy ", "dog", ".\n", ", "};
  const xtr::RandomStream rng{seed, 7};
  Bytes out;
  for (std::uint64_t i = 0; out.size() < n; ++i) {
    if (rng.below(i, 8) == 0) {
      out.push_back(static_cast<std::uint8_t>(rng.below(i + (1ull << 40), 256)));
    } else {
      const std::string& w = words[rng.below(i + (1ull << 41), 10)];
      out.insert(out.end(), w.begin(), w.end());
    }
  }
  out.resize(n);
  return out;
}

/// Deflate `data`; window_bits 16 + 15 gives a gzip member, -15 a raw stream (zip method 8).
Bytes deflate_bytes(const Bytes& data, int window_bits) {
  z_stream z{};
  REQUIRE(deflateInit2(&z, 9, Z_DEFLATED, window_bits, 8, Z_DEFAULT_STRATEGY) == Z_OK);
  Bytes out(deflateBound(&z, static_cast<uLong>(data.size())) + 64);
  z.next_in = const_cast<Bytef*>(data.data());
  z.avail_in = static_cast<uInt>(data.size());
  z.next_out = out.data();
  z.avail_out = static_cast<uInt>(out.size());
  REQUIRE(deflate(&z, Z_FINISH) == Z_STREAM_END);
  out.resize(z.total_out);
  deflateEnd(&z);
  return out;
}
Bytes gzip_bytes(const Bytes& data) { return deflate_bytes(data, 16 + MAX_WBITS); }

std::uint32_t crc_of(const Bytes& data) {
  return static_cast<std::uint32_t>(crc32(0L, data.data(), static_cast<uInt>(data.size())));
}

void put(Bytes& out, std::uint64_t value, int width) {
  for (int i = 0; i < width; ++i) out.push_back(static_cast<std::uint8_t>(value >> (8 * i)));
}
void put(Bytes& out, const std::string& text) { out.insert(out.end(), text.begin(), text.end()); }

struct ZipEntry {
  std::string name;
  Bytes data;
  int method = 8;               // 0 stored, 8 deflated, anything else written as stored bytes with that method number
  std::uint32_t crc_xor = 0;    // corrupts the recorded CRC
  std::int64_t size_delta = 0;  // corrupts the recorded uncompressed size
};

/// A zip archive written by hand (PKWARE APPNOTE 4.3): local headers + data, central directory, end records.
/// zip64 = true saturates the 32-bit fields and records the real values in zip64 extra fields and end records.
Bytes make_zip(const std::vector<ZipEntry>& entries, bool zip64 = false) {
  Bytes out, directory;
  for (const ZipEntry& e : entries) {
    const Bytes packed = e.method == 8 ? deflate_bytes(e.data, -MAX_WBITS) : e.data;
    const std::uint32_t crc = crc_of(e.data) ^ e.crc_xor;
    const std::uint64_t size = static_cast<std::uint64_t>(static_cast<std::int64_t>(e.data.size()) + e.size_delta);
    const std::uint64_t local = out.size();
    put(out, 0x04034b50, 4);
    put(out, 20, 2);  // version needed
    put(out, 0, 2);   // flags
    put(out, static_cast<std::uint64_t>(e.method), 2);
    put(out, 0, 2);     // time
    put(out, 0x21, 2);  // date 1980-01-01
    put(out, crc, 4);
    put(out, packed.size(), 4);
    put(out, size, 4);
    put(out, e.name.size(), 2);
    put(out, 4, 2);  // a local extra field the reader must skip (differs from the central one)
    put(out, e.name);
    put(out, 0xCAFE, 2);
    put(out, 0, 2);
    out.insert(out.end(), packed.begin(), packed.end());

    put(directory, 0x02014b50, 4);
    put(directory, zip64 ? 45 : 20, 2);  // version made by
    put(directory, zip64 ? 45 : 20, 2);  // version needed
    put(directory, 0, 2);
    put(directory, static_cast<std::uint64_t>(e.method), 2);
    put(directory, 0, 2);
    put(directory, 0x21, 2);
    put(directory, crc, 4);
    put(directory, zip64 ? 0xFFFFFFFFu : packed.size(), 4);
    put(directory, zip64 ? 0xFFFFFFFFu : size, 4);
    put(directory, e.name.size(), 2);
    put(directory, zip64 ? 28 : 0, 2);  // extra length
    put(directory, 0, 2);               // comment length
    put(directory, 0, 2);               // disk
    put(directory, 0, 2);               // internal attributes
    put(directory, 0, 4);               // external attributes
    put(directory, zip64 ? 0xFFFFFFFFu : local, 4);
    put(directory, e.name);
    if (zip64) {
      put(directory, 0x0001, 2);
      put(directory, 24, 2);
      put(directory, size, 8);  // uncompressed, compressed, local header offset: APPNOTE order
      put(directory, packed.size(), 8);
      put(directory, local, 8);
    }
  }
  const std::uint64_t directory_offset = out.size();
  out.insert(out.end(), directory.begin(), directory.end());
  if (zip64) {
    const std::uint64_t record = out.size();
    put(out, 0x06064b50, 4);
    put(out, 44, 8);  // size of the rest of the record
    put(out, 45, 2);
    put(out, 45, 2);
    put(out, 0, 4);
    put(out, 0, 4);
    put(out, entries.size(), 8);
    put(out, entries.size(), 8);
    put(out, directory.size(), 8);
    put(out, directory_offset, 8);
    put(out, 0x07064b50, 4);  // locator
    put(out, 0, 4);
    put(out, record, 8);
    put(out, 1, 4);
  }
  put(out, 0x06054b50, 4);
  put(out, 0, 2);
  put(out, 0, 2);
  put(out, zip64 ? 0xFFFF : entries.size(), 2);
  put(out, zip64 ? 0xFFFF : entries.size(), 2);
  put(out, zip64 ? 0xFFFFFFFFu : directory.size(), 4);
  put(out, zip64 ? 0xFFFFFFFFu : directory_offset, 4);
  put(out, 5, 2);
  put(out, "hello");  // archive comment
  return out;
}

std::string error_of(const fs::path& path) {
  try {
    (void)xtr::read_bytes(path);
  } catch (const xtr::Error& e) {
    return e.what();
  }
  return "(no error)";
}

xtr::TextDataset counting_dataset(std::size_t n) {
  Bytes bytes(n);
  for (std::size_t i = 0; i < n; ++i) bytes[i] = static_cast<std::uint8_t>(i * 7 + i / 256);
  return xtr::TextDataset(bytes);
}

}  // namespace

TEST_CASE("read_bytes reads a raw file as it is", "[data]") {
  TempDir dir;
  const Bytes text = make_text(10000, 1);
  write_file(dir / "corpus.txt", text);
  CHECK(xtr::read_bytes(dir / "corpus.txt") == text);
  write_file(dir / "noext", text);
  CHECK(xtr::read_bytes(dir / "noext") == text);
}

TEST_CASE("read_bytes decompresses gzip, including multi-member files", "[data]") {
  TempDir dir;
  const Bytes a = make_text(50000, 2), b = make_text(3333, 3);
  Bytes packed = gzip_bytes(a);
  REQUIRE(packed.size() < a.size() / 2);
  write_file(dir / "a.gz", packed);
  CHECK(xtr::read_bytes(dir / "a.gz") == a);

  SECTION("two members concatenated, as `cat a.gz b.gz`, then zero padding") {
    const Bytes second = gzip_bytes(b);
    packed.insert(packed.end(), second.begin(), second.end());
    packed.insert(packed.end(), 100, 0);
    write_file(dir / "ab.GZ", packed);
    Bytes ab = a;
    ab.insert(ab.end(), b.begin(), b.end());
    CHECK(xtr::read_bytes(dir / "ab.GZ") == ab);
  }
  SECTION("a file written with zlib's gzwrite") {
    const fs::path path = dir / "gzwrite.gz";
    gzFile file = gzopen(path.c_str(), "wb");
    REQUIRE(file != nullptr);
    REQUIRE(gzwrite(file, a.data(), static_cast<unsigned>(a.size())) == static_cast<int>(a.size()));
    REQUIRE(gzclose(file) == Z_OK);
    CHECK(xtr::read_bytes(path) == a);
  }
  SECTION("an output larger than the size the trailer claims (multi-member, first member larger)") {
    Bytes big = gzip_bytes(make_text(200000, 4));
    const Bytes tiny = gzip_bytes(Bytes{'x'});
    big.insert(big.end(), tiny.begin(), tiny.end());
    write_file(dir / "big.gz", big);
    const Bytes got = xtr::read_bytes(dir / "big.gz");
    REQUIRE(got.size() == 200001);
    CHECK(got.back() == 'x');
  }
}

TEST_CASE("read_bytes rejects truncated or corrupt gzip", "[data]") {
  TempDir dir;
  const Bytes packed = gzip_bytes(make_text(20000, 5));
  const fs::path path = dir / "bad.gz";
  for (std::size_t keep : {std::size_t{0}, std::size_t{1}, std::size_t{10}, packed.size() / 2, packed.size() - 1}) {
    INFO("keeping " << keep << " of " << packed.size() << " bytes");
    write_file(path, Bytes(packed.begin(), packed.begin() + static_cast<std::ptrdiff_t>(keep)));
    const std::string message = error_of(path);
    CHECK_THAT(message, Contains("truncated or corrupt gzip") && Contains(path.string()));
  }
  SECTION("a flipped byte in the CRC-32 trailer") {
    Bytes bad = packed;
    bad[bad.size() - 6] ^= 0x40;
    write_file(path, bad);
    CHECK_THAT(error_of(path), Contains("truncated or corrupt gzip") && Contains("incorrect data check"));
  }
  SECTION("garbage after the last member") {
    Bytes bad = packed;
    put(bad, "trailing junk");
    write_file(path, bad);
    CHECK_THAT(error_of(path), Contains("truncated or corrupt gzip") && Contains("13 bytes after the member"));
  }
  SECTION("not gzip at all") {
    write_file(path, make_text(100, 6));
    CHECK_THAT(error_of(path), Contains("truncated or corrupt gzip") && Contains("magic"));
  }
}

TEST_CASE("read_bytes takes the first file entry of a zip archive", "[data]") {
  TempDir dir;
  const Bytes first = make_text(40000, 7), second = make_text(500, 8);
  const fs::path path = dir / "corpus.zip";
  SECTION("deflated, after a directory entry") {
    write_file(path, make_zip({{"enwik8/", {}, 0}, {"enwik8/enwik8", first, 8}, {"other", second, 8}}));
    CHECK(fs::file_size(path) < first.size() / 2);
    CHECK(xtr::read_bytes(path) == first);
  }
  SECTION("stored") {
    write_file(path, make_zip({{"a.txt", first, 0}, {"b.txt", second, 8}}));
    CHECK(xtr::read_bytes(path) == first);
  }
  SECTION("zip64 records and extra fields") {
    write_file(path, make_zip({{"a.txt", first, 8}, {"b.txt", second, 0}}, true));
    CHECK(xtr::read_bytes(path) == first);
  }
}

TEST_CASE("read_bytes rejects bad zip archives", "[data]") {
  TempDir dir;
  const Bytes text = make_text(30000, 9);
  const fs::path path = dir / "bad.zip";
  SECTION("no entries") {
    write_file(path, make_zip({}));
    CHECK_THAT(error_of(path), Contains("has no entries") && Contains(path.string()));
    write_file(path, make_zip({{"only/", {}, 0}}));
    CHECK_THAT(error_of(path), Contains("has no entries"));
  }
  SECTION("unsupported compression method") {
    write_file(path, make_zip({{"a.bz2", text, 12}}));
    CHECK_THAT(error_of(path), Contains("unsupported compression method 12") && Contains("'a.bz2'"));
  }
  SECTION("CRC mismatch") {
    write_file(path, make_zip({{"a.txt", text, 8, 0x1}}));
    CHECK_THAT(error_of(path), Contains("CRC mismatch") && Contains(path.string()));
    write_file(path, make_zip({{"a.txt", text, 0, 0x80000000u}}));
    CHECK_THAT(error_of(path), Contains("CRC mismatch"));
  }
  SECTION("uncompressed size differs from the header") {
    write_file(path, make_zip({{"a.txt", text, 8, 0, -100}}));
    CHECK_THAT(error_of(path), Contains("inflates to more than the 29900 bytes its header declares"));
    write_file(path, make_zip({{"a.txt", text, 8, 0, -1}}));
    CHECK_THAT(error_of(path), Contains("uncompressed size 30000 differs from the 29999 bytes"));
    write_file(path, make_zip({{"a.txt", text, 0, 0, -1}}));  // stored: sizes must agree
    CHECK_THAT(error_of(path), Contains("29999 uncompressed bytes cannot come from 30000 compressed bytes"));
    write_file(path, make_zip({{"a.txt", text, 8, 0, +5}}));
    CHECK_THAT(error_of(path), Contains("uncompressed size 30000 differs from the 30005 bytes"));
  }
  SECTION("corrupt deflate data") {
    Bytes zip = make_zip({{"a.txt", text, 8}});
    for (std::size_t i = 60; i < 90; ++i) zip[i] = 0xFF;
    write_file(path, zip);
    CHECK_THAT(error_of(path), (Contains("corrupt zip") || Contains("CRC mismatch")) && Contains("'a.txt'"));
  }
  SECTION("truncated: the end of central directory record is gone") {
    const Bytes zip = make_zip({{"a.txt", text, 8}});
    write_file(path, Bytes(zip.begin(), zip.begin() + static_cast<std::ptrdiff_t>(zip.size() / 2)));
    CHECK_THAT(error_of(path), Contains("no end of central directory record") && Contains(path.string()));
    write_file(path, Bytes{});
    CHECK_THAT(error_of(path), Contains("no end of central directory record"));
  }
  SECTION("central directory pointing past the end of the file") {
    Bytes zip = make_zip({{"a.txt", text, 8}});
    zip[zip.size() - 8] = 0x7F;  // high byte of the directory offset (before the comment length and the comment)
    write_file(path, zip);
    CHECK_THAT(error_of(path), Contains("corrupt zip") && Contains("past the end of the file"));
  }
}

TEST_CASE("read_bytes refuses decompression bombs: beyond 64 MiB, at most 256:1", "[data][errors]") {
  TempDir dir;
  // 80 MiB of zeros deflate to ~80 KB (1000:1): refused, and the gzip trailer's size is not trusted with memory
  const Bytes zeros((std::size_t(80) << 20), 0);
  const fs::path gz = dir / "bomb.gz", zip = dir / "bomb.zip";
  write_file(gz, gzip_bytes(zeros));
  CHECK(fs::file_size(gz) < zeros.size() / 500);
  CHECK_THAT(error_of(gz), Contains("bomb.gz") && Contains("a ratio above the limit of 256:1") &&
                               Contains("decompression bomb"));
  write_file(zip, make_zip({{"zeros.txt", zeros, 8}}));
  CHECK_THAT(error_of(zip), Contains("'zeros.txt'") && Contains("a ratio above the limit of 256:1"));
  // the same ratio below 64 MiB of output is a corpus, not a bomb
  const Bytes small((std::size_t(1) << 20), 0);
  write_file(gz, gzip_bytes(small));
  CHECK(xtr::read_bytes(gz) == small);
  write_file(zip, make_zip({{"zeros.txt", small, 8}}));
  CHECK(xtr::read_bytes(zip) == small);
}

TEST_CASE("read_bytes concatenates a directory like a fortune(6) database", "[data]") {
  TempDir dir;
  const Bytes a = make_text(300, 10), b = make_text(200, 11), c = make_text(100, 12);
  write_file(dir / "b", b);
  write_file(dir / "a", a);
  write_file(dir / "c.txt", c);
  write_file(dir / "a.dat", Bytes{1, 2, 3});  // strfile index: skipped
  fs::create_symlink("a", dir / "a.u8");      // skipped (also by suffix)
  fs::create_symlink("b", dir / "link");      // skipped: a symlink
  fs::create_directory(dir / "off");          // subdirectories are not read
  write_file(dir / "off" / "zzz", Bytes{9, 9, 9});
  Bytes expected = a;
  expected.insert(expected.end(), b.begin(), b.end());
  expected.insert(expected.end(), c.begin(), c.end());
  CHECK(xtr::read_bytes(dir.path) == expected);

  TempDir empty;
  write_file(empty / "x.dat", Bytes{1});
  CHECK_THAT(error_of(empty.path), Contains("holds no data files") && Contains(empty.path.string()));
  write_file(empty / "y", Bytes{});
  CHECK_THAT(error_of(empty.path), Contains("holds no data (0 bytes)"));
}

TEST_CASE("read_bytes reads the fortunes package's directory", "[data]") {
  const fs::path fortunes = "/usr/share/games/fortunes";
  if (!fs::is_regular_file(fortunes / "art")) {
    WARN("skipping: " << fortunes << " is absent (Debian package fortunes-min)");
    return;
  }
  const Bytes bytes = xtr::read_bytes(fortunes);
  const Bytes first_file = xtr::read_bytes(fortunes / "art");  // the first name in sorted order
  REQUIRE(bytes.size() > first_file.size());
  CHECK(std::equal(first_file.begin(), first_file.end(), bytes.begin()));
  const std::string text(bytes.begin(), bytes.end());
  CHECK(text.find("\n%\n") != std::string::npos);  // fortune separators, and no strfile indices: the .dat files
  CHECK(text.find(std::string("\0\0\0\2", 4)) == std::string::npos);  // start with version 2 as a 32-bit word
}

TEST_CASE("read_bytes names the path on missing, empty and unreadable files", "[data]") {
  TempDir dir;
  CHECK_THAT(error_of(dir / "missing.txt"), Contains("no such file") && Contains("missing.txt"));
  write_file(dir / "empty.txt", Bytes{});
  CHECK_THAT(error_of(dir / "empty.txt"), Contains("holds no data (0 bytes)") && Contains("empty.txt"));
  write_file(dir / "empty.gz", gzip_bytes(Bytes{}));
  CHECK_THAT(error_of(dir / "empty.gz"), Contains("holds no data (0 bytes)"));
  write_file(dir / "locked", Bytes{1, 2});
  fs::permissions(dir / "locked", fs::perms::none);
  if (::geteuid() == 0) {
    WARN("skipping the unreadable-file check: running as root, which reads any file");
  } else {
    CHECK_THAT(error_of(dir / "locked"), Contains("cannot open") && Contains("locked"));
  }
  if (fs::exists("/proc/self/mem")) {  // opens, but reading at offset 0 fails (EIO): the read-error path
    CHECK_THAT(error_of("/proc/self/mem"), Contains("cannot read '/proc/self/mem'"));
  }
}

TEST_CASE("TextDataset splits into the first 90% and the rest", "[data]") {
  const xtr::TextDataset data = counting_dataset(1000);
  const auto [train, valid] = data.split();
  CHECK(train.size() == 900);
  CHECK(valid.size() == 100);
  CHECK(train[0] == data[0]);
  CHECK(train[899] == data[899]);
  CHECK(valid[0] == data[900]);
  CHECK(valid[99] == data[999]);

  const auto [t2, v2] = counting_dataset(4154064).split(0.9);
  CHECK(t2.size() == 3738657);  // floor(0.9 * 4154064)
  CHECK(v2.size() == 4154064 - 3738657);

  const auto [t3, v3] = data.split_at(10);
  CHECK(t3.size() == 10);
  CHECK(v3.size() == 990);
  const auto [t4, v4] = v3.split(0.5);  // splits of splits keep their offsets
  CHECK(t4[0] == data[10]);
  CHECK(v4[0] == data[10 + 495]);

  CHECK_THROWS_WITH(data.split(1.0), Contains("train_fraction 1 must lie in (0, 1)"));
  CHECK_THROWS_WITH(data.split(0.0), Contains("train_fraction 0"));
  CHECK_THROWS_WITH(data.split_at(1000), Contains("byte 1000") && Contains("1000 bytes"));
  CHECK_THROWS_WITH(counting_dataset(5).split(0.1), Contains("byte 0") && Contains("5 bytes"));
}

TEST_CASE("TextDataset windows are the data at their start", "[data]") {
  const xtr::TextDataset data = counting_dataset(300);
  const auto w = data.window(17, 40);
  REQUIRE(w.size() == 40);
  for (std::size_t i = 0; i < w.size(); ++i) CHECK(w[i] == data[17 + static_cast<xtr::Index>(i)]);
  CHECK(data.window(0, 300).size() == 300);
  CHECK(data.window(300, 0).empty());
  CHECK_THROWS_WITH(data.window(290, 11), Contains("window [290, 301)") && Contains("300 bytes"));
  CHECK_THROWS_WITH(data.window(-1, 2), Contains("window [-1, 1)"));
}

TEST_CASE("random windows start uniformly in 0 .. size - seq_len - 2, as torch.randint", "[data]") {
  const xtr::Index size = 40, seq_len = 24;  // windows of 25 bytes; 15 possible starts: 0..14
  const xtr::TextDataset data = counting_dataset(static_cast<std::size_t>(size));
  const xtr::RandomStream rng{1234, 5};
  std::vector<int> hits(size, 0);
  for (std::uint64_t draw = 0; draw < 15000; ++draw) {
    const xtr::Index start = data.sample_start(seq_len + 1, rng, draw);
    REQUIRE(start >= 0);
    REQUIRE(start < size - seq_len - 1);
    ++hits[static_cast<std::size_t>(start)];
    const auto w = data.sample(seq_len + 1, rng, draw);
    REQUIRE(w.size() == static_cast<std::size_t>(seq_len + 1));
    REQUIRE(w.data() == data.bytes().data() + start);
  }
  for (xtr::Index s = 0; s < 15; ++s) {
    INFO("start " << s);
    CHECK(hits[static_cast<std::size_t>(s)] > 800);  // expected 1000 each; 800 is 6.5 sigma below
    CHECK(hits[static_cast<std::size_t>(s)] < 1200);
  }
  CHECK(data.sample_start(seq_len + 1, rng, 7) == data.sample_start(seq_len + 1, rng, 7));

  // Exactly seq_len + 2 bytes: one possible start. One byte fewer: an error naming both numbers.
  CHECK(counting_dataset(26).sample_start(25, rng, 99) == 0);
  CHECK_THROWS_WITH(counting_dataset(25).sample_start(25, rng, 0),
                    Contains("25 bytes") && Contains("seq_len + 1 = 25") && Contains("seq_len + 2 = 26"));
  CHECK_THROWS_WITH(xtr::BatchLoader(counting_dataset(100), 4, 99, 1),
                    Contains("100 bytes") && Contains("seq_len + 2 = 101"));
}

TEST_CASE("BatchLoader batches are a pure function of (seed, stream, k)", "[data]") {
  const xtr::TextDataset data = counting_dataset(5000);
  const xtr::Index B = 3, T = 64;
  xtr::BatchLoader a(data, B, T, 42, 1), b(data, B, T, 42, 1);
  std::vector<std::vector<std::int32_t>> seen;
  const std::int32_t* buffer = nullptr;
  for (int k = 0; k < 8; ++k) {
    CHECK(a.position() == static_cast<std::uint64_t>(k));
    const xtr::TokenBatch& batch = a.next();
    REQUIRE(batch.batch == B);
    REQUIRE(batch.length == T + 1);
    REQUIRE(batch.data.size() == static_cast<std::size_t>(B * (T + 1)));
    if (k == 0) buffer = batch.data.data();
    CHECK(batch.data.data() == buffer);  // the buffer is reused: no allocation per batch
    CHECK(b.next().data == batch.data);
    for (xtr::Index r = 0; r < B; ++r) {
      // Row r of batch k is the window at draw k*B + r of RandomStream{seed, stream}.
      const xtr::Index start = a.start(static_cast<std::uint64_t>(k), r);
      CHECK(start == static_cast<xtr::Index>(xtr::RandomStream{42, 1}.below(static_cast<std::uint64_t>(k * B + r),
                                                                            static_cast<std::uint64_t>(5000 - T - 1))));
      for (xtr::Index t = 0; t < T + 1; ++t) REQUIRE(batch(r, t) == data[start + t]);
    }
    seen.push_back(batch.data);
  }
  CHECK(seen[0] != seen[1]);

  SECTION("seek(k) resumes with exactly the batches an uninterrupted run sees") {
    xtr::BatchLoader resumed(data, B, T, 42, 1);
    resumed.seek(3);
    for (std::size_t k = 3; k < 8; ++k) CHECK(resumed.next().data == seen[k]);
    CHECK(resumed.position() == 8);
    resumed.seek(0);
    CHECK(resumed.next().data == seen[0]);
    xtr::TokenBatch out;
    resumed.fill(5, out);
    CHECK(out.data == seen[5]);
    CHECK(resumed.position() == 1);  // fill does not move the position
  }
  SECTION("other streams and seeds give other batches") {
    xtr::BatchLoader other_stream(data, B, T, 42, 2), other_seed(data, B, T, 43, 1);
    CHECK(other_stream.next().data != seen[0]);
    CHECK(other_seed.next().data != seen[0]);
  }
}

TEST_CASE("BatchLoader token ids cover the bytes 0..255", "[data]") {
  Bytes bytes(4096);
  for (std::size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<std::uint8_t>(255 - i % 256);
  xtr::BatchLoader loader(xtr::TextDataset(bytes), 8, 255, 7);
  std::set<std::int32_t> ids;
  for (int k = 0; k < 4; ++k) {
    for (std::int32_t id : loader.next().data) ids.insert(id);
  }
  CHECK(ids.size() == 256);
  CHECK(*ids.begin() == 0);
  CHECK(*ids.rbegin() == 255);
  CHECK_THROWS_WITH(xtr::BatchLoader(xtr::TextDataset(bytes), 0, 8, 1), Contains("batch size 0"));
  CHECK_THROWS_WITH(xtr::BatchLoader(xtr::TextDataset(bytes), 2, 0, 1), Contains("seq_len 0"));
}

TEST_CASE("enwik8-4M.gz from the shared data holds 4,154,064 bytes", "[data]") {
  const fs::path path = fs::path(XTR_SHARED_DATA_DIR) / "enwik8-4M.gz";
  if (!fs::exists(path)) {
    WARN("skipping: " << path << " is absent");
    return;
  }
  const xtr::TextDataset data = xtr::TextDataset::load(path);
  REQUIRE(data.size() == 4154064);
  const std::string head(data.bytes().begin(), data.bytes().begin() + 10);
  CHECK(head == "<mediawiki");
  const auto [train, valid] = data.split();
  CHECK(train.size() + valid.size() == data.size());
  xtr::BatchLoader loader(valid, 4, 1024, 0);
  CHECK(loader.next().data.size() == 4 * 1025);
}

}  // namespace test_text_dataset
