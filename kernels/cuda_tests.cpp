// CUDA kernels against their CPU reference, and the device plumbing. Plain main: exit 0 on success, 1 on a failure.
// The host-side checks and the no-device error paths run everywhere; on a machine without a CUDA device, after they
// pass, it prints "skipped: no CUDA device" (ctest then reports the device part as skipped; a failure is printed as
// FAILED instead, so it is never hidden as a skip).
#include <cstring>
#include <string>
#include <cstdint>
#include <cstdio>
#include <vector>

#include <cuda_runtime_api.h>

#include "device.hpp"
#include "dropout.cuh"
#include "xtr/core/error.hpp"
#include "xtr/core/rng.hpp"

namespace {

int failures = 0;

void check(bool ok, const char* what) {
  if (!ok) {
    std::printf("FAIL: %s\n", what);
    ++failures;
  }
}

template <class F>
bool throws_xtr_error(F&& f, const char* expected = "") {
  try {
    f();
  } catch (const xtr::Error& e) {
    if (std::strstr(e.what(), expected)) return true;
    std::printf("  message was: %s\n  expected to contain: %s\n", e.what(), expected);
    return false;
  }
  return false;
}

/// Device plumbing that needs no device: error formatting, argument checks, the arena's arithmetic.
void check_plumbing_on_host() {
  check(throws_xtr_error([] { XTR_CUDA_CHECK(cudaErrorMemoryAllocation); },
                         "cuda_tests.cpp:"),
        "XTR_CUDA_CHECK names the source location");
  check(throws_xtr_error([] { XTR_CUDA_CHECK(cudaErrorMemoryAllocation); }, "cudaErrorMemoryAllocation"),
        "XTR_CUDA_CHECK names CUDA's error");
  XTR_CUDA_CHECK(cudaSuccess);  // no throw
  check(throws_xtr_error([] { xtr::cuda::DeviceBuffer<float> b(-1); }, "element count must be >= 0, got -1"),
        "a negative buffer size is rejected");
  xtr::cuda::DeviceBuffer<float> empty(0);  // allocates nothing: fine without a device
  check(empty.data() == nullptr && empty.size() == 0, "an empty buffer holds nothing");
  const float three[3] = {1, 2, 3};
  check(throws_xtr_error([&] { empty.upload(three); }, "3 host elements for a buffer of 0"),
        "upload checks the element count");
  xtr::cuda::ArenaLayout layout{.capacity = 1024};
  check(layout.take(10) == 0 && layout.take(1) == 256 && layout.take(256) == 512, "arena slices are 256-byte aligned");
  check(layout.used == 768, "the arena counts what it handed out");
  check(throws_xtr_error([&] { (void)layout.take(300); }, "a slice of 300 bytes (0.0 MiB) does not fit: 256 bytes"),
        "an arena overflow names the request and what is left");
  check(xtr::cuda::byte_count(3u << 20) == "3145728 bytes (3.0 MiB)", "byte counts read as bytes and MiB");
}

/// What a machine without a GPU says: the errors a user meets there.
void check_without_device() {
  check(xtr::cuda::device_count() == 0, "device_count() is 0");
  check(throws_xtr_error([] { xtr::cuda::require_device(); }, "no CUDA device at run time"),
        "require_device() explains that there is no device");
  check(throws_xtr_error([] { xtr::cuda::DeviceBuffer<float> b(1024); }, "cannot allocate 4096 bytes (0.0 MiB)"),
        "an allocation without a device names the bytes asked for");
}

/// Device memory round trips, an impossible allocation, the arena's slices on a real device.
void check_plumbing_on_device() {
  xtr::cuda::require_device();
  std::vector<float> values(1000), back(1000);
  for (std::size_t i = 0; i < values.size(); ++i) values[i] = float(i) * 0.5f - 3;
  xtr::cuda::DeviceBuffer<float> buffer(1000);
  buffer.upload(values);
  buffer.download(back);
  check(back == values, "upload then download returns the same values");
  xtr::cuda::DeviceBuffer<float> moved(std::move(buffer));
  check(buffer.data() == nullptr && moved.size() == 1000, "a moved-from buffer is empty");
  check(throws_xtr_error([] { xtr::cuda::DeviceBuffer<std::byte> huge(std::int64_t(1) << 50); },
                         "cannot allocate 1125899906842624 bytes"),
        "an allocation beyond the device names the bytes asked for and what is free");
  xtr::cuda::DeviceArena arena(1 << 20);
  float* a = arena.allocate<float>(100);
  float* b = arena.allocate<float>(100);
  check(reinterpret_cast<std::uintptr_t>(b) - reinterpret_cast<std::uintptr_t>(a) == 512, "arena slices are aligned");
  arena.reset();
  check(arena.allocate<float>(1) == a, "reset() reuses the arena from its start");
}

bool cuda_ok(cudaError_t status, const char* what) {
  if (status != cudaSuccess) std::printf("FAIL: %s: %s\n", what, cudaGetErrorString(status));
  failures += status != cudaSuccess;
  return status == cudaSuccess;
}

/// GPU mask of n elements vs the CPU rule TransformerWrapper::dropout applies: keep iff uniform(i) >= float(p).
void compare_dropout_mask(xtr::RandomStream rng, double p, std::int64_t n) {
  void* allocation = nullptr;
  if (!cuda_ok(cudaMalloc(&allocation, std::size_t(n)), "cudaMalloc")) return;
  auto* device = static_cast<std::uint8_t*>(allocation);
  std::vector<std::uint8_t> gpu(std::size_t(n), 2);
  xtr::cuda::dropout_mask(rng, p, device, n);
  cuda_ok(cudaMemcpy(gpu.data(), device, std::size_t(n), cudaMemcpyDeviceToHost), "cudaMemcpy");
  cuda_ok(cudaFree(device), "cudaFree");

  const float threshold = float(p);
  std::int64_t mismatches = 0, first = -1, kept = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const std::uint8_t cpu = rng.uniform(std::uint64_t(i)) >= threshold ? 1 : 0;
    if (gpu[std::size_t(i)] != cpu && mismatches++ == 0) first = i;
    kept += gpu[std::size_t(i)] == 1;
  }
  const double kept_fraction = double(kept) / double(n);
  std::printf("dropout_mask seed %llu stream %llu p %.2f n %lld: %lld mismatches, kept %.4f (expected %.4f)\n",
              (unsigned long long)rng.seed, (unsigned long long)rng.stream, p, (long long)n, (long long)mismatches,
              kept_fraction, 1 - p);
  if (mismatches) std::printf("  first mismatch at element %lld\n", (long long)first);
  check(mismatches == 0, "GPU dropout mask equals the CPU RandomStream mask");
  check(kept_fraction > 1 - p - 0.005 && kept_fraction < 1 - p + 0.005, "kept fraction is 1 - p within 0.005");
}

}  // namespace

int main() {
  // Argument checks happen on the host before any launch: testable without a device.
  check(throws_xtr_error([] { xtr::cuda::dropout_mask({}, 1.0, nullptr, 8); }), "p = 1 is rejected");
  check(throws_xtr_error([] { xtr::cuda::dropout_mask({}, -0.1, nullptr, 8); }), "p < 0 is rejected");
  check(throws_xtr_error([] { xtr::cuda::dropout_mask({}, 0.1, nullptr, -1); }), "n < 0 is rejected");
  check(throws_xtr_error([] { xtr::cuda::dropout_mask({}, 0.1, nullptr, 8); }), "a null mask is rejected");

  check_plumbing_on_host();

  int devices = 0;
  const cudaError_t status = cudaGetDeviceCount(&devices);
  if (status != cudaSuccess || devices == 0) {
    (void)cudaGetLastError();
    check_without_device();
    if (failures) {
      std::printf("FAILED: %d host-side check(s)\n", failures);
      return 1;
    }
    std::printf("host-side checks passed; skipped: no CUDA device (%s)\n",
                status != cudaSuccess ? cudaGetErrorString(status) : "0 devices");
    return 0;
  }

  check_plumbing_on_device();
  compare_dropout_mask({.seed = 0, .stream = 0}, 0.1, 1 << 20);
  compare_dropout_mask({.seed = 1234, .stream = 7}, 0.5, 3'000'001);  // n not a multiple of 4: a partial last block
  // The streams TransformerWrapper draws from: RandomStream{seed, 1}.fork(forward_pass * 1024 + site).
  compare_dropout_mask(xtr::RandomStream{42, 1}.fork(3 * 1024 + 2), 0.25, 4'194'307);
  compare_dropout_mask({.seed = 5, .stream = 1ull << 40}, 0.0, 1000);  // p = 0 keeps everything
  // a data-parallel rank's slice: the stream from draw 4·k + 3 (a block split across the slice's start)
  compare_dropout_mask(xtr::RandomStream{42, 1}.fork(7).from(4 * 1000 + 3), 0.25, 100'001);
  cuda_ok(cudaDeviceSynchronize(), "cudaDeviceSynchronize");

  std::printf(failures ? "FAILED: %d check(s)\n" : "all CUDA checks passed\n", failures);
  return failures ? 1 : 0;
}
