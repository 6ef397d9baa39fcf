#pragma once
// Byte-level text data for decoder-only language modelling, as in x-transformers' train_enwik8.py: every byte is a
// token (256 tokens), train on the first 90% and validate on the rest, and train on random windows of seq_len + 1
// bytes (`rand_start = torch.randint(0, len - seq_len - 1)`; `data[rand_start : rand_start + seq_len + 1]`).
// Windows are drawn from a counter-based RandomStream, so batch k is a pure function of (seed, stream, k) and a resumed
// run sees exactly the batches an uninterrupted one would.
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "xtr/core/checked.hpp"
#include "xtr/core/error.hpp"
#include "xtr/core/rng.hpp"
#include "xtr/core/tensor.hpp"
#include "xtr/core/tokens.hpp"

namespace xtr {

namespace detail {

/// zlib counts in 32-bit uInt: feed and drain it in pieces of at most 1 GiB.
inline constexpr std::size_t zlib_chunk = std::size_t{1} << 30;

[[nodiscard]] inline std::string quoted(const std::filesystem::path& path) { return "'" + path.string() + "'"; }

[[nodiscard]] inline std::string hex32(std::uint32_t value) {
  char text[16];
  std::snprintf(text, sizeof text, "0x%08x", static_cast<unsigned>(value));
  return text;
}

/// A whole file, as it is on disk.
[[nodiscard]] inline std::vector<std::uint8_t> read_file_bytes(const std::filesystem::path& path) {
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> file(std::fopen(path.string().c_str(), "rb"), &std::fclose);
  require(file != nullptr, "cannot open ", quoted(path), ": ", std::strerror(errno));
  std::error_code ec;
  const auto expected = std::filesystem::file_size(path, ec);
  std::vector<std::uint8_t> bytes(std::max<std::size_t>(ec ? 0 : static_cast<std::size_t>(expected) + 1, 4096));
  std::size_t used = 0;
  for (;;) {
    if (used == bytes.size()) bytes.resize(2 * bytes.size());
    const std::size_t got = std::fread(bytes.data() + used, 1, bytes.size() - used, file.get());
    used += got;
    if (got == 0) break;
  }
  require(!std::ferror(file.get()), "cannot read ", quoted(path), ": ", std::strerror(errno));
  bytes.resize(used);
  return bytes;
}

/// The most bytes a compressed corpus may inflate to (1 GiB: enwik9 fits): a decompression bomb is an error, not an
/// exhausted machine.
inline constexpr std::size_t kMaxDecompressedBytes = std::size_t(1) << 30;

/// Beyond 64 MiB of output, a compressed corpus may inflate at most 256:1. Text compresses 3-10:1 (enwik8 about 3:1);
/// deflate's own limit is 1032:1, which is what a bomb (a few MB of zeros) reaches. So a 0.6 MB file that inflates to
/// 600 MB is refused long before it is all in memory, while any real corpus up to kMaxDecompressedBytes loads.
inline constexpr std::size_t kBombCheckBytes = std::size_t(64) << 20;
inline constexpr std::size_t kMaxCompressionRatio = 256;

/// Throws when `out_bytes` of output from `in_bytes` of compressed input looks like a decompression bomb.
inline void check_compression_ratio(std::size_t in_bytes, std::size_t out_bytes, std::string_view what) {
  require(out_bytes <= kBombCheckBytes || out_bytes / kMaxCompressionRatio <= in_bytes, what, " inflates ", in_bytes,
          " compressed bytes to at least ", out_bytes, " bytes, a ratio above the limit of ", kMaxCompressionRatio,
          ":1 for outputs over ", kBombCheckBytes >> 20, " MiB (a decompression bomb; real text compresses about 3:1)");
}

/// gzip (RFC 1952) with any number of concatenated members, as `gzip -d` reads it; zero padding after the last member
/// is ignored (as gzip does). zlib checks each member's CRC-32 and length trailer. More than `limit` bytes of output
/// is an error naming the file and the limit.
[[nodiscard]] inline std::vector<std::uint8_t> gunzip(std::span<const std::uint8_t> in,
                                                      const std::filesystem::path& path,
                                                      std::size_t limit = kMaxDecompressedBytes) {
  require(in.size() >= 2 && in[0] == 0x1f && in[1] == 0x8b, "truncated or corrupt gzip ", quoted(path), ": ",
          in.size() < 2 ? "it holds only " + std::to_string(in.size()) + " bytes"
                        : std::string("it does not start with the gzip magic bytes 1f 8b"));
  // The last member's trailer holds its size mod 2^32: a good first guess, trusted only up to deflate's 1032:1 limit.
  std::size_t guess = in.size() * 4;
  if (in.size() >= 18) {
    const std::size_t isize = std::size_t{in[in.size() - 4]} | std::size_t{in[in.size() - 3]} << 8 |
                              std::size_t{in[in.size() - 2]} << 16 | std::size_t{in[in.size() - 1]} << 24;
    if (isize > 0 && isize <= in.size() * 1032) guess = isize;
  }
  // A bomb's trailer is not trusted with memory: the first buffer holds at most what the ratio check allows.
  guess = std::min(guess, std::max(kBombCheckBytes, in.size() * kMaxCompressionRatio));
  std::vector<std::uint8_t> out(std::min(guess, limit) + 1);

  z_stream z{};
  require(inflateInit2(&z, 16 + MAX_WBITS) == Z_OK, "zlib inflateInit2 failed for ", quoted(path));
  const std::unique_ptr<z_stream, int (*)(z_stream*)> end(&z, &inflateEnd);
  std::size_t in_pos = 0, out_pos = 0;
  for (;;) {
    if (out_pos == out.size()) {
      require(out_pos <= limit, "gzip ", quoted(path), " inflates to more than the limit of ", limit,
              " bytes (a decompression bomb, or a corpus larger than xtr reads)");
      check_compression_ratio(in.size(), out_pos, "gzip " + quoted(path));
      out.resize(std::min(2 * out.size(), limit + 1));
    }
    z.next_in = const_cast<Bytef*>(in.data() + in_pos);  // zlib's API is not const-correct
    z.avail_in = static_cast<uInt>(std::min(in.size() - in_pos, zlib_chunk));
    z.next_out = out.data() + out_pos;
    z.avail_out = static_cast<uInt>(std::min(out.size() - out_pos, zlib_chunk));
    const uInt avail_in = z.avail_in, avail_out = z.avail_out;
    const int rc = inflate(&z, Z_NO_FLUSH);
    in_pos += avail_in - z.avail_in;
    out_pos += avail_out - z.avail_out;
    if (rc == Z_OK) continue;
    if (rc == Z_STREAM_END) {
      const auto rest = in.subspan(in_pos);
      if (std::all_of(rest.begin(), rest.end(), [](std::uint8_t b) { return b == 0; })) break;
      require(rest.size() >= 2 && rest[0] == 0x1f && rest[1] == 0x8b, "truncated or corrupt gzip ", quoted(path), ": ",
              rest.size(), " bytes after the member that ends at byte ", in_pos, " are not another gzip member");
      inflateReset(&z);
      continue;
    }
    require(rc != Z_MEM_ERROR, "out of memory while decompressing ", quoted(path), " (", out_pos, " bytes so far)");
    throw Error(cat("xtr: truncated or corrupt gzip ", quoted(path), ": ",
                    rc == Z_BUF_ERROR && in_pos == in.size() ? std::string("the input ends inside a member")
                    : z.msg                                  ? std::string(z.msg)
                                                             : "zlib error " + std::to_string(rc),
                    " (at compressed byte ", in_pos, " of ", in.size(), ", ", out_pos, " bytes decompressed)"));
  }
  require(out_pos <= limit, "gzip ", quoted(path), " inflates to more than the limit of ", limit,
          " bytes (a decompression bomb, or a corpus larger than xtr reads)");
  check_compression_ratio(in.size(), out_pos, "gzip " + quoted(path));
  out.resize(out_pos);
  return out;
}

/// Little-endian fields of a zip archive, bounds-checked.
struct ZipFields {
  std::span<const std::uint8_t> bytes;
  const std::filesystem::path& path;

  void check(std::uint64_t offset, std::uint64_t width) const {
    require(offset <= bytes.size() && width <= bytes.size() - offset, "corrupt zip ", quoted(path), ": ", width,
            " bytes at byte ", offset, " lie past the end of the file (", bytes.size(), " bytes)");
  }
  [[nodiscard]] std::uint64_t le(std::uint64_t offset, int width) const {
    check(offset, static_cast<std::uint64_t>(width));
    std::uint64_t value = 0;
    for (int i = width; i-- > 0;) value = value << 8 | bytes[offset + static_cast<std::uint64_t>(i)];
    return value;
  }
};

/// The first file entry of a zip archive (PKWARE APPNOTE: end of central directory -> central directory -> local
/// header), stored (method 0) or deflated (method 8), checked against its CRC-32 and uncompressed size. Zip64 aware.
[[nodiscard]] inline std::vector<std::uint8_t> unzip_first(std::span<const std::uint8_t> in,
                                                           const std::filesystem::path& path) {
  constexpr std::uint64_t saturated = 0xFFFFFFFFu;
  const ZipFields f{in, path};
  // End of central directory: 22 bytes plus a comment of up to 65535, so search backwards over the last 65557 bytes.
  bool found = false;
  std::uint64_t eocd = 0;
  if (in.size() >= 22) {
    const std::uint64_t last = in.size() - 22, first = last > 65535 ? last - 65535 : 0;
    for (std::uint64_t at = last + 1; !found && at-- > first;) {
      found = f.le(at, 4) == 0x06054b50 && at + 22 + f.le(at + 20, 2) <= in.size();
      eocd = at;
    }
  }
  require(found, "corrupt zip ", quoted(path), ": no end of central directory record in its ", in.size(),
          " bytes (not a zip archive, or truncated)");
  std::uint64_t entries = f.le(eocd + 10, 2), directory = f.le(eocd + 16, 4);
  if (eocd >= 20 && f.le(eocd - 20, 4) == 0x07064b50) {  // zip64 locator -> zip64 end of central directory
    const std::uint64_t record = f.le(eocd - 20 + 8, 8);
    require(f.le(record, 4) == 0x06064b50, "corrupt zip ", quoted(path), ": no zip64 end of central directory at byte ",
            record);
    entries = f.le(record + 32, 8);
    directory = f.le(record + 48, 8);
  }
  require(entries > 0, "zip ", quoted(path), " has no entries");

  // The first entry that is not a directory.
  std::uint64_t at = directory;
  for (std::uint64_t i = 0; i < entries; ++i) {
    require(f.le(at, 4) == 0x02014b50, "corrupt zip ", quoted(path), ": central directory entry ", i, " at byte ", at,
            " has a bad signature");
    const std::uint64_t flags = f.le(at + 8, 2), method = f.le(at + 10, 2);
    const auto crc = static_cast<std::uint32_t>(f.le(at + 16, 4));
    std::uint64_t packed = f.le(at + 20, 4), size = f.le(at + 24, 4), local = f.le(at + 42, 4);
    const std::uint64_t name_length = f.le(at + 28, 2), extra_length = f.le(at + 30, 2);
    const std::uint64_t next = at + 46 + name_length + extra_length + f.le(at + 32, 2);
    f.check(at + 46, name_length + extra_length);
    const std::string name(in.begin() + static_cast<std::ptrdiff_t>(at + 46),
                           in.begin() + static_cast<std::ptrdiff_t>(at + 46 + name_length));
    if (!name.empty() && name.back() == '/') {
      at = next;
      continue;
    }
    // Zip64 extended information (id 0x0001): 64-bit values of the saturated fields, in this order.
    for (std::uint64_t x = at + 46 + name_length, end = x + extra_length; x + 4 <= end;) {
      const std::uint64_t id = f.le(x, 2), length = f.le(x + 2, 2);
      std::uint64_t field = x + 4;
      if (id == 1) {
        for (std::uint64_t* value : {&size, &packed, &local}) {
          if (*value == saturated && field + 8 <= x + 4 + length) {
            *value = f.le(field, 8);
            field += 8;
          }
        }
      }
      x += 4 + length;
    }
    const std::string entry = quoted(path) + " entry '" + name + "'";
    require(method == 0 || method == 8, "zip ", entry, " uses unsupported compression method ", method,
            " (supported: 0 = stored, 8 = deflated)");
    require((flags & 1) == 0, "zip ", entry, " is encrypted, which is not supported");
    require(f.le(local, 4) == 0x04034b50, "corrupt zip ", entry, ": no local file header at byte ", local);
    const std::uint64_t data = local + 30 + f.le(local + 26, 2) + f.le(local + 28, 2);
    require(data <= in.size() && packed <= in.size() - data, "corrupt zip ", entry, ": its ", packed,
            " compressed bytes at byte ", data, " run past the end of the file (", in.size(), " bytes)");
    const auto source = in.subspan(static_cast<std::size_t>(data), static_cast<std::size_t>(packed));
    require(method == 8 ? size <= packed * 1032 + 1032 : size == packed, "corrupt zip ", entry, ": ", size,
            " uncompressed bytes cannot come from ", packed, " compressed bytes with method ", method);

    require(size <= kMaxDecompressedBytes, "zip ", entry, " inflates to ", size, " bytes, more than the limit of ",
            kMaxDecompressedBytes, " bytes");
    check_compression_ratio(static_cast<std::size_t>(packed), static_cast<std::size_t>(size), "zip " + entry);
    std::vector<std::uint8_t> out(static_cast<std::size_t>(size) + 1);  // one spare byte detects overlong data
    std::size_t out_pos = 0;
    if (method == 0) {
      std::copy(source.begin(), source.end(), out.begin());
      out_pos = source.size();
    } else {
      z_stream z{};
      require(inflateInit2(&z, -MAX_WBITS) == Z_OK, "zlib inflateInit2 failed for ", entry);
      const std::unique_ptr<z_stream, int (*)(z_stream*)> end(&z, &inflateEnd);
      std::size_t in_pos = 0;
      for (int rc = Z_OK; rc != Z_STREAM_END;) {
        require(out_pos < out.size(), "corrupt zip ", entry, ": it inflates to more than the ", size,
                " bytes its header declares");
        z.next_in = const_cast<Bytef*>(source.data() + in_pos);
        z.avail_in = static_cast<uInt>(std::min(source.size() - in_pos, zlib_chunk));
        z.next_out = out.data() + out_pos;
        z.avail_out = static_cast<uInt>(std::min(out.size() - out_pos, zlib_chunk));
        const uInt avail_in = z.avail_in, avail_out = z.avail_out;
        rc = inflate(&z, Z_NO_FLUSH);
        in_pos += avail_in - z.avail_in;
        out_pos += avail_out - z.avail_out;
        require(rc == Z_OK || rc == Z_STREAM_END || (rc == Z_BUF_ERROR && in_pos < source.size()), "corrupt zip ",
                entry, ": ",
                rc == Z_BUF_ERROR ? std::string("the deflate stream ends early")
                : z.msg           ? std::string(z.msg)
                                  : "zlib error " + std::to_string(rc),
                " (at compressed byte ", in_pos, " of ", packed, ")");
      }
    }
    require(out_pos == size, "corrupt zip ", entry, ": uncompressed size ", out_pos, " differs from the ", size,
            " bytes its header declares");
    out.resize(out_pos);
    uLong computed = crc32(0L, Z_NULL, 0);
    for (std::size_t done = 0; done < out.size(); done += zlib_chunk) {
      computed = crc32(computed, out.data() + done, static_cast<uInt>(std::min(out.size() - done, zlib_chunk)));
    }
    require(computed == crc, "CRC mismatch in zip ", entry, ": computed ", hex32(static_cast<std::uint32_t>(computed)),
            ", header says ", hex32(crc));
    return out;
  }
  throw Error(cat("xtr: zip ", quoted(path), " has no entries that are files (", entries, " directories)"));
}

/// Regular files of a directory (not symlinks, not *.dat / *.u8), concatenated in sorted name order. This reads a
/// fortune(6) directory such as /usr/share/games/fortunes: *.dat are strfile indices, *.u8 symlinks to the texts.
[[nodiscard]] inline std::vector<std::uint8_t> read_directory(const std::filesystem::path& dir) {
  namespace fs = std::filesystem;
  std::vector<fs::path> files;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const fs::directory_entry& entry = *it;
    const std::string name = entry.path().filename().string();
    std::error_code type_ec;
    if (entry.is_symlink(type_ec) || !entry.is_regular_file(type_ec) || name.ends_with(".dat") ||
        name.ends_with(".u8")) {
      continue;
    }
    files.push_back(entry.path());
  }
  require(!ec, "cannot list directory ", quoted(dir), ": ", ec.message());
  require(!files.empty(), "directory ", quoted(dir),
          " holds no data files (regular files, not symlinks, not named *.dat or *.u8)");
  std::sort(files.begin(), files.end());
  std::vector<std::uint8_t> bytes;
  for (const fs::path& file : files) {
    const auto part = read_file_bytes(file);
    bytes.insert(bytes.end(), part.begin(), part.end());
  }
  return bytes;
}

}  // namespace detail

/// The bytes of a text corpus: a raw file, a `.gz` (gzip, multi-member), a `.zip` (its first file entry) or a
/// directory (its data files concatenated in name order, see detail::read_directory). Errors name the path.
[[nodiscard]] inline std::vector<std::uint8_t> read_bytes(const std::filesystem::path& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status status = fs::status(path, ec);
  require(!ec || ec == std::errc::no_such_file_or_directory, "cannot read ", detail::quoted(path), ": ", ec.message());
  require(fs::exists(status), "cannot read ", detail::quoted(path), ": no such file or directory");
  std::vector<std::uint8_t> bytes;
  if (fs::is_directory(status)) {
    bytes = detail::read_directory(path);
  } else {
    std::string extension = path.extension().string();
    std::transform(extension.begin(), extension.end(), extension.begin(),
                   [](unsigned char c) { return static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c); });
    bytes = detail::read_file_bytes(path);
    if (extension == ".gz") {
      bytes = detail::gunzip(bytes, path);
    } else if (extension == ".zip") {
      bytes = detail::unzip_first(bytes, path);
    }
  }
  require(!bytes.empty(), detail::quoted(path), " holds no data (0 bytes)");
  return bytes;
}

/// A byte corpus; every byte is a token in [0, 256). Copies share one immutable buffer, so split() copies nothing.
class TextDataset {
 public:
  TextDataset() = default;
  explicit TextDataset(std::vector<std::uint8_t> bytes)
      : storage_(std::make_shared<const std::vector<std::uint8_t>>(std::move(bytes))),
        size_(static_cast<Index>(storage_->size())) {}
  /// read_bytes(path) as a dataset.
  [[nodiscard]] static TextDataset load(const std::filesystem::path& path) { return TextDataset(read_bytes(path)); }

  [[nodiscard]] Index size() const { return size_; }
  [[nodiscard]] std::span<const std::uint8_t> bytes() const {
    return size_ == 0 ? std::span<const std::uint8_t>{}
                      : std::span(storage_->data() + offset_, static_cast<std::size_t>(size_));
  }
  [[nodiscard]] std::uint8_t operator[](Index i) const { return storage_->data()[offset_ + i]; }

  /// Bytes [start, start + length).
  [[nodiscard]] std::span<const std::uint8_t> window(Index start, Index length) const {
    require(start >= 0 && length >= 0 && start <= size_ && length <= size_ - start, "window [", start, ", ",
            start + length, ") lies outside the text's ", size_, " bytes");
    return bytes().subspan(static_cast<std::size_t>(start), static_cast<std::size_t>(length));
  }

  /// {train, validation}: the first `train_size` bytes and the rest (x-transformers: np.split(data, [int(90e6)])).
  [[nodiscard]] std::pair<TextDataset, TextDataset> split_at(Index train_size) const {
    require(train_size > 0 && train_size < size_, "a split at byte ", train_size,
            " must leave both parts non-empty: the text has ", size_, " bytes");
    return {TextDataset(storage_, offset_, train_size),
            TextDataset(storage_, offset_ + train_size, size_ - train_size)};
  }
  /// {train, validation}: the first floor(train_fraction * size) bytes and the rest.
  [[nodiscard]] std::pair<TextDataset, TextDataset> split(double train_fraction = 0.9) const {
    require(train_fraction > 0.0 && train_fraction < 1.0, "train_fraction ", train_fraction, " must lie in (0, 1)");
    return split_at(static_cast<Index>(train_fraction * static_cast<double>(size_)));
  }

  /// Start of a random window of `seq_len_plus_one` bytes for draw `draw`: uniform in [0, size - seq_len - 1), as
  /// torch.randint(0, size - seq_len - 1) in x-transformers' TextSamplerDataset. Needs size >= seq_len + 2.
  [[nodiscard]] Index sample_start(Index seq_len_plus_one, const RandomStream& rng, std::uint64_t draw) const {
    check_window_length(seq_len_plus_one);
    return static_cast<Index>(rng.below(draw, static_cast<std::uint64_t>(size_ - seq_len_plus_one)));
  }
  /// The random window itself: window(sample_start(...), seq_len_plus_one).
  [[nodiscard]] std::span<const std::uint8_t> sample(Index seq_len_plus_one, const RandomStream& rng,
                                                     std::uint64_t draw) const {
    return window(sample_start(seq_len_plus_one, rng, draw), seq_len_plus_one);
  }

  /// Throws unless random windows of `seq_len_plus_one` bytes can be drawn (size >= seq_len + 2).
  void check_window_length(Index seq_len_plus_one) const {
    require(seq_len_plus_one >= 2, "windows of seq_len + 1 = ", seq_len_plus_one, " tokens need seq_len >= 1");
    require(size_ > seq_len_plus_one, "a text of ", size_,
            " bytes is too short for random windows of seq_len + 1 = ", seq_len_plus_one,
            " tokens: it needs at least seq_len + 2 = ", seq_len_plus_one + 1, " bytes");
  }

 private:
  TextDataset(std::shared_ptr<const std::vector<std::uint8_t>> storage, Index offset, Index size)
      : storage_(std::move(storage)), offset_(offset), size_(size) {}

  std::shared_ptr<const std::vector<std::uint8_t>> storage_;
  Index offset_ = 0;
  Index size_ = 0;
};

/// Data-parallel training: rank `rank` of `ranks` takes rows rank·B … rank·B + B − 1 of every global batch of
/// ranks·B rows (B the loader's batch size).
struct BatchShard {
  int rank = 0, ranks = 1;
};

/// Endless (batch, seq_len + 1) TokenBatches of random windows: batch k, row b is the window at
/// dataset.sample_start(seq_len + 1, rng, k*B + b) with rng = RandomStream{seed, stream}. Batches depend only on (seed,
/// stream, k); seek(k) resumes at batch k. With a shard, B is the rank's part of a global batch of ranks·B rows, and
/// row b is global row rank·B + b: draw k·ranks·B + rank·B + b, so the ranks together see what one loader with batch
/// ranks·B sees.
class BatchLoader {
 public:
  static constexpr Index kMaxBatchTokens = Index(1) << 32;  // 16 GiB of token ids: beyond any batch that trains

  BatchLoader(TextDataset data, Index batch_size, Index seq_len, std::uint64_t seed, std::uint64_t stream = 0,
              BatchShard shard = {})
      : data_(std::move(data)), batch_size_(batch_size), seq_len_(seq_len), rng_{seed, stream}, shard_(shard) {
    require(batch_size >= 1, "batch size ", batch_size, " must be at least 1");
    require(shard.ranks >= 1 && shard.rank >= 0 && shard.rank < shard.ranks, "shard rank ", shard.rank,
            " must lie in [0, ranks ", shard.ranks, ")");
    require(seq_len >= 1, "seq_len ", seq_len, " must be at least 1");
    const Index row = checked_add(seq_len, 1, "seq_len + 1");
    data_.check_window_length(row);
    require(checked_mul(batch_size, row, "a batch of batch_size × (seq_len + 1) tokens") <= kMaxBatchTokens,
            "a batch of batch_size ", batch_size, " × (seq_len + 1) ", row, " tokens exceeds the limit of ",
            kMaxBatchTokens, " tokens per batch");
    (void)checked_mul(batch_size, Index(shard.ranks), "the global batch (batch_size × ranks)");
    buffer_.data.resize(static_cast<std::size_t>(batch_size * row));
    buffer_.batch = batch_size;
    buffer_.length = seq_len + 1;
  }

  /// Batch position(), then advance. The reference stays valid (and is overwritten) until the next call; no allocation.
  const TokenBatch& next() {
    fill(position_++, buffer_);
    return buffer_;
  }
  /// Batch k into `out` (reusing its capacity). Does not move the position.
  void fill(std::uint64_t k, TokenBatch& out) const {
    const Index length = seq_len_ + 1;
    out.data.resize(static_cast<std::size_t>(batch_size_ * length));
    out.batch = batch_size_;
    out.length = length;
    for (Index b = 0; b < batch_size_; ++b) {
      const auto window = data_.window(start(k, b), length);
      std::copy(window.begin(), window.end(), out.data.begin() + b * length);
    }
  }
  /// Where row b of batch k starts in the dataset.
  [[nodiscard]] Index start(std::uint64_t k, Index b) const {
    const auto B = static_cast<std::uint64_t>(batch_size_);
    return data_.sample_start(seq_len_ + 1, rng_,
                              (k * static_cast<std::uint64_t>(shard_.ranks) + static_cast<std::uint64_t>(shard_.rank)) * B +
                                  static_cast<std::uint64_t>(b));
  }

  /// The index of the batch next() returns; save it with a checkpoint and seek() to it on resume.
  [[nodiscard]] std::uint64_t position() const { return position_; }
  void seek(std::uint64_t k) { position_ = k; }

  [[nodiscard]] Index batch_size() const { return batch_size_; }
  [[nodiscard]] Index seq_len() const { return seq_len_; }
  [[nodiscard]] const TextDataset& data() const { return data_; }
  [[nodiscard]] const RandomStream& rng() const { return rng_; }
  [[nodiscard]] BatchShard shard() const { return shard_; }

 private:
  TextDataset data_;
  Index batch_size_;
  Index seq_len_;
  RandomStream rng_;
  BatchShard shard_;
  std::uint64_t position_ = 0;
  TokenBatch buffer_;
};

}  // namespace xtr
