// CUDA kernels against their CPU reference. Plain main: exit 0 on success, 1 on a mismatch; on a machine without a
// CUDA device it prints "skipped: no CUDA device" and exits 0 (ctest reports it as skipped).
#include <cstdint>
#include <cstdio>
#include <vector>

#include <cuda_runtime_api.h>

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
bool throws_xtr_error(F&& f) {
  try {
    f();
  } catch (const xtr::Error&) {
    return true;
  }
  return false;
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

  int devices = 0;
  const cudaError_t status = cudaGetDeviceCount(&devices);
  if (status != cudaSuccess || devices == 0) {
    std::printf("skipped: no CUDA device (%s)\n", status != cudaSuccess ? cudaGetErrorString(status) : "0 devices");
    return failures ? 1 : 0;
  }

  compare_dropout_mask({.seed = 0, .stream = 0}, 0.1, 1 << 20);
  compare_dropout_mask({.seed = 1234, .stream = 7}, 0.5, 3'000'001);  // n not a multiple of 4: a partial last block
  // The streams TransformerWrapper draws from: RandomStream{seed, 1}.fork(forward_pass * 1024 + site).
  compare_dropout_mask(xtr::RandomStream{42, 1}.fork(3 * 1024 + 2), 0.25, 4'194'307);
  compare_dropout_mask({.seed = 5, .stream = 1ull << 40}, 0.0, 1000);  // p = 0 keeps everything
  cuda_ok(cudaDeviceSynchronize(), "cudaDeviceSynchronize");

  std::printf(failures ? "FAILED: %d check(s)\n" : "all CUDA checks passed\n", failures);
  return failures ? 1 : 0;
}
