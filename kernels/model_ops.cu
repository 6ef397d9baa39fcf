// The CUDA backend's kernels other than GEMMs and attention (host API: xtr/backend/cuda/launch.hpp), each the formula of
// its CPU counterpart in backend/cpu/. fp32 throughout, reductions of norms and of the loss in double as on the CPU.
// NEVER RUN ON A DEVICE so far: compiled with warnings as errors and checked for spills only; kernels/cuda_tests.cpp
// compares each with the CPU kernel when a GPU is present.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "device.hpp"
#include "device_math.cuh"
#include "xtr/backend/cuda/launch.hpp"
#include "xtr/backend/cuda/tiles.hpp"

namespace xtr::cuda {
namespace {

using device::blocks_for;
using device::kThreads;
using device::block_max;
using device::block_sum;

using device::launched;

/// Device memory for the per-row losses of cross_entropy, kept between calls (callers finish() before returning).
double* loss_rows(Index n) {
  static DeviceBuffer<double> buffer;
  if (buffer.size() < n) buffer = DeviceBuffer<double>(std::max<Index>(n, 1024));
  return buffer.data();
}

// --- elementwise --------------------------------------------------------------------------------------------------

__global__ void fill_kernel(float* x, Index rows, Index cols, Index ld, float value) {
  const Index n = rows * cols;
  for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += Index(gridDim.x) * blockDim.x)
    x[(i / cols) * ld + i % cols] = value;
}

__global__ void axpby_kernel(const float* x, Index ldx, float* y, Index ldy, Index rows, Index cols, float alpha,
                             float beta) {
  const Index n = rows * cols;
  for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += Index(gridDim.x) * blockDim.x) {
    const Index r = i / cols, c = i % cols;
    float* out = y + r * ldy + c;
    *out = beta == 0.0f ? alpha * x[r * ldx + c] : beta * *out + alpha * x[r * ldx + c];
  }
}

__global__ void dropout_kernel(float* x, Index rows, Index cols, Index ld, float threshold, float keep_scale,
                               RandomStream stream) {
  const Index n = rows * cols;
  for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += Index(gridDim.x) * blockDim.x)
    x[(i / cols) * ld + i % cols] *= tiles::uniform_draw(stream, std::uint64_t(i)) >= threshold ? keep_scale : 0.0f;
}

__global__ void multiply_forward_kernel(const float* a, const float* b, float* y, Index rows, Index cols, Index lda,
                                        Index ldb, Index ldy) {
  const Index n = rows * cols;
  for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += Index(gridDim.x) * blockDim.x) {
    const Index r = i / cols, c = i % cols;
    y[r * ldy + c] = a[r * lda + c] * b[r * ldb + c];
  }
}

__global__ void multiply_backward_kernel(const float* dy, const float* a, const float* b, float* da, float* db,
                                         Index rows, Index cols, Index ld_dy, Index lda, Index ldb, Index ld_da,
                                         Index ld_db) {
  const Index n = rows * cols;
  for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += Index(gridDim.x) * blockDim.x) {
    const Index r = i / cols, c = i % cols;
    const float g = dy[r * ld_dy + c], av = a[r * lda + c], bv = b[r * ldb + c];
    if (db) db[r * ld_db + c] = g * av;
    if (da) da[r * ld_da + c] = g * bv;
  }
}

__global__ void scale_heads_kernel(const float* x, Index ldx, const float* s, Index dh, float* y, Index ldy,
                                   Index rows, Index cols) {
  const Index n = rows * cols;
  for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += Index(gridDim.x) * blockDim.x) {
    const Index r = i / cols, c = i % cols;
    y[r * ldy + c] = x[r * ldx + c] * s[c / dh];
  }
}

/// ds_h += Σ_rows Σ_{c in head h} dy ⊙ x: one block per head.
__global__ void scale_heads_grad_kernel(const float* dy, Index ld_dy, const float* x, Index ldx, Index dh, float* ds,
                                        Index rows) {
  const Index h = blockIdx.x, n = rows * dh;
  float sum = 0;
  for (Index i = threadIdx.x; i < n; i += blockDim.x) {
    const Index r = i / dh, c = h * dh + i % dh;
    sum += dy[r * ld_dy + c] * x[r * ldx + c];
  }
  sum = block_sum(sum);
  if (threadIdx.x == 0) ds[h] += sum;
}

__device__ float lerp_two_sided(float a, float b, float m) {
  return m < 0.5f ? a + m * (b - a) : b - (1.0f - m) * (b - a);
}

__global__ void mix_heads_forward_kernel(Rows a, Rows b, const float* mu, Index mu_ld, Index dh, MutableRows y,
                                         Index rows, Index cols) {
  const Index n = rows * cols;
  for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += Index(gridDim.x) * blockDim.x) {
    const Index r = i / cols, c = i % cols;
    y.data[r * y.ld + c] = lerp_two_sided(a.data[r * a.ld + c], b.data[r * b.ld + c], mu[r * mu_ld + c / dh]);
  }
}

/// One block per row: da, db elementwise, dμ (rows, heads) by a block reduction per head.
__global__ void mix_heads_backward_kernel(Rows dy, Rows a, Rows b, const float* mu, Index mu_ld, Index heads,
                                          MutableRows da, MutableRows db, float* dmu, Index cols) {
  const Index r = blockIdx.x, dh = cols / heads;
  for (Index h = 0; h < heads; ++h) {
    float sum = 0;
    const float m = mu[r * mu_ld + h];
    for (Index d = threadIdx.x; d < dh; d += blockDim.x) {
      const Index c = h * dh + d;
      const float g = dy.data[r * dy.ld + c];
      sum += g * (b.data[r * b.ld + c] - a.data[r * a.ld + c]);
      if (da.data) da.data[r * da.ld + c] += (1.0f - m) * g;
      if (db.data) db.data[r * db.ld + c] = m * g;  // after reading dy: db may be dy
    }
    sum = block_sum(sum);
    if (dmu && threadIdx.x == 0) dmu[r * heads + h] = sum;
  }
}

__global__ void activation_forward_kernel(Activation kind, Rows x, MutableRows y, Index rows, Index cols) {
  const Index n = rows * cols;
  for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += Index(gridDim.x) * blockDim.x) {
    const Index r = i / cols, c = i % cols;
    y.data[r * y.ld + c] = device::activation_value(kind, x.data[r * x.ld + c]);
  }
}

__global__ void activation_backward_kernel(Activation kind, Rows dy, Rows x, MutableRows dx, Index rows, Index cols,
                                           bool accumulate) {
  const Index n = rows * cols;
  for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += Index(gridDim.x) * blockDim.x) {
    const Index r = i / cols, c = i % cols;
    const float g = dy.data[r * dy.ld + c] * device::activation_derivative(kind, x.data[r * x.ld + c]);
    float* out = dx.data + r * dx.ld + c;
    *out = accumulate ? *out + g : g;
  }
}

__global__ void adamw_kernel(float* w, const float* g, float* m, float* v, Index n, AdamWCoefficients c) {
  for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += Index(gridDim.x) * blockDim.x) {
    const float gi = g[i];
    const float mi = c.beta1 * m[i] + c.one_minus_beta1 * gi;
    const float vi = c.beta2 * v[i] + c.one_minus_beta2 * gi * gi;
    m[i] = mi;
    v[i] = vi;
    w[i] = w[i] * c.decay - c.step_size * mi / (sqrtf(vi) / c.bias2_sqrt + c.eps);
  }
}

// --- embedding, cross-entropy ---------------------------------------------------------------------------------------

__global__ void embedding_forward_kernel(const std::int32_t* ids, Index N, Index D, Index T_len, Index offset,
                                         const float* table, const float* positions, float scale, float* x) {
  const Index n = N * D;
  for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += Index(gridDim.x) * blockDim.x) {
    const Index r = i / D, d = i % D;
    float value = table[Index(ids[r]) * D + d];
    if (positions) value += scale * positions[(r % T_len + offset) * D + d];
    x[i] = value;
  }
}

__global__ void embedding_backward_kernel(const std::int32_t* ids, Index N, Index D, Index T_len, const float* dx,
                                          float* dtable, float* dpositions, float scale) {
  const Index n = N * D;
  for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += Index(gridDim.x) * blockDim.x) {
    const Index r = i / D, d = i % D;
    atomicAdd(dtable + Index(ids[r]) * D + d, dx[i]);
    if (dpositions) atomicAdd(dpositions + (r % T_len) * D + d, scale * dx[i]);
  }
}

/// One block per row: lse, the row's loss (lse − z[y]) into loss[row] (0 for an ignored row), and the gradient.
__global__ void cross_entropy_kernel(const float* logits, Index V, const std::int32_t* targets,
                                     std::int32_t ignore_index, float* dlogits, float inv_count, double* loss) {
  const Index r = blockIdx.x;
  const float* z = logits + r * V;
  const std::int32_t y = targets[r];
  if (y == ignore_index) {
    if (dlogits)
      for (Index c = threadIdx.x; c < V; c += blockDim.x) dlogits[r * V + c] = 0.0f;
    if (threadIdx.x == 0) loss[r] = 0;
    return;
  }
  float m = -INFINITY;
  for (Index c = threadIdx.x; c < V; c += blockDim.x) m = fmaxf(m, z[c]);
  m = block_max(m);
  float sum = 0;
  for (Index c = threadIdx.x; c < V; c += blockDim.x) sum += expf(z[c] - m);
  sum = block_sum(sum);
  const float lse = m + logf(sum);
  const float target_logit = z[y];  // read before dlogits (which may be the logits) is written
  __syncthreads();
  if (threadIdx.x == 0) loss[r] = double(lse - target_logit);
  if (dlogits) {
    for (Index c = threadIdx.x; c < V; c += blockDim.x) dlogits[r * V + c] = expf(z[c] - lse) * inv_count;
    __syncthreads();
    if (threadIdx.x == 0) dlogits[r * V + y] -= inv_count;
  }
}

// --- norms ----------------------------------------------------------------------------------------------------------

__device__ float gain_at(NormFormula::Gain kind, const float* gain, float offset, Index d) {
  if (kind == NormFormula::Gain::none || !gain) return 1.0f;
  return offset + gain[kind == NormFormula::Gain::channel ? d : 0];
}

/// One block per row (cpu::norm_rows): the row's sum and squared deviation in double, then x̂ and h.
__global__ void norm_forward_kernel(NormFormula f, const float* x, const float* residual, Index D, Index ld,
                                    const float* gain, float gain_offset, const float* bias, float* h, bool accumulate,
                                    float* xhat, float* rstd) {
  const Index r = blockIdx.x;
  const float* xr = x + r * ld;
  const float* rr = residual ? residual + r * ld : nullptr;
  const auto input = [&](Index d) { return rr ? xr[d] + rr[d] : xr[d]; };
  double mean = 0;
  if (f.subtracts_mean) {
    double s = 0;
    for (Index d = threadIdx.x; d < D; d += blockDim.x) s += double(input(d));
    mean = block_sum(s) / double(D);
  }
  double sq = 0;
  for (Index d = threadIdx.x; d < D; d += blockDim.x) {
    const double v = double(input(d)) - mean;
    sq += v * v;
  }
  sq = block_sum(sq);
  const float scale = f.subtracts_mean ? float(1.0 / sqrt(sq / double(D) + f.eps))
                                       : float((f.root_dim ? sqrt(double(D)) : 1.0) / fmax(sqrt(sq), f.eps));
  const float m = float(mean);
  __syncthreads();  // every thread has read x before h (which may be x) is written
  for (Index d = threadIdx.x; d < D; d += blockDim.x) {
    const float normalized = (input(d) - m) * scale;
    if (xhat) xhat[r * D + d] = normalized;
    const float v = normalized * gain_at(f.gain, gain, gain_offset, d) + (bias ? bias[d] : 0.0f);
    float* out = h + r * ld + d;
    *out = accumulate ? *out + v : v;
  }
  if (rstd && threadIdx.x == 0) rstd[r] = scale;
}

/// One block per row (cpu::norm_backward_rows): dx; the row's dγ and dβ terms go to partial (rows, sums) for the
/// column reduction below.
__global__ void norm_backward_kernel(NormFormula f, const float* dh, Index ld_dh, const float* xhat, const float* rstd,
                                     const float* gain, float gain_offset, float* dx, Index ld_dx, Index D,
                                     float* partial, Index gain_sums, bool bias_sums) {
  const Index r = blockIdx.x;
  const float* g = dh + r * ld_dh;
  const float* xh = xhat + r * D;
  float s1 = 0, s2 = 0, s3 = 0;  // Σ dx̂, Σ dx̂ ⊙ x̂, Σ dh ⊙ x̂ (a scalar gain's gradient)
  for (Index d = threadIdx.x; d < D; d += blockDim.x) {
    const float dxh = g[d] * gain_at(f.gain, gain, gain_offset, d);
    s1 += dxh;
    s2 += dxh * xh[d];
    s3 += g[d] * xh[d];
  }
  s1 = block_sum(s1);
  s2 = block_sum(s2);
  if (gain_sums == 1) s3 = block_sum(s3);
  const float mean_dxhat = f.subtracts_mean ? s1 / float(D) : 0.0f;
  float mean_proj = s2 / (f.root_dim || f.subtracts_mean ? float(D) : 1.0f);
  const float root = f.root_dim ? float(sqrt(double(D))) : 1.0f;
  if (!f.subtracts_mean && rstd[r] * float(f.eps) >= root) mean_proj = 0;  // ‖x‖ was clamped: linear
  const float rs = rstd[r];
  const Index sums = gain_sums + (bias_sums ? D : 0);
  for (Index d = threadIdx.x; d < D; d += blockDim.x) {
    const float gd = g[d], xd = xh[d];  // read before dx (which may be dh) is written
    if (gain_sums == D) partial[r * sums + d] = gd * xd;
    if (bias_sums) partial[r * sums + gain_sums + d] = gd;
    dx[r * ld_dx + d] += rs * (gd * gain_at(f.gain, gain, gain_offset, d) - mean_dxhat - xd * mean_proj);
  }
  if (gain_sums == 1 && threadIdx.x == 0) partial[r * sums] = s3;
}

/// out[c] += Σ_rows partial[row, c] (one thread per column, rows summed in order).
__global__ void column_sum_kernel(const float* partial, Index rows, Index cols, Index first, Index count, float* out) {
  const Index c = Index(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= count) return;
  float s = 0;
  for (Index r = 0; r < rows; ++r) s += partial[r * cols + first + c];
  out[c] += s;
}

// --- rotary ---------------------------------------------------------------------------------------------------------

__global__ void rotary_kernel(const float* cos_table, const float* sin_table, Index pairs, float* x, Index rows,
                              Index row_stride, Index heads, Index dim_head, Index T_len, Index offset, float sign) {
  const Index n = rows * heads * pairs;
  for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += Index(gridDim.x) * blockDim.x) {
    const Index r = i / (heads * pairs), h = (i / pairs) % heads, p = i % pairs;
    const Index pos = r % T_len + offset;
    const float c = cos_table[pos * pairs + p], s = sign * sin_table[pos * pairs + p];
    float* v = x + r * row_stride + h * dim_head + 2 * p;
    const float a = v[0], b = v[1];
    v[0] = a * c - b * s;
    v[1] = b * c + a * s;
  }
}

}  // namespace

// --- host API -------------------------------------------------------------------------------------------------------

namespace {
void* allocate_managed(std::size_t bytes) {
  require_device();
  void* p = nullptr;
  const cudaError_t status = cudaMallocManaged(&p, bytes, cudaMemAttachGlobal);
  if (status == cudaSuccess) return p;
  (void)cudaGetLastError();
  std::size_t free = 0, total = 0;
  const bool known = cudaMemGetInfo(&free, &total) == cudaSuccess;
  (void)cudaGetLastError();
  throw Error("xtr: cannot allocate " + byte_count(bytes) + " of managed memory for the Cuda backend (" +
              (known ? byte_count(free) + " free of " + byte_count(total) : std::string("free memory unknown")) +
              "): " + cudaGetErrorName(status) + " (" + cudaGetErrorString(status) + ")");
}
void free_managed(void* p) noexcept {
  if (p) (void)cudaFree(p);
}
}  // namespace

const Memory& managed_memory() {
  static constexpr Memory memory{"cuda managed", &allocate_managed, &free_managed};
  return memory;
}

void finish(const char* what) {
  // The default (legacy) stream only: a data-parallel run's NCCL stream (kernels/nccl.cpp, non-blocking) keeps
  // reducing gradient buckets while the backward goes on.
  const cudaError_t status = cudaStreamSynchronize(cudaStreamLegacy);
  if (status == cudaSuccess) return;
  (void)cudaGetLastError();
  throw Error(std::string("xtr: CUDA kernel failed in ") + what + ": " + cudaGetErrorName(status) + " (" +
              cudaGetErrorString(status) + ")");
}

void fill(float* x, Index rows, Index cols, Index ld, float value) {
  if (rows * cols == 0) return;
  fill_kernel<<<blocks_for(rows * cols), kThreads>>>(x, rows, cols, ld, value);
  launched("fill");
}

void axpby(const float* x, Index ldx, float* y, Index ldy, Index rows, Index cols, float alpha, float beta) {
  if (rows * cols == 0) return;
  axpby_kernel<<<blocks_for(rows * cols), kThreads>>>(x, ldx, y, ldy, rows, cols, alpha, beta);
  launched("axpby");
}

void dropout(float* x, Index rows, Index cols, Index ld, double p, RandomStream stream) {
  if (p <= 0 || rows * cols == 0) return;
  dropout_kernel<<<blocks_for(rows * cols), kThreads>>>(x, rows, cols, ld, float(p), float(1.0 / (1.0 - p)), stream);
  launched("dropout");
}

void multiply_forward(const float* a, const float* b, float* y, Index rows, Index cols, Index lda, Index ldb,
                      Index ldy) {
  if (rows * cols == 0) return;
  multiply_forward_kernel<<<blocks_for(rows * cols), kThreads>>>(a, b, y, rows, cols, lda, ldb, ldy);
  launched("multiply_forward");
}

void multiply_backward(const float* dy, const float* a, const float* b, float* da, float* db, Index rows, Index cols,
                       Index ld_dy, Index lda, Index ldb, Index ld_da, Index ld_db) {
  if (rows * cols == 0) return;
  multiply_backward_kernel<<<blocks_for(rows * cols), kThreads>>>(dy, a, b, da, db, rows, cols, ld_dy, lda, ldb,
                                                                  ld_da, ld_db);
  launched("multiply_backward");
}

void scale_heads_forward(const float* x, Index ldx, const float* s, Index heads, float* y, Index ldy, Index rows,
                         Index cols) {
  if (rows * cols == 0) return;
  scale_heads_kernel<<<blocks_for(rows * cols), kThreads>>>(x, ldx, s, cols / heads, y, ldy, rows, cols);
  launched("scale_heads_forward");
}

void scale_heads_backward(const float* dy, Index ld_dy, const float* x, Index ldx, const float* s, Index heads,
                          float* dx, Index ld_dx, float* ds, Index rows, Index cols) {
  if (rows * cols == 0) return;
  if (ds) scale_heads_grad_kernel<<<unsigned(heads), kThreads>>>(dy, ld_dy, x, ldx, cols / heads, ds, rows);
  scale_heads_kernel<<<blocks_for(rows * cols), kThreads>>>(dy, ld_dy, s, cols / heads, dx, ld_dx, rows, cols);
  launched("scale_heads_backward");
}

void mix_heads_forward(Rows a, Rows b, const float* mu, Index mu_ld, Index heads, MutableRows y, Index rows,
                       Index cols) {
  if (rows * cols == 0) return;
  mix_heads_forward_kernel<<<blocks_for(rows * cols), kThreads>>>(a, b, mu, mu_ld, cols / heads, y, rows, cols);
  launched("mix_heads_forward");
}

void mix_heads_backward(Rows dy, Rows a, Rows b, const float* mu, Index mu_ld, Index heads, MutableRows da,
                        MutableRows db, float* dmu, Index rows, Index cols) {
  if (rows == 0) return;
  mix_heads_backward_kernel<<<unsigned(rows), kThreads>>>(dy, a, b, mu, mu_ld, heads, da, db, dmu, cols);
  launched("mix_heads_backward");
}

void activation_forward(Activation a, Rows x, MutableRows y, Index rows, Index cols) {
  if (rows * cols == 0) return;
  activation_forward_kernel<<<blocks_for(rows * cols), kThreads>>>(a, x, y, rows, cols);
  launched("activation_forward");
}

void activation_backward(Activation a, Rows dy, Rows x, MutableRows dx, Index rows, Index cols, bool accumulate) {
  if (rows * cols == 0) return;
  activation_backward_kernel<<<blocks_for(rows * cols), kThreads>>>(a, dy, x, dx, rows, cols, accumulate);
  launched("activation_backward");
}

void adamw_step(float* w, const float* g, float* m, float* v, Index n, const AdamWCoefficients& c) {
  if (n == 0) return;
  adamw_kernel<<<blocks_for(n), kThreads>>>(w, g, m, v, n, c);
  launched("adamw_step");
}

void embedding_forward(const std::int32_t* ids, Index N, Index D, Index T_len, Index offset, const float* table,
                       const float* positions, float position_scale, float* x) {
  if (N * D == 0) return;
  const std::int32_t* device_ids = device_readable(ids, std::size_t(N), 0);  // a TokenBatch's ids: host memory
  embedding_forward_kernel<<<blocks_for(N * D), kThreads>>>(device_ids, N, D, T_len, offset, table, positions,
                                                            position_scale, x);
  launched("embedding_forward");
}

void embedding_backward(const std::int32_t* ids, Index N, Index D, Index T_len, const float* dx, float* dtable,
                        float* dpositions, float position_scale) {
  if (N * D == 0) return;
  const std::int32_t* device_ids = device_readable(ids, std::size_t(N), 0);
  embedding_backward_kernel<<<blocks_for(N * D), kThreads>>>(device_ids, N, D, T_len, dx, dtable, dpositions,
                                                             position_scale);
  launched("embedding_backward");
}

double cross_entropy(const float* logits, Index N, Index V, const std::int32_t* targets, std::int32_t ignore_index,
                     float* dlogits, float alpha) {
  if (N == 0) return 0;
  Index count = 0;
  for (Index n = 0; n < N; ++n) count += targets[n] != ignore_index;
  const float inv_count = count > 0 ? float(double(alpha) / double(count)) : 0.0f;
  const std::int32_t* device_targets = device_readable(targets, std::size_t(N), 0);
  double* loss = loss_rows(N);
  cross_entropy_kernel<<<unsigned(N), kThreads>>>(logits, V, device_targets, ignore_index, dlogits, inv_count, loss);
  launched("cross_entropy");
  std::vector<double> rows(static_cast<std::size_t>(N));
  XTR_CUDA_CHECK(cudaMemcpy(rows.data(), loss, sizeof(double) * rows.size(), cudaMemcpyDeviceToHost));
  double total = 0;
  for (double l : rows) total += l;
  return count > 0 ? total / double(count) : 0.0;
}

void norm_forward(const NormFormula& f, const float* x, const float* residual, Index N, Index D, Index ld,
                  const float* gain, float gain_offset, const float* bias, float* h, bool accumulate, float* xhat,
                  float* rstd) {
  if (N == 0) return;
  norm_forward_kernel<<<unsigned(N), kThreads>>>(f, x, residual, D, ld, gain, gain_offset, bias, h, accumulate, xhat,
                                                 rstd);
  launched("norm_forward");
}

namespace {
Index gain_sum_count(const NormFormula& f, Index D, const float* dgain) {
  if (!dgain || f.gain == NormFormula::Gain::none) return 0;
  return f.gain == NormFormula::Gain::channel ? D : 1;
}
}  // namespace

Index norm_backward_scratch(Index N, Index D) { return N * (2 * D); }

void norm_backward(const NormFormula& f, const float* dh, Index ld_dh, const float* xhat, const float* rstd,
                   const float* gain, float gain_offset, float* dx, Index ld_dx, Index N, Index D, float* dgain,
                   float* dbias, float* scratch) {
  if (N == 0) return;
  const Index gain_sums = gain_sum_count(f, D, dgain), sums = gain_sums + (dbias ? D : 0);
  norm_backward_kernel<<<unsigned(N), kThreads>>>(f, dh, ld_dh, xhat, rstd, gain, gain_offset, dx, ld_dx, D, scratch,
                                                  gain_sums, dbias != nullptr);
  if (gain_sums > 0)
    column_sum_kernel<<<unsigned((gain_sums + kThreads - 1) / kThreads), kThreads>>>(scratch, N, sums, 0, gain_sums,
                                                                                      dgain);
  if (dbias)
    column_sum_kernel<<<unsigned((D + kThreads - 1) / kThreads), kThreads>>>(scratch, N, sums, gain_sums, D, dbias);
  launched("norm_backward");
}

void rotary_apply(const float* cos_table, const float* sin_table, Index pairs, float* x, Index rows, Index row_stride,
                  Index heads, Index dim_head, Index T_len, Index offset, bool inverse) {
  if (rows * heads * pairs == 0) return;
  rotary_kernel<<<blocks_for(rows * heads * pairs), kThreads>>>(cos_table, sin_table, pairs, x, rows, row_stride,
                                                                heads, dim_head, T_len, offset,
                                                                inverse ? -1.0f : 1.0f);
  launched("rotary_apply");
}

}  // namespace xtr::cuda
