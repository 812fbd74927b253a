// RMSNorm (optionally fused with the residual add before it) and the plain residual add.
// One CTA a row; fp32 math, bf16 output for the GEMM that follows.
#include <algorithm>

#include "backend/cuda/kernels.h"
#include "backend/cuda/reduce.cuh"

namespace duo::cuda {
namespace detail {
namespace {

constexpr int kNormThreads = 512;

template <bool kAdd>
__global__ void __launch_bounds__(kNormThreads) rmsnorm_kernel(float* x, const float* d, const float* w, bf16* y,
                                                               int E, float eps) {
  const int64_t row = (int64_t)blockIdx.x * E;
  float* xr = x + row;
  float ss = 0.0f;
  for (int i = threadIdx.x; i < E; i += kNormThreads) {
    float v = xr[i];
    if constexpr (kAdd) {
      v += d[row + i];
      xr[i] = v;  // read back below by this same thread only
    }
    ss += v * v;
  }
  ss = block_sum(ss);
  const float scale = 1.0f / sqrtf(ss / (float)E + eps);
  for (int i = threadIdx.x; i < E; i += kNormThreads) y[row + i] = __float2bfloat16(xr[i] * scale * w[i]);
}

__global__ void add_kernel(float* x, const float* d, int64_t count) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += (int64_t)gridDim.x * blockDim.x)
    x[i] += d[i];
}

}  // namespace
}  // namespace detail

void rmsnorm(const float* x, const float* w, bf16* y, int64_t n, int E, float eps, cudaStream_t stream) {
  if (n <= 0) return;
  detail::rmsnorm_kernel<false><<<(unsigned)n, detail::kNormThreads, 0, stream>>>(const_cast<float*>(x), nullptr, w,
                                                                                   y, E, eps);
  check_cuda(cudaGetLastError(), "rmsnorm launch");
}

void add_rmsnorm(float* x, const float* d, const float* w, bf16* y, int64_t n, int E, float eps,
                 cudaStream_t stream) {
  if (n <= 0) return;
  detail::rmsnorm_kernel<true><<<(unsigned)n, detail::kNormThreads, 0, stream>>>(x, d, w, y, E, eps);
  check_cuda(cudaGetLastError(), "add_rmsnorm launch");
}

void add_inplace(float* x, const float* d, int64_t count, cudaStream_t stream) {
  if (count <= 0) return;
  const int64_t blocks = std::min<int64_t>((count + 255) / 256, 65536);
  detail::add_kernel<<<(unsigned)blocks, 256, 0, stream>>>(x, d, count);
  check_cuda(cudaGetLastError(), "add_inplace launch");
}

}  // namespace duo::cuda
