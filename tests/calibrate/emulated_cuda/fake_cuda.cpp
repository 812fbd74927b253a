// A host-memory stand-in for the CUDA runtime, cuBLAS and the inference backend's kernels, for
// running CudaGatedModel's host code on the CPU (duo_calib_emulation_tests): "device" memory is
// host memory, streams and events are synchronous no-ops, cublasGemmEx is the BLAS definition
// (column-major, op(A) op(B), bf16 operands, fp32 accumulation and output), and the backend
// kernels the calibration reuses (embedding, RMSNorm, residual + RMSNorm, bias + RoPE, SwiGLU) are
// plain loops with their documented semantics (backend/cuda/kernels.h; the real ones are checked
// on the GPU by tests/cuda/ops_test.cpp). The calibration's own kernels do not come from here:
// they run from their source under the device emulation (emulated_launchers.cpp).
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include "backend/cuda/kernels.h"
#include "backend/cuda/synthetic.h"

namespace {
int g_stream_tag, g_event_tag, g_handle_tag;
}

// ---------------------------------------------------------------------------------- runtime
cudaError_t cudaMalloc(void** p, size_t bytes) {
  *p = std::aligned_alloc(256, (bytes + 255) / 256 * 256);
  if (!*p) return cudaErrorMemoryAllocation;
  std::memset(*p, 0xff, bytes);  // NaN bit patterns until written, as uninitialised device memory may hold
  return cudaSuccess;
}
cudaError_t cudaFree(void* p) {
  std::free(p);
  return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t* free_b, size_t* total_b) {
  *free_b = size_t(64) << 30, *total_b = size_t(80) << 30;
  return cudaSuccess;
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t n, cudaMemcpyKind) {
  std::memcpy(dst, src, n);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind, cudaStream_t) {
  std::memcpy(dst, src, n);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t) {
  std::memset(p, v, n);
  return cudaSuccess;
}
cudaError_t cudaStreamCreate(cudaStream_t* s) {
  *s = reinterpret_cast<cudaStream_t>(&g_stream_tag);
  return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
cudaError_t cudaEventCreate(cudaEvent_t* e) {
  *e = reinterpret_cast<cudaEvent_t>(&g_event_tag);
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventRecord(cudaEvent_t, cudaStream_t) { return cudaSuccess; }
cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t, cudaEvent_t) {
  *ms = 0.0f;
  return cudaSuccess;
}
cudaError_t cudaGetLastError() { return cudaSuccess; }
const char* cudaGetErrorString(cudaError_t e) { return e == cudaSuccess ? "no error" : "emulated CUDA error"; }
cudaError_t cudaFuncSetAttribute(const void*, cudaFuncAttribute, int) { return cudaSuccess; }

// ---------------------------------------------------------------------------------- cuBLAS
cublasStatus_t cublasCreate(cublasHandle_t* h) {
  *h = reinterpret_cast<cublasHandle_t>(&g_handle_tag);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy(cublasHandle_t) { return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasSetStream(cublasHandle_t, cudaStream_t) { return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasSetWorkspace(cublasHandle_t, void*, size_t) { return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasSetMathMode(cublasHandle_t, cublasMath_t) { return CUBLAS_STATUS_SUCCESS; }
const char* cublasGetStatusString(cublasStatus_t s) {
  return s == CUBLAS_STATUS_SUCCESS ? "CUBLAS_STATUS_SUCCESS" : "emulated cuBLAS error";
}

// C (m x n) = alpha op(A) op(B) + beta C, column-major, as the BLAS reference defines it.
cublasStatus_t cublasGemmEx(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                            const void* alpha, const void* A, cudaDataType at, int lda, const void* B, cudaDataType bt,
                            int ldb, const void* beta, void* C, cudaDataType ct, int ldc, cublasComputeType_t comp,
                            cublasGemmAlgo_t) {
  if (at != CUDA_R_16BF || bt != CUDA_R_16BF || ct != CUDA_R_32F || comp != CUBLAS_COMPUTE_32F)
    return CUBLAS_STATUS_NOT_SUPPORTED;
  if (lda < (ta == CUBLAS_OP_N ? m : k) || ldb < (tb == CUBLAS_OP_N ? k : n) || ldc < m)
    return CUBLAS_STATUS_INVALID_VALUE;
  const auto* a = static_cast<const __nv_bfloat16*>(A);
  const auto* b = static_cast<const __nv_bfloat16*>(B);
  auto* c = static_cast<float*>(C);
  const float al = *static_cast<const float*>(alpha), be = *static_cast<const float*>(beta);
  for (int j = 0; j < n; ++j)
    for (int i = 0; i < m; ++i) {
      float acc = 0.0f;
      for (int l = 0; l < k; ++l) {
        const float x = __bfloat162float(ta == CUBLAS_OP_N ? a[i + (int64_t)l * lda] : a[l + (int64_t)i * lda]);
        const float y = __bfloat162float(tb == CUBLAS_OP_N ? b[l + (int64_t)j * ldb] : b[j + (int64_t)l * ldb]);
        acc += x * y;
      }
      float& out = c[i + (int64_t)j * ldc];
      out = be == 0.0f ? al * acc : al * acc + be * out;  // beta 0: C is not read
    }
  return CUBLAS_STATUS_SUCCESS;
}

// ---------------------------------------------------------------------------------- backend kernels
namespace duo::cuda {

void embed_tokens(const bf16* table, const int32_t* tokens, int n, int E, float* x, cudaStream_t, float scale) {
  for (int t = 0; t < n; ++t)
    for (int i = 0; i < E; ++i) x[(int64_t)t * E + i] = __bfloat162float(table[(int64_t)tokens[t] * E + i]) * scale;
}

static void norm_row(const float* x, const float* w, bf16* y, int E, float eps) {
  float ss = 0.0f;
  for (int i = 0; i < E; ++i) ss += x[i] * x[i];
  const float scale = 1.0f / sqrtf(ss / (float)E + eps);
  for (int i = 0; i < E; ++i) y[i] = __float2bfloat16(x[i] * scale * w[i]);
}

void rmsnorm(const float* x, const float* w, bf16* y, int64_t n, int E, float eps, cudaStream_t) {
  for (int64_t t = 0; t < n; ++t) norm_row(x + t * E, w, y + t * E, E, eps);
}

void add_rmsnorm(float* x, const float* d, const float* w, bf16* y, int64_t n, int E, float eps, cudaStream_t) {
  for (int64_t t = 0; t < n; ++t) {
    for (int i = 0; i < E; ++i) x[t * E + i] += d[t * E + i];
    norm_row(x + t * E, w, y + t * E, E, eps);
  }
}

void add_inplace(float* x, const float* d, int64_t count, cudaStream_t) {
  for (int64_t i = 0; i < count; ++i) x[i] += d[i];
}

void qkv_bias_rope(const QkvRopeArgs& a, cudaStream_t) {
  if (a.to_cache || a.pos_d) throw std::invalid_argument("emulated qkv_bias_rope: no decode form");
  if (a.q_norm || a.k_norm)  // the calibration refuses q/k-norm models, so it never asks for it
    throw std::invalid_argument("emulated qkv_bias_rope: no per-head q/k norm");
  const int D = a.head_dim, half = D / 2;
  const int64_t Q = (int64_t)a.n_heads * D, KV = (int64_t)a.n_kv_heads * D;
  for (int t = 0; t < a.n; ++t) {
    const float* row = a.qkv + (int64_t)t * a.ld;
    const float pos = (float)(a.pos0 + t);
    for (int head = 0; head < a.n_heads + a.n_kv_heads; ++head)
      for (int i = 0; i < half; ++i) {
        const int64_t src = head < a.n_heads ? (int64_t)head * D : Q + (int64_t)(head - a.n_heads) * D;
        bf16* dst = head < a.n_heads ? a.q + (int64_t)t * Q + src : a.k + (int64_t)t * KV + (src - Q);
        const int ia = a.neox ? i : 2 * i, ib = a.neox ? i + half : 2 * i + 1;
        float x0 = row[src + ia], x1 = row[src + ib];
        if (a.bias) x0 += a.bias[src + ia], x1 += a.bias[src + ib];
        float s, c;
        sincosf(pos * a.inv_freq[i], &s, &c);
        const float m = head < a.n_heads ? a.q_scale : 1.0f;
        dst[ia] = __float2bfloat16((x0 * c - x1 * s) * m);
        dst[ib] = __float2bfloat16((x0 * s + x1 * c) * m);
      }
    for (int64_t j = 0; j < KV; ++j)
      a.v[(int64_t)t * KV + j] = __float2bfloat16(row[Q + KV + j] + (a.bias ? a.bias[Q + KV + j] : 0.0f));
  }
}

void swiglu(const float* gu, int64_t n, int F, bf16* out, cudaStream_t, Glu act) {
  if (act != Glu::Silu)  // the calibration refuses gemma3, the only GeGLU model
    throw std::invalid_argument("emulated swiglu: SwiGLU only");
  for (int64_t t = 0; t < n; ++t)
    for (int i = 0; i < F; ++i) {
      const float g = gu[t * 2 * F + i], u = gu[t * 2 * F + F + i];
      out[t * F + i] = __float2bfloat16(g / (1.0f + expf(-g)) * u);
    }
}

bool gemv_bf16_supported(const bf16*, int64_t, const bf16*) { return false; }  // cuBLAS for every shape
void gemv_bf16(const bf16*, int64_t, int64_t, const bf16*, float*, bool, cudaStream_t) {
  throw std::logic_error("emulated gemv_bf16: not used");
}

// Decode GEMVs and int8 weights are inference paths the calibration never takes (it loads bf16
// weights and runs every linear layer through cuBLAS); they exist here so the host code links.
void gemv_swiglu_bf16(const bf16*, int64_t, int64_t, const bf16*, bf16*, cudaStream_t, Glu) {
  throw std::logic_error("emulated gemv_swiglu_bf16: not used");
}
bool gemv_int8_supported(const int8_t*, int64_t, const bf16*) { return false; }
void gemv_int8(const int8_t*, const float*, int64_t, int64_t, const bf16*, float*, bool, cudaStream_t) {
  throw std::logic_error("emulated gemv_int8: not used");
}
void gemv_swiglu_int8(const int8_t*, const float*, int64_t, int64_t, const bf16*, bf16*, cudaStream_t, Glu) {
  throw std::logic_error("emulated gemv_swiglu_int8: not used");
}
void dequant_int8_rows(const int8_t*, const float*, int64_t, int64_t, bf16*, cudaStream_t) {
  throw std::logic_error("emulated dequant_int8_rows: not used");
}
void fill_int8(int8_t*, int64_t, uint64_t, cudaStream_t) { throw std::logic_error("emulated fill_int8: not used"); }

void fill_uniform(bf16* dst, int64_t count, uint64_t seed, float center, float scale, cudaStream_t) {
  for (int64_t i = 0; i < count; ++i) dst[i] = __float2bfloat16(center + scale * hash_uniform(seed, (uint64_t)i));
}
void fill_uniform(float* dst, int64_t count, uint64_t seed, float center, float scale, cudaStream_t) {
  for (int64_t i = 0; i < count; ++i) dst[i] = center + scale * hash_uniform(seed, (uint64_t)i);
}

}  // namespace duo::cuda
