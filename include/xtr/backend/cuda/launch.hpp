#pragma once
// The host API of the CUDA backend's kernels (kernels/*.cu, library xtr::cuda_kernels): plain C++ declarations, no
// CUDA header, so that backend/cuda/backend.hpp and a model on Cuda<float> compile with the host compiler alone and
// link xtr::cuda_kernels. Every pointer is memory the device reaches (Cuda<T>::memory(): managed memory), except where a
// parameter says "host". Launches go to the default stream, in order; cuda::finish() waits for them and reports a
// failed launch or kernel as an xtr::Error naming it.
// Each function names its CPU reference (backend/cpu/, the same formula); kernels/cuda_tests.cpp compares them.
#include <cstddef>
#include <cstdint>

#include "xtr/backend/ops.hpp"
#include "xtr/core/memory.hpp"
#include "xtr/core/rng.hpp"

namespace xtr::cuda {

using Index = std::int64_t;

/// Managed memory (cudaMallocManaged): the host reads and writes it too (parameter initialisation, checkpoints, the
/// layers' host-side bookkeeping), the device pages it in. Throws xtr::Error when no device is usable ("no CUDA
/// device at run time ...") or when the allocation fails (naming the bytes asked for and the bytes free).
[[nodiscard]] const Memory& managed_memory();

/// Waits for every launch so far on the default stream (not for a data-parallel run's NCCL stream); throws xtr::Error
/// naming `what` and CUDA's reason when one failed.
void finish(const char* what);

// --- elementwise (backend/cpu/backend.hpp's kernels of the same ops) ------------------------------------------------

/// x ← value on (rows, cols) rows ld apart.
void fill(float* x, Index rows, Index cols, Index ld, float value);
/// y ← β y + α x (β = 0: y ← α x, y's old values never read).
void axpby(const float* x, Index ldx, float* y, Index ldy, Index rows, Index cols, float alpha, float beta);
/// x ← x · keep / (1 − p), keep(n, c) = uniform(n · cols + c) ≥ float(p) (the CPU's mask, bit for bit).
void dropout(float* x, Index rows, Index cols, Index ld, double p, RandomStream stream);
/// y = a ⊙ b; backward da = dy ⊙ b, db = dy ⊙ a (a null da or db is skipped). Every operand rows `ld` apart.
void multiply_forward(const float* a, const float* b, float* y, Index rows, Index cols, Index lda, Index ldb,
                      Index ldy);
void multiply_backward(const float* dy, const float* a, const float* b, float* da, float* db, Index rows, Index cols,
                       Index ld_dy, Index lda, Index ldb, Index ld_da, Index ld_db);
/// y_h = x_h · s_h; backward: ds_h += Σ dy_h ⊙ x_h (ds may be null), then dx = dy_h · s_h (dx may be dy).
void scale_heads_forward(const float* x, Index ldx, const float* s, Index heads, float* y, Index ldy, Index rows,
                         Index cols);
void scale_heads_backward(const float* dy, Index ld_dy, const float* x, Index ldx, const float* s, Index heads,
                          float* dx, Index ld_dx, float* ds, Index rows, Index cols);
/// y = a + μ (b − a) per head, torch.lerp's two-sided formula; backward da += (1 − μ) dy, db = μ dy, dμ = Σ dy ⊙ (b − a).
/// Views: {data, ld}.
struct Rows {
  const float* data = nullptr;
  Index ld = 0;
};
struct MutableRows {
  float* data = nullptr;
  Index ld = 0;
};
void mix_heads_forward(Rows a, Rows b, const float* mu, Index mu_ld, Index heads, MutableRows y, Index rows,
                       Index cols);
void mix_heads_backward(Rows dy, Rows a, Rows b, const float* mu, Index mu_ld, Index heads, MutableRows da,
                        MutableRows db, float* dmu, Index rows, Index cols);

/// The activations of policies/activations.hpp (backend/cpu/activations.hpp's formulas).
enum class Activation : std::uint8_t { identity, gelu, silu, relu_squared, sigmoid };
/// y = A(x); backward dx (+)= dy ⊙ A'(x).
void activation_forward(Activation a, Rows x, MutableRows y, Index rows, Index cols);
void activation_backward(Activation a, Rows dy, Rows x, MutableRows dx, Index rows, Index cols, bool accumulate);

/// One AdamW step over n parameters (kernel<Cpu<T>, ops::AdamWUpdate>'s formula and coefficients).
struct AdamWCoefficients {
  float step_size, decay, eps, beta1, beta2, one_minus_beta1, one_minus_beta2, bias2_sqrt;
};
void adamw_step(float* w, const float* g, float* m, float* v, Index n, const AdamWCoefficients& c);

// --- GEMMs through cuBLASLt (kernels/linear.cu), row-major operands as the CPU backend's ------------------------------
// fp32 in, fp32 out, fp32 compute (CUBLAS_COMPUTE_32F: no TF32, so that Cuda<float> compares with Cpu<float> at float
// tolerance).

/// y (N, W; rows ld_y apart) = α · x Wᵀ + β · y [+ bias per column, cuBLASLt's BIAS epilogue]; x (N, in), w (W, in).
void gemm_forward(const float* x, Index ldx, const float* w, Index ldw, float* y, Index ldy, Index N, Index W,
                  Index in, float alpha, float beta, const float* bias);
/// dW (W, in; rows ldw apart) += α · dzᵀ x.
void gemm_weight_gradient(const float* dz, Index ld_dz, const float* x, Index ldx, float* dw, Index ldw, Index N,
                          Index W, Index in, float alpha);
/// dx (N, in) = α · dz W + β · dx.
void gemm_input_gradient(const float* dz, Index ld_dz, const float* w, Index ldw, float* dx, Index ld_dx, Index N,
                         Index W, Index in, float alpha, float beta);

/// An epilogue expression's shape (backend/epilogue.hpp's Shape<E>) as run-time values: the one generated elementwise
/// kernel reads it (the activation, gating and dropout that cuBLASLt's epilogues do not compute as x-transformers
/// does: its GELU epilogue is the tanh approximation, x-transformers' the exact erf).
struct EpilogueSpec {
  Activation activation = Activation::identity;
  bool gated = false, dropout = false, add_to = false;
};
/// out (N, F) (+)= drop(A(a)) or drop(u ⊙ A(v)) with [u | v] = a (N, W = 2F), a rows lda apart (cpu::epilogue_rows
/// after the scale and bias, which the GEMM applied).
void epilogue_forward(const EpilogueSpec& e, const float* a, Index lda, Index N, Index W, float* out, Index ld_out,
                      double p, RandomStream stream);
/// dz (N, W) from dout (N, F): the dropout mask, then A′ at the saved a (cpu::epilogue_rows_backward without the bias
/// sum). dz may be dout when W = F.
void epilogue_backward(const EpilogueSpec& e, const float* dout, Index ld_dout, const float* a, Index lda, Index N,
                       Index W, float* dz, Index ld_dz, double p, RandomStream stream);
/// db (W) += α Σ_rows dz.
void bias_gradient(const float* dz, Index ld_dz, Index N, Index W, float* db, float alpha);

// --- embedding, cross-entropy, norms, rotary ------------------------------------------------------------------------

/// x[n] = E[ids[n]] (+ scale · P[n mod T_len + offset]); backward dE[ids[n]] += dx[n], dP[n mod T_len] += scale dx[n]
/// (atomic adds: rows with equal ids sum in any order). x, dx contiguous (N, D). `ids` may be host memory (a
/// TokenBatch): it is copied to a device staging buffer first.
void embedding_forward(const std::int32_t* ids, Index N, Index D, Index T_len, Index offset, const float* table,
                       const float* positions, float position_scale, float* x);
void embedding_backward(const std::int32_t* ids, Index N, Index D, Index T_len, const float* dx, float* dtable,
                        float* dpositions, float position_scale);

/// The mean loss over targets ≠ ignore_index of rows (N, V) of logits (0 when none); dlogits (may be null, may be the
/// logits) = α (softmax − onehot) / M, 0 on ignored rows. `targets` is read on the host (M is counted there) and
/// copied to the device; waits for the result (the loss comes back to the host).
double cross_entropy(const float* logits, Index N, Index V, const std::int32_t* targets, std::int32_t ignore_index,
                     float* dlogits, float alpha);

/// A norm policy's formula (policies/*_norm.hpp): x̂ = (x − μ) r with r = 1/sqrt(σ² + ε) (subtracts_mean), else x̂ = x r
/// with r = (root_dim ? sqrt(D) : 1) / max(‖x‖, ε); h = x̂ ⊙ (c + γ) [+ β] with γ per channel, one scalar, or none.
struct NormFormula {
  bool subtracts_mean = true, root_dim = true;
  enum class Gain : std::uint8_t { channel, scalar, none } gain = Gain::channel;
  double eps = 1e-5;
};
/// cpu::norm_rows: h (+)= norm(x [+ residual]) (N, D, rows ld apart); x̂ (N, D) and r (N) kept when non-null.
void norm_forward(const NormFormula& f, const float* x, const float* residual, Index N, Index D, Index ld,
                  const float* gain, float gain_offset, const float* bias, float* h, bool accumulate, float* xhat,
                  float* rstd);
/// cpu::norm_backward_rows: dx += ∂h/∂xᵀ dh; dγ, dβ += (each when non-null). `scratch`: norm_backward_scratch floats.
void norm_backward(const NormFormula& f, const float* dh, Index ld_dh, const float* xhat, const float* rstd,
                   const float* gain, float gain_offset, float* dx, Index ld_dx, Index N, Index D, float* dgain,
                   float* dbias, float* scratch);
[[nodiscard]] Index norm_backward_scratch(Index N, Index D);

/// cpu::RotaryTable::apply: the first 2 · pairs channels of each head of `rows` rows (row_stride apart) rotated by the
/// tables' (positions, pairs) cos and sin at position n mod T_len + offset; `inverse` applies the transpose.
void rotary_apply(const float* cos_table, const float* sin_table, Index pairs, float* x, Index rows, Index row_stride,
                  Index heads, Index dim_head, Index T_len, Index offset, bool inverse);

// --- attention (kernels/attention_tiles.cu, kernels/attention_backward.cu) ------------------------------------------

/// O and lse of ops::Attention (cpu::attention_forward's contract): the flash forward of kernels/attention_tiles.cuh.
/// Throws for a head dim without a kernel (compiled: 32, 64, 128), memory keys (not written yet), kv_heads not
/// dividing heads.
void attention(const ops::AttentionProblem<float>& p, ops::HeadsView<const float> q, ops::HeadsView<const float> k,
               ops::HeadsView<const float> v, ops::HeadsView<float> o, float* lse);
/// dQ, dK, dV added to (zeroed by the caller), memory keys' and the bias table's gradients into `extra`
/// (cpu::attention_backward's contract). `scratch`: attention_backward_scratch(p) floats. dim_head ≤ 128.
void attention_backward(const ops::AttentionProblem<float>& p, ops::HeadsView<const float> q,
                        ops::HeadsView<const float> k, ops::HeadsView<const float> v, ops::HeadsView<const float> o,
                        const float* lse, ops::HeadsView<const float> dout, ops::HeadsView<float> dq,
                        ops::HeadsView<float> dk, ops::HeadsView<float> dv,
                        const ops::AttentionExtraGradients<float>& extra, float* scratch);
[[nodiscard]] Index attention_backward_scratch(const ops::AttentionProblem<float>& p);

}  // namespace xtr::cuda
