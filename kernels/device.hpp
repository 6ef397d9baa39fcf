#pragma once
// Device plumbing for the CUDA backend: error checking with file:line, the device check every GPU model makes at
// construction, and device memory (a typed buffer and a bump arena carved from one cudaMalloc; no managed memory).
// Host-only code over the CUDA runtime API: plain C++ callers include this header and link xtr_cuda_kernels.
//
//   XTR_CUDA_CHECK(cudaMemcpy(...));        // throws xtr::Error "CUDA error at file:line: cudaMemcpy(...): <reason>"
//   xtr::cuda::require_device();            // throws when no device is usable, naming why
//   xtr::cuda::DeviceBuffer<float> w(n);    // n floats of device memory; an allocation failure names the bytes asked
//   xtr::cuda::DeviceArena arena(bytes);    // allocate<T>(n): 256-byte aligned slices, reset() per step
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <utility>

#include <cuda_runtime_api.h>

#include "xtr/core/error.hpp"

namespace xtr::cuda {

/// Throws xtr::Error naming the call, the source location and CUDA's reason when `status` is not cudaSuccess.
void check(cudaError_t status, const char* call, const char* file, int line);

#define XTR_CUDA_CHECK(call) ::xtr::cuda::check((call), #call, __FILE__, __LINE__)

/// Usable CUDA devices (0 when there is no driver or no device; never throws).
[[nodiscard]] int device_count();

/// Throws xtr::Error when no CUDA device is usable, with CUDA's reason: what a GPU model says at construction on a
/// machine without one.
void require_device();

/// "<n> bytes (<x> MiB)", for messages about sizes.
[[nodiscard]] std::string byte_count(std::size_t bytes);

/// `bytes` of device memory from cudaMalloc; the error names the size asked for, the device and what is free.
[[nodiscard]] void* allocate_device_bytes(std::size_t bytes);

/// `p` itself when the device can read it (device or managed memory), else a copy of its `bytes` in a staging buffer
/// of the device (one per `slot`, 0 to 3, reused by the next call with the same slot): host memory the layers hand to
/// a kernel (a TokenBatch's ids, a caller's context rows or masks) becomes readable there. Synchronous.
[[nodiscard]] const void* device_readable(const void* p, std::size_t bytes, int slot);
template <class T>
[[nodiscard]] const T* device_readable(const T* p, std::size_t count, int slot) {
  return static_cast<const T*>(device_readable(static_cast<const void*>(p), count * sizeof(T), slot));
}

/// `count` elements of T in device memory, freed on destruction; movable, not copyable.
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::int64_t count) : count_(count) {
    require(count >= 0, "DeviceBuffer: element count must be >= 0, got ", count);
    if (count > 0) data_ = static_cast<T*>(allocate_device_bytes(std::size_t(count) * sizeof(T)));
  }
  DeviceBuffer(DeviceBuffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), count_(std::exchange(other.count_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    std::swap(data_, other.data_);
    std::swap(count_, other.count_);
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (data_) cudaFree(data_);  // no throw from a destructor; a failed free means a broken context anyway
  }

  [[nodiscard]] T* data() { return data_; }
  [[nodiscard]] const T* data() const { return data_; }
  [[nodiscard]] std::int64_t size() const { return count_; }

  /// Host → device, all elements; `host` must hold exactly size() elements.
  void upload(std::span<const T> host) {
    require(std::int64_t(host.size()) == count_, "DeviceBuffer::upload: ", host.size(), " host elements for a buffer of ",
            count_);
    if (count_ > 0) XTR_CUDA_CHECK(cudaMemcpy(data_, host.data(), host.size_bytes(), cudaMemcpyHostToDevice));
  }
  /// Device → host, all elements; `host` must hold exactly size() elements.
  void download(std::span<T> host) const {
    require(std::int64_t(host.size()) == count_, "DeviceBuffer::download: ", host.size(),
            " host elements for a buffer of ", count_);
    if (count_ > 0) XTR_CUDA_CHECK(cudaMemcpy(host.data(), data_, host.size_bytes(), cudaMemcpyDeviceToHost));
  }

 private:
  T* data_ = nullptr;
  std::int64_t count_ = 0;
};

/// Where the next slice of a bump arena starts: offsets aligned to `alignment` bytes; pure arithmetic, shared by
/// DeviceArena and its host tests.
struct ArenaLayout {
  static constexpr std::size_t alignment = 256;  // cudaMalloc's own alignment: every slice suits vector loads
  std::size_t capacity = 0, used = 0;
  /// The offset of a new slice of `bytes`; throws naming the request and what is left when it does not fit.
  std::size_t take(std::size_t bytes);
};

/// Activations and scratch of one step: one cudaMalloc of `capacity` bytes, slices handed out in order, reset() to
/// reuse (no allocation in the steady state, like the CPU backend's arena).
class DeviceArena {
 public:
  explicit DeviceArena(std::size_t capacity) : buffer_(std::int64_t(capacity)), layout_{capacity, 0} {}
  template <class T>
  [[nodiscard]] T* allocate(std::int64_t count) {
    require(count >= 0, "DeviceArena::allocate: element count must be >= 0, got ", count);
    return reinterpret_cast<T*>(buffer_.data() + layout_.take(std::size_t(count) * sizeof(T)));
  }
  void reset() { layout_.used = 0; }
  [[nodiscard]] std::size_t used() const { return layout_.used; }
  [[nodiscard]] std::size_t capacity() const { return layout_.capacity; }

 private:
  DeviceBuffer<std::byte> buffer_;
  ArenaLayout layout_;
};

}  // namespace xtr::cuda
