#pragma once
// Device-side helpers shared by the CUDA backend's translation units (internal to kernels/): grid sizes for grid-stride
// loops, block reductions, and the activations of policies/activations.hpp with their derivatives
// (backend/cpu/activations.hpp's formulas).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "device.hpp"
#include "xtr/backend/cuda/launch.hpp"

namespace xtr::cuda::device {

inline constexpr int kThreads = 256;

/// Blocks for a grid-stride loop over n elements with kThreads threads each.
inline unsigned blocks_for(std::int64_t n) {
  return unsigned(std::clamp<std::int64_t>((n + kThreads - 1) / kThreads, 1, 8192));
}

/// Throws naming `what` when its launch failed (a bad configuration; errors inside a kernel surface in finish()).
inline void launched(const char* what) { check(cudaPeekAtLastError(), what, __FILE__, __LINE__); }

/// Sum of v over the block (blockDim.x a multiple of 32, at most 1024); the result in every thread.
template <class T>
__device__ T block_sum(T v) {
  __shared__ T partial[32];
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32, warps = int(blockDim.x) / 32;
  __syncthreads();  // partial[] may still be read by a previous call
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  v = lane < warps ? partial[lane] : T(0);
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

/// The largest v over the block; the result in every thread.
__device__ inline float block_max(float v) {
  __shared__ float partial[32];
  for (int offset = 16; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32, warps = int(blockDim.x) / 32;
  __syncthreads();
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  v = lane < warps ? partial[lane] : -INFINITY;
  for (int offset = 16; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

__device__ inline float sigmoid(float a) { return 1.0f / (1.0f + expf(-a)); }

/// A(a).
__device__ inline float activation_value(Activation kind, float a) {
  switch (kind) {
    case Activation::gelu: return 0.5f * a * (1.0f + erff(a * 0.70710678118654752f));
    case Activation::silu: return a * sigmoid(a);
    case Activation::relu_squared: return a > 0.0f ? a * a : 0.0f;
    case Activation::sigmoid: return sigmoid(a);
    case Activation::identity: break;
  }
  return a;
}

/// A′(a).
__device__ inline float activation_derivative(Activation kind, float a) {
  switch (kind) {
    case Activation::gelu:
      return 0.5f * (1.0f + erff(a * 0.70710678118654752f)) + a * expf(-0.5f * a * a) * 0.3989422804014327f;
    case Activation::silu: return sigmoid(a) * (1.0f + a * (1.0f - sigmoid(a)));
    case Activation::relu_squared: return a > 0.0f ? 2.0f * a : 0.0f;
    case Activation::sigmoid: return sigmoid(a) * (1.0f - sigmoid(a));
    case Activation::identity: break;
  }
  return 1.0f;
}

}  // namespace xtr::cuda::device
