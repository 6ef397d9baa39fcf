#pragma once
// Dropout mask on the GPU from the same counter-based Philox stream as the CPU backend:
//   keep[i] = uniform(i) >= float(p)      uniform(i) = (bits(i) >> 8) · 2⁻²⁴,  bits(i) = Philox(i / 4)[i mod 4]
// so element i of a CUDA dropout equals element i of TransformerWrapper's CPU dropout for the same RandomStream.
// Host API: plain C++ callers include this header and link xtr_cuda_kernels.
#include <cstdint>

#include <cuda_runtime_api.h>

#include "xtr/core/rng.hpp"

namespace xtr::cuda {

/// Writes keep[i] = 1 (keep) or 0 (drop) for i in [0, n) into `keep`, device memory of n bytes, on `stream`
/// (asynchronous; no synchronisation). Throws xtr::Error for n < 0, p outside [0, 1), a null `keep` with n > 0,
/// or a failed launch.
void dropout_mask(RandomStream rng, double p, std::uint8_t* keep, std::int64_t n, cudaStream_t stream = nullptr);

}  // namespace xtr::cuda
