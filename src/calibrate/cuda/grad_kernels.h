// The non-attention CUDA kernels of the calibration's forward and backward passes, as
// host-callable launchers (the attention kernels are in flash_attention_cuda.h; the forward
// reuses backend/cuda's embedding, RMSNorm, bias + RoPE and SwiGLU kernels and Gemm). Each has
// a CPU twin in src/calibrate/grad_ops.h that tests/cuda/calib_ops_test.cpp checks it against.
//
// Precision: everything is computed in fp32 (reductions of the gate gradient in double); what
// feeds a GEMM or the attention kernels is written as bf16, everything else as fp32. Layout is
// [token][feature] with int64 offsets throughout. All pointers are device pointers; launchers
// enqueue on `stream` and check the launch, throwing duo::Error that names the op
// (backend/cuda/cuda_check.h, the one error convention of the CUDA code).
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "backend/cuda/attention.cuh"  // bf16

namespace duo::cuda::calib {

// Throws duo::Error naming `op` when the last launch (or an earlier asynchronous error) failed
// (fail_call of cuda_check.h, with a hint on finding the failing kernel).
void check_launch(const char* op);

// --- RMSNorm --------------------------------------------------------------------------------
// Backward of y = x / sqrt(mean(x^2) + eps) * w over rows of `dim` (CPU: rmsnorm_backward):
//   dx = r * (dy * w) - r^3 * x * sum(dy * w * x) / dim,  r = 1 / sqrt(mean(x^2) + eps)
// written (accumulate false) or added (true) to dx. rows: when non-null, row r of dy belongs to
// row rows[r] of x and dx (the final norm at the loss rows; rows must be distinct); n rows.
void rmsnorm_backward(const float* x, const float* w, const float* dy, float* dx, int64_t n, int dim, float eps,
                      bool accumulate, const int32_t* rows, cudaStream_t stream);
// out[r] = rmsnorm(x[rows[r]]) * w in fp32 for r < n (the final norm at the loss rows).
void rmsnorm_rows_f32(const float* x, const int32_t* rows, const float* w, float* out, int64_t n, int dim, float eps,
                      cudaStream_t stream);

// --- element-wise ---------------------------------------------------------------------------
// SwiGLU backward (CPU: swiglu_backward): gu holds the forward's gate and up projections side by
// side ([n][2F]: g = gu[t][i], u = gu[t][F + i]); dh [n][F]. Writes d gu as bf16 in the same
// [n][2F] layout, the input of the single backward GEMM through Wgate|Wup:
//   dg = dh * u * s * (1 + g * (1 - s)),  du = dh * silu(g),  s = sigmoid(g).
void swiglu_backward(const float* gu, const float* dh, bf16* dgu, int64_t n, int F, cudaStream_t stream);
// y[i] = bf16(x[i]) (a gradient becoming a GEMM operand).
void to_bf16(const float* x, bf16* y, int64_t count, cudaStream_t stream);

// --- gate mixing (CPU: gate_mix_forward / gate_mix_backward) ----------------------------------
// Rows of n_heads * head_dim; query head h belongs to KV head h / (n_heads / n_kv_heads).
// o = bf16(a * full + (1 - a) * streaming) per KV head's gate a (gates: n_kv_heads floats of
// this layer); gates == nullptr: o = bf16(full) (the frozen model: full attention only).
void gate_mix_forward(const float* full, const float* streaming, const float* gates, bf16* o, int64_t n, int n_heads,
                      int n_kv_heads, int head_dim, cudaStream_t stream);
// d_full = bf16(a * d_o), d_stream = bf16((1 - a) * d_o), and
// d_gates[h] += sum over tokens and the group's query heads of d_o . (full - streaming), reduced
// deterministically: per-chunk partial sums (fixed chunks of rows) in `partials`, then added in
// chunk order in double. partials: gate_partials_count(n, n_kv_heads) doubles. n_kv_heads <= 64.
int64_t gate_partials_count(int64_t n, int n_kv_heads);
void gate_mix_backward(const float* full, const float* streaming, const float* gates, const float* d_o, bf16* d_full,
                       bf16* d_stream, double* partials, double* d_gates, int64_t n, int n_heads, int n_kv_heads,
                       int head_dim, cudaStream_t stream);

// --- attention gradients -> QKV GEMM input ----------------------------------------------------
// The step between the attention backward and the backward GEMM through Wq|Wk|Wv: for every
// token t (position t),
//   dqkv[t][0, Q)                = bf16(rope^-1(dq[t]))
//   dqkv[t][Q + j D, Q + (j+1) D) = bf16(rope^-1(sum_g dk_part[t][j G + g]))   (GQA: the group's
//   dqkv[t][Q + KV + j D, ...)    = bf16(sum_g dv_part[t][j G + g]))           query heads summed)
// where dk_part / dv_part hold per-query-head contributions ([n][n_heads][head_dim], as the
// attention backward writes them) and rope^-1 rotates every pair by -angle (the RoPE backward;
// angle = t * inv_freq[i]; pairs (2i, 2i+1) when !neox, (i, i + D/2) when neox). The bias has no
// input gradient. CPU twins: rope_apply(..., inverse = true) and the sums.
struct QkvGradArgs {
  const float* dq = nullptr;        // [n][n_heads * head_dim]
  const float* dk_part = nullptr;   // [n][n_heads * head_dim]
  const float* dv_part = nullptr;   // [n][n_heads * head_dim]
  const float* inv_freq = nullptr;  // [head_dim / 2]
  bf16* dqkv = nullptr;             // [n][(n_heads + 2 n_kv_heads) * head_dim]
  int64_t n = 0;
  int n_heads = 0, n_kv_heads = 0, head_dim = 0;
  bool neox = false;
};
void qkv_grad_pack(const QkvGradArgs& a, cudaStream_t stream);

// --- logit distillation (CPU: calibrate/logit_loss.h logit_kl) ----------------------------------
// z: [2 rows][vocab] fp32, the LM head's z_full rows then the (z_mix - z_full) rows. Per row r,
// kl_rows[r] = KL(softmax(z_full[r]) || softmax(z_mix[r])) (z_mix = z_full + delta in fp32) in
// double, and d_mix[r] = bf16((softmax(z_mix[r]) - softmax(z_full[r])) / rows), the gradient of
// the mean over rows w.r.t. z_mix. The caller sums kl_rows in row order (the host twin's order).
void logit_kl_grad(const float* z, int64_t rows, int64_t vocab, double* kl_rows, bf16* d_mix, cudaStream_t stream);

}  // namespace duo::cuda::calib
