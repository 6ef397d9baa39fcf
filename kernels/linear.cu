// The CUDA backend's Linear (host API: xtr/backend/cuda/launch.hpp): GEMMs through cuBLASLt, the bias through its BIAS
// epilogue, and one generated elementwise kernel for the rest of an epilogue expression (activation, gating, dropout,
// residual add) and its backward. Row-major operands: a row-major (r, c) matrix with rows ld apart is cuBLASLt's
// column-major (c, r) matrix with leading dimension ld, so y = x Wᵀ is yᶜ = (Wᶜ)ᵀ xᶜ:
//   forward          y (N, W)  = x Wᵀ   : m = W,  n = N, k = in;  A = W (transposed), B = x
//   weight gradient  dW (W, in) += dzᵀ x : m = in, n = W, k = N;   A = x, B = dz (transposed)
//   input gradient   dx (N, in) = dz W   : m = in, n = N, k = W;   A = W, B = dz
// NEVER RUN ON A DEVICE so far: compiled with warnings as errors and checked for spills only.
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <map>
#include <cstdint>
#include <string>
#include <utility>

#include "device.hpp"
#include "device_math.cuh"
#include "xtr/backend/cuda/launch.hpp"
#include "xtr/backend/cuda/tiles.hpp"

namespace xtr::cuda {
namespace {

void check_blas(cublasStatus_t status, const char* call, const char* file, int line) {
  if (status == CUBLAS_STATUS_SUCCESS) return;
  throw Error("xtr: cuBLASLt error at " + std::string(file) + ":" + std::to_string(line) + ": " + call + ": " +
              cublasLtGetStatusName(status) + " (" + cublasLtGetStatusString(status) + ")");
}
#define XTR_CUBLAS_CHECK(call) check_blas((call), #call, __FILE__, __LINE__)

constexpr std::size_t kWorkspaceBytes = std::size_t(32) << 20;  // cuBLASLt's recommendation for Hopper

/// What cuBLASLt's heuristic depends on: the operation, the sizes, the leading dimensions, the operands' alignments and
/// whether the bias epilogue is on. A model asks for the same few GEMMs every step: each is looked up once.
using GemmKey = std::array<std::int64_t, 12>;

/// The process's cuBLASLt handle, GEMM workspace and chosen algorithms, made on first use (after require_device()).
struct Context {
  cublasLtHandle_t handle = nullptr;
  DeviceBuffer<std::byte> workspace;
  std::map<GemmKey, cublasLtMatmulAlgo_t> algorithms;
  Context() {
    require_device();
    XTR_CUBLAS_CHECK(cublasLtCreate(&handle));
    workspace = DeviceBuffer<std::byte>(std::int64_t(kWorkspaceBytes));
  }
  ~Context() {
    if (handle) (void)cublasLtDestroy(handle);
  }
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;
};
Context& context() {
  static Context c;
  return c;
}

/// Owners of cuBLASLt descriptors (destroyed when the call returns).
struct MatmulDesc {
  cublasLtMatmulDesc_t desc = nullptr;
  MatmulDesc(cublasOperation_t transa, cublasOperation_t transb, const float* bias) {
    XTR_CUBLAS_CHECK(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    XTR_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &transa, sizeof transa));
    XTR_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &transb, sizeof transb));
    if (bias) {
      const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
      XTR_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof epilogue));
      XTR_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
    }
  }
  ~MatmulDesc() { (void)cublasLtMatmulDescDestroy(desc); }
  MatmulDesc(const MatmulDesc&) = delete;
  MatmulDesc& operator=(const MatmulDesc&) = delete;
};
struct Layout {
  cublasLtMatrixLayout_t layout = nullptr;
  Layout(Index rows, Index cols, Index ld) {  // column-major (rows, cols), leading dimension ld
    XTR_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&layout, CUDA_R_32F, std::uint64_t(rows), std::uint64_t(cols), ld));
  }
  ~Layout() { (void)cublasLtMatrixLayoutDestroy(layout); }
  Layout(const Layout&) = delete;
  Layout& operator=(const Layout&) = delete;
};

/// The largest power of two (at most 256) that divides the address: what cuBLASLt may assume of an operand (its
/// heuristic otherwise assumes 256 bytes; parameters sit at any float offset of the flat store, arena slices at 64).
std::uint32_t alignment_of(const void* p) {
  const auto address = reinterpret_cast<std::uintptr_t>(p);
  std::uint32_t a = 256;
  while (a > 4 && address % a != 0) a /= 2;
  return a;
}

__global__ void scale_kernel(float* d, Index ldd, Index m, Index n, float beta, const float* bias);

/// D = α op(A) op(B) + β C (+ bias), column-major, C = D; A is (m, k) after op, B (k, n).
void matmul(cublasOperation_t transa, cublasOperation_t transb, Index m, Index n, Index k, float alpha,
            const float* a, Index lda, const float* b, Index ldb, float beta, float* d, Index ldd, const float* bias) {
  if (m == 0 || n == 0) return;
  if (k == 0) {  // an empty product: D = β D (+ bias), which cuBLASLt need not accept
    scale_kernel<<<device::blocks_for(m * n), device::kThreads>>>(d, ldd, m, n, beta, bias);
    device::launched("matmul (k = 0)");
    return;
  }
  Context& ctx = context();
  const MatmulDesc desc(transa, transb, bias);
  const Layout la(transa == CUBLAS_OP_N ? m : k, transa == CUBLAS_OP_N ? k : m, lda);
  const Layout lb(transb == CUBLAS_OP_N ? k : n, transb == CUBLAS_OP_N ? n : k, ldb);
  const Layout ld(m, n, ldd);
  const std::uint32_t align_a = alignment_of(a), align_b = alignment_of(b), align_d = alignment_of(d);
  const GemmKey key{transa, transb, m, n, k, lda, ldb, ldd, align_a, align_b, align_d, bias != nullptr};
  auto cached = ctx.algorithms.find(key);
  if (cached == ctx.algorithms.end()) {
    cublasLtMatmulPreference_t preference = nullptr;
    XTR_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&preference));
    const std::size_t workspace = kWorkspaceBytes;
    cublasLtMatmulHeuristicResult_t heuristic{};
    int found = 0;
    const cublasStatus_t status = [&] {
      const std::pair<cublasLtMatmulPreferenceAttributes_t, const void*> settings[] = {
          {CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace},
          {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a},
          {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b},
          {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_d},
          {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_d}};
      for (const auto& [attribute, value] : settings) {
        const std::size_t size = attribute == CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES ? sizeof workspace
                                                                                        : sizeof(std::uint32_t);
        const cublasStatus_t s = cublasLtMatmulPreferenceSetAttribute(preference, attribute, value, size);
        if (s != CUBLAS_STATUS_SUCCESS) return s;
      }
      return cublasLtMatmulAlgoGetHeuristic(ctx.handle, desc.desc, la.layout, lb.layout, ld.layout, ld.layout,
                                            preference, 1, &heuristic, &found);
    }();
    (void)cublasLtMatmulPreferenceDestroy(preference);
    XTR_CUBLAS_CHECK(status);
    require(found > 0, "cuBLASLt has no fp32 algorithm for a GEMM of m ", m, ", n ", n, ", k ", k);
    cached = ctx.algorithms.emplace(key, heuristic.algo).first;
  }
  XTR_CUBLAS_CHECK(cublasLtMatmul(ctx.handle, desc.desc, &alpha, a, la.layout, b, lb.layout, &beta, d, ld.layout, d,
                                  ld.layout, &cached->second, ctx.workspace.data(), kWorkspaceBytes, nullptr));
}

/// D (m, n; column-major) = β D (+ bias per row i).
__global__ void scale_kernel(float* d, Index ldd, Index m, Index n, float beta, const float* bias) {
  const Index total = m * n;
  for (Index e = Index(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += Index(gridDim.x) * blockDim.x) {
    const Index i = e % m, j = e / m;
    float* out = d + j * ldd + i;
    *out = (beta == 0.0f ? 0.0f : beta * *out) + (bias ? bias[i] : 0.0f);
  }
}

using device::blocks_for;
using device::kThreads;

/// One thread per output entry (n, c), c < F.
__global__ void epilogue_forward_kernel(EpilogueSpec e, const float* a, Index lda, Index N, Index F, float* out,
                                        Index ld_out, float threshold, float keep_scale, RandomStream stream) {
  const Index total = N * F;
  for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += Index(gridDim.x) * blockDim.x) {
    const Index n = i / F, c = i % F;
    const float* ar = a + n * lda;
    float y = e.gated ? ar[c] * device::activation_value(e.activation, ar[F + c]) : device::activation_value(e.activation, ar[c]);
    if (e.dropout) y *= tiles::uniform_draw(stream, std::uint64_t(i)) >= threshold ? keep_scale : 0.0f;
    float* o = out + n * ld_out + c;
    *o = e.add_to ? *o + y : y;
  }
}

__global__ void epilogue_backward_kernel(EpilogueSpec e, const float* dout, Index ld_dout, const float* a, Index lda,
                                         Index N, Index F, float* dz, Index ld_dz, float threshold, float keep_scale,
                                         RandomStream stream) {
  const Index total = N * F;
  for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += Index(gridDim.x) * blockDim.x) {
    const Index n = i / F, c = i % F;
    float dy = dout[n * ld_dout + c];
    if (e.dropout) dy *= tiles::uniform_draw(stream, std::uint64_t(i)) >= threshold ? keep_scale : 0.0f;
    const float* ar = a + n * lda;
    float* dr = dz + n * ld_dz;
    if (e.gated) {
      const float u = ar[c], v = ar[F + c];
      dr[c] = dy * device::activation_value(e.activation, v);
      dr[F + c] = dy * u * device::activation_derivative(e.activation, v);
    } else if (e.activation != Activation::identity) {
      dr[c] = dy * device::activation_derivative(e.activation, ar[c]);
    } else {
      dr[c] = dy;  // dropout alone: no pre-activation is read (none may be saved)
    }
  }
}

/// y[n, c] += b[c].
__global__ void add_bias_kernel(float* y, Index ldy, Index N, Index W, const float* b) {
  const Index total = N * W;
  for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += Index(gridDim.x) * blockDim.x)
    y[(i / W) * ldy + i % W] += b[i % W];
}

/// db[c] += α Σ_rows dz[·, c]: one thread per column, rows in order.
__global__ void bias_gradient_kernel(const float* dz, Index ld_dz, Index N, Index W, float* db, float alpha) {
  const Index c = Index(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= W) return;
  float s = 0;
  for (Index n = 0; n < N; ++n) s += dz[n * ld_dz + c];
  db[c] += alpha * s;
}

}  // namespace

void gemm_forward(const float* x, Index ldx, const float* w, Index ldw, float* y, Index ldy, Index N, Index W,
                  Index in, float alpha, float beta, const float* bias) {
  x = device_readable(x, std::size_t(N > 0 ? (N - 1) * ldx + in : 0), 0);  // a caller's context rows, say
  // y += α x Wᵀ + b, or a bias cuBLASLt's epilogue may not read (under 16-byte alignment): the bias by its own pass
  if (bias && (beta != 0.0f || alignment_of(bias) < 16)) {
    matmul(CUBLAS_OP_T, CUBLAS_OP_N, W, N, in, alpha, w, ldw, x, ldx, beta, y, ldy, nullptr);
    if (N * W == 0) return;
    add_bias_kernel<<<blocks_for(N * W), kThreads>>>(y, ldy, N, W, bias);
    device::launched("gemm_forward (bias)");
    return;
  }
  matmul(CUBLAS_OP_T, CUBLAS_OP_N, W, N, in, alpha, w, ldw, x, ldx, beta, y, ldy, bias);
}

void gemm_weight_gradient(const float* dz, Index ld_dz, const float* x, Index ldx, float* dw, Index ldw, Index N,
                          Index W, Index in, float alpha) {
  x = device_readable(x, std::size_t(N > 0 ? (N - 1) * ldx + in : 0), 1);
  matmul(CUBLAS_OP_N, CUBLAS_OP_T, in, W, N, alpha, x, ldx, dz, ld_dz, 1.0f, dw, ldw, nullptr);
}

void gemm_input_gradient(const float* dz, Index ld_dz, const float* w, Index ldw, float* dx, Index ld_dx, Index N,
                         Index W, Index in, float alpha, float beta) {
  matmul(CUBLAS_OP_N, CUBLAS_OP_N, in, N, W, alpha, w, ldw, dz, ld_dz, beta, dx, ld_dx, nullptr);
}

void epilogue_forward(const EpilogueSpec& e, const float* a, Index lda, Index N, Index W, float* out, Index ld_out,
                      double p, RandomStream stream) {
  const Index F = e.gated ? W / 2 : W;
  if (N * F == 0) return;
  EpilogueSpec spec = e;
  spec.dropout = e.dropout && p > 0;
  epilogue_forward_kernel<<<blocks_for(N * F), kThreads>>>(spec, a, lda, N, F, out, ld_out, float(p),
                                                           spec.dropout ? float(1.0 / (1.0 - p)) : 1.0f, stream);
  device::launched("epilogue_forward");
}

void epilogue_backward(const EpilogueSpec& e, const float* dout, Index ld_dout, const float* a, Index lda, Index N,
                       Index W, float* dz, Index ld_dz, double p, RandomStream stream) {
  const Index F = e.gated ? W / 2 : W;
  if (N * F == 0) return;
  EpilogueSpec spec = e;
  spec.dropout = e.dropout && p > 0;
  epilogue_backward_kernel<<<blocks_for(N * F), kThreads>>>(spec, dout, ld_dout, a, lda, N, F, dz, ld_dz, float(p),
                                                            spec.dropout ? float(1.0 / (1.0 - p)) : 1.0f, stream);
  device::launched("epilogue_backward");
}

void bias_gradient(const float* dz, Index ld_dz, Index N, Index W, float* db, float alpha) {
  if (W == 0) return;
  bias_gradient_kernel<<<unsigned((W + kThreads - 1) / kThreads), kThreads>>>(dz, ld_dz, N, W, db, alpha);
  device::launched("bias_gradient");
}

}  // namespace xtr::cuda
