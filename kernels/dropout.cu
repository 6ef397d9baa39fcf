// Dropout mask kernel: one thread per Philox block, i.e. four consecutive elements from one 10-round Philox call,
// exactly the grouping RandomStream::bits uses (draw i is word i mod 4 of block i / 4).
#include "dropout.cuh"

#include <algorithm>

#include "xtr/core/error.hpp"

namespace xtr::cuda {
namespace {

constexpr int threads_per_block = 256;

__global__ void dropout_mask_kernel(RandomStream rng, float threshold, std::uint8_t* __restrict__ keep,
                                    std::int64_t n) {
  // Element i is draw rng.first + i: Philox blocks first / 4 … (first + n − 1) / 4 cover it.
  const std::uint64_t block0 = rng.first / 4;
  const std::int64_t blocks = std::int64_t((rng.first + std::uint64_t(n) + 3) / 4 - block0);
  for (std::int64_t b = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; b < blocks;
       b += std::int64_t(gridDim.x) * blockDim.x) {
    const std::uint64_t g = block0 + std::uint64_t(b);
    const Philox::Words w = rng.words(g);
    const std::int64_t i0 = std::int64_t(4 * g - rng.first);  // element of word 0 (negative before element 0)
#pragma unroll
    for (int j = 0; j < 4; ++j)
      if (i0 + j >= 0 && i0 + j < n) {
        // RandomStream::uniform(i0 + j) from the block already drawn: 24 bits, exact in float.
        const float u = static_cast<float>(w[j] >> 8) * (1.0f / 16777216.0f);
        keep[i0 + j] = u >= threshold ? 1 : 0;
      }
  }
}

}  // namespace

void dropout_mask(RandomStream rng, double p, std::uint8_t* keep, std::int64_t n, cudaStream_t stream) {
  require(n >= 0, "dropout_mask: n must be >= 0, got ", n);
  require(p >= 0 && p < 1, "dropout_mask: p must be in [0, 1), got ", p);
  if (n == 0) return;
  require(keep != nullptr, "dropout_mask: keep is null for n = ", n);
  const std::int64_t blocks = std::int64_t((rng.first + std::uint64_t(n) + 3) / 4 - rng.first / 4);
  const std::int64_t grid = std::min<std::int64_t>((blocks + threads_per_block - 1) / threads_per_block, 65535);
  dropout_mask_kernel<<<unsigned(grid), threads_per_block, 0, stream>>>(rng, float(p), keep, n);
  const cudaError_t status = cudaGetLastError();
  require(status == cudaSuccess, "dropout_mask: kernel launch failed for n = ", n, ": ", cudaGetErrorString(status));
}

}  // namespace xtr::cuda
