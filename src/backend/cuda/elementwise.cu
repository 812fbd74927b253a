// Element-wise kernels of the forward: embedding lookup, SwiGLU / GeGLU, logit soft-capping, and
// the seeded fill that makes synthetic weights (and synthetic KV contents for the decode
// benchmark) on the GPU.
#include <algorithm>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels.h"
#include "backend/cuda/swiglu.cuh"
#include "backend/cuda/synthetic.h"

namespace duo::cuda {
namespace detail {
namespace {

// Grid-stride loops over int64 counts: a 1M-token cache or a 150K x 4K matrix exceeds 2^31.
__host__ unsigned grid_for(int64_t count, int threads) {
  return (unsigned)std::max<int64_t>(1, std::min<int64_t>((count + threads - 1) / threads, 1 << 16));
}

__global__ void embed_kernel(const bf16* table, const int32_t* tokens, int E, float* x, float scale) {
  const int t = blockIdx.x;
  const bf16* row = table + (int64_t)tokens[t] * E;
  float* out = x + (int64_t)t * E;
  for (int i = threadIdx.x; i < E; i += blockDim.x) out[i] = __bfloat162float(row[i]) * scale;  // (exact at 1)
}

__global__ void gather_kernel(const bf16* src, int64_t E, const int32_t* rows, bf16* dst) {
  const bf16* in = src + (int64_t)rows[blockIdx.x] * E;
  bf16* out = dst + (int64_t)blockIdx.x * E;
  for (int64_t i = threadIdx.x; i < E; i += blockDim.x) out[i] = in[i];
}

template <Glu kAct>
__global__ void glu_kernel(const float* gu, int64_t n, int F, bf16* out) {
  const int64_t count = n * F;
  for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < count; idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t t = idx / F, i = idx % F;
    const float g = gu[t * 2 * F + i], u = gu[t * 2 * F + F + i];
    out[idx] = glu_bf16<kAct>(g, u);
  }
}

// cap * tanh(x / cap), as the CPU forward computes it (a division, not a multiply by 1 / cap).
__global__ void softcap_kernel(float* x, int64_t count, float cap) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += (int64_t)gridDim.x * blockDim.x)
    x[i] = cap * tanhf(x[i] / cap);
}

template <class T>
__global__ void fill_kernel(T* dst, int64_t count, uint64_t seed, float center, float scale) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += (int64_t)gridDim.x * blockDim.x) {
    // Separate rounding of the product and the sum (no FMA contraction): the host computes the
    // same expression and the tests compare the values exactly.
    const float v = __fadd_rn(center, __fmul_rn(scale, hash_uniform(seed, (uint64_t)i)));
    if constexpr (sizeof(T) == 2)
      dst[i] = __float2bfloat16(v);
    else
      dst[i] = v;
  }
}

}  // namespace
}  // namespace detail

void embed_tokens(const bf16* table, const int32_t* tokens, int n, int E, float* x, cudaStream_t stream,
                  float scale) {
  if (n <= 0) return;
  detail::embed_kernel<<<n, 256, 0, stream>>>(table, tokens, E, x, scale);
  DUO_CUDA_TRY(cudaGetLastError());
}

void gather_rows(const bf16* src, int64_t E, const int32_t* rows, int n, bf16* dst, cudaStream_t stream) {
  if (n <= 0) return;
  detail::gather_kernel<<<n, 256, 0, stream>>>(src, E, rows, dst);
  DUO_CUDA_TRY(cudaGetLastError());
}

void swiglu(const float* gu, int64_t n, int F, bf16* out, cudaStream_t stream, Glu act) {
  if (n <= 0) return;
  const unsigned grid = detail::grid_for(n * F, 256);
  if (act == Glu::GeluTanh)
    detail::glu_kernel<Glu::GeluTanh><<<grid, 256, 0, stream>>>(gu, n, F, out);
  else
    detail::glu_kernel<Glu::Silu><<<grid, 256, 0, stream>>>(gu, n, F, out);
  DUO_CUDA_TRY(cudaGetLastError());
}

void softcap_logits(float* logits, int64_t count, float cap, cudaStream_t stream) {
  if (count <= 0) return;
  if (!(cap > 0.0f)) fail_arg("softcap_logits: the cap must be positive");
  detail::softcap_kernel<<<detail::grid_for(count, 256), 256, 0, stream>>>(logits, count, cap);
  DUO_CUDA_TRY(cudaGetLastError());
}

void fill_uniform(bf16* dst, int64_t count, uint64_t seed, float center, float scale, cudaStream_t stream) {
  if (count <= 0) return;
  detail::fill_kernel<bf16><<<detail::grid_for(count, 256), 256, 0, stream>>>(dst, count, seed, center, scale);
  DUO_CUDA_TRY(cudaGetLastError());
}

void fill_uniform(float* dst, int64_t count, uint64_t seed, float center, float scale, cudaStream_t stream) {
  if (count <= 0) return;
  detail::fill_kernel<float><<<detail::grid_for(count, 256), 256, 0, stream>>>(dst, count, seed, center, scale);
  DUO_CUDA_TRY(cudaGetLastError());
}

}  // namespace duo::cuda
