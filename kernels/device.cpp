// Device plumbing (see device.hpp): host code over the CUDA runtime API.
#include "device.hpp"

#include <algorithm>
#include <cstdio>

namespace xtr::cuda {

void check(cudaError_t status, const char* call, const char* file, int line) {
  if (status == cudaSuccess) return;
  throw Error("xtr: CUDA error at " + std::string(file) + ":" + std::to_string(line) + ": " + call + ": " +
              cudaGetErrorName(status) + " (" + cudaGetErrorString(status) + ")");
}

int device_count() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess) {
    (void)cudaGetLastError();  // reset the last-error state: later calls report their own
    return 0;
  }
  return devices;
}

void require_device() {
  int devices = 0;
  const cudaError_t status = cudaGetDeviceCount(&devices);
  if (status == cudaSuccess && devices > 0) return;
  (void)cudaGetLastError();
  throw Error(std::string("xtr: no CUDA device at run time (") +
              (status != cudaSuccess ? std::string(cudaGetErrorName(status)) + ": " + cudaGetErrorString(status)
                                     : std::string("0 devices")) +
              "); the Cuda backend needs a GPU: use the Cpu backend on this machine");
}

std::string byte_count(std::size_t bytes) {
  char text[64];
  std::snprintf(text, sizeof text, "%zu bytes (%.1f MiB)", bytes, double(bytes) / (1024.0 * 1024.0));
  return text;
}

void* allocate_device_bytes(std::size_t bytes) {
  void* p = nullptr;
  const cudaError_t status = cudaMalloc(&p, bytes);
  if (status == cudaSuccess) return p;
  (void)cudaGetLastError();
  std::string where = "no usable device";
  int device = -1;
  std::size_t free = 0, total = 0;
  if (cudaGetDevice(&device) == cudaSuccess && cudaMemGetInfo(&free, &total) == cudaSuccess)
    where = "device " + std::to_string(device) + " (" + byte_count(free) + " free of " + byte_count(total) + ")";
  (void)cudaGetLastError();
  throw Error("xtr: cannot allocate " + byte_count(bytes) + " of device memory on " + where + ": " +
              cudaGetErrorName(status) + " (" + cudaGetErrorString(status) + ")");
}

const void* device_readable(const void* p, std::size_t bytes, int slot) {
  require(slot >= 0 && slot < 4, "device_readable: slot ", slot, " is not 0 to 3");
  if (!p || bytes == 0) return p;
  cudaPointerAttributes attributes{};
  XTR_CUDA_CHECK(cudaPointerGetAttributes(&attributes, p));
  if (attributes.type != cudaMemoryTypeUnregistered && attributes.type != cudaMemoryTypeHost) return p;
  static DeviceBuffer<std::byte> staging[4];
  DeviceBuffer<std::byte>& buffer = staging[slot];
  if (std::size_t(buffer.size()) < bytes) buffer = DeviceBuffer<std::byte>(std::int64_t(bytes));
  XTR_CUDA_CHECK(cudaMemcpy(buffer.data(), p, bytes, cudaMemcpyHostToDevice));
  return buffer.data();
}

std::size_t ArenaLayout::take(std::size_t bytes) {
  const std::size_t offset = (used + alignment - 1) / alignment * alignment;
  require(offset <= capacity && bytes <= capacity - offset, "DeviceArena: a slice of ", byte_count(bytes),
          " does not fit: ", byte_count(capacity - std::min(offset, capacity)), " left of ", byte_count(capacity));
  used = offset + bytes;
  return offset;
}

}  // namespace xtr::cuda
