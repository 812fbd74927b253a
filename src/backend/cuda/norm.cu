// RMSNorm (optionally fused with the residual add before it) and the plain residual add.
// One CTA a row; fp32 math, bf16 output for the GEMM that follows. Rows of up to 8192 floats
// (E % 4 == 0, aligned) stay in registers between the sum of squares and the scaling.
#include <algorithm>
#include <cstdint>

#include "backend/cuda/cuda_check.h"
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

// The same with rows of float4 held in registers between the two passes (kVec float4 a
// thread): one round of loads (x, d and w issued together), one block reduction, one round of
// stores. At one token a row (decode) the norm is a latency-bound single CTA, twice a layer.
template <bool kAdd, int kVec>
__global__ void __launch_bounds__(kNormThreads) rmsnorm_vec_kernel(float* x, const float* d, const float* w, bf16* y,
                                                                   int E, float eps) {
  const int64_t row = (int64_t)blockIdx.x * E;
  float4* xr = reinterpret_cast<float4*>(x + row);
  const float4* dr = reinterpret_cast<const float4*>(d + row);
  const float4* w4 = reinterpret_cast<const float4*>(w);
  const int n4 = E / 4;
  float4 v[kVec], wv[kVec];
  float ss = 0.0f;
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    const int i = k * kNormThreads + threadIdx.x;
    if (i < n4) {
      v[k] = xr[i];
      wv[k] = w4[i];
      if constexpr (kAdd) {
        const float4 e = dr[i];
        v[k].x += e.x, v[k].y += e.y, v[k].z += e.z, v[k].w += e.w;
      }
      ss += v[k].x * v[k].x + v[k].y * v[k].y + v[k].z * v[k].z + v[k].w * v[k].w;
    }
  }
  ss = block_sum(ss);
  const float scale = 1.0f / sqrtf(ss / (float)E + eps);
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    const int i = k * kNormThreads + threadIdx.x;
    if (i < n4) {
      if constexpr (kAdd) xr[i] = v[k];
      const __nv_bfloat162 lo = __floats2bfloat162_rn(v[k].x * scale * wv[k].x, v[k].y * scale * wv[k].y);
      const __nv_bfloat162 hi = __floats2bfloat162_rn(v[k].z * scale * wv[k].z, v[k].w * scale * wv[k].w);
      uint2 packed;
      packed.x = *reinterpret_cast<const uint32_t*>(&lo);
      packed.y = *reinterpret_cast<const uint32_t*>(&hi);
      reinterpret_cast<uint2*>(y + row)[i] = packed;
    }
  }
}

// Launches the register-held variant when the row fits (E % 4 == 0, at most 4 float4 a thread,
// aligned rows); returns false to fall back to the plain kernel.
template <bool kAdd>
bool launch_vec(float* x, const float* d, const float* w, bf16* y, int64_t n, int E, float eps, cudaStream_t stream) {
  auto aligned = [](const void* p, uintptr_t a) { return (reinterpret_cast<uintptr_t>(p) & (a - 1)) == 0; };
  const int vec = (E / 4 + kNormThreads - 1) / kNormThreads;
  if (E % 4 != 0 || vec > 4 || !aligned(x, 16) || !aligned(w, 16) || !aligned(y, 8) || (kAdd && !aligned(d, 16)))
    return false;
  switch (vec) {
    case 1: rmsnorm_vec_kernel<kAdd, 1><<<(unsigned)n, kNormThreads, 0, stream>>>(x, d, w, y, E, eps); break;
    case 2: rmsnorm_vec_kernel<kAdd, 2><<<(unsigned)n, kNormThreads, 0, stream>>>(x, d, w, y, E, eps); break;
    case 3: rmsnorm_vec_kernel<kAdd, 3><<<(unsigned)n, kNormThreads, 0, stream>>>(x, d, w, y, E, eps); break;
    default: rmsnorm_vec_kernel<kAdd, 4><<<(unsigned)n, kNormThreads, 0, stream>>>(x, d, w, y, E, eps); break;
  }
  return true;
}

__global__ void add_kernel(float* x, const float* d, int64_t count) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += (int64_t)gridDim.x * blockDim.x)
    x[i] += d[i];
}

}  // namespace
}  // namespace detail

void rmsnorm(const float* x, const float* w, bf16* y, int64_t n, int E, float eps, cudaStream_t stream) {
  if (n <= 0) return;
  if (!detail::launch_vec<false>(const_cast<float*>(x), nullptr, w, y, n, E, eps, stream))
    detail::rmsnorm_kernel<false><<<(unsigned)n, detail::kNormThreads, 0, stream>>>(const_cast<float*>(x), nullptr, w,
                                                                                     y, E, eps);
  DUO_CUDA_TRY(cudaGetLastError());
}

void add_rmsnorm(float* x, const float* d, const float* w, bf16* y, int64_t n, int E, float eps,
                 cudaStream_t stream) {
  if (n <= 0) return;
  if (!detail::launch_vec<true>(x, d, w, y, n, E, eps, stream))
    detail::rmsnorm_kernel<true><<<(unsigned)n, detail::kNormThreads, 0, stream>>>(x, d, w, y, E, eps);
  DUO_CUDA_TRY(cudaGetLastError());
}

void add_inplace(float* x, const float* d, int64_t count, cudaStream_t stream) {
  if (count <= 0) return;
  const int64_t blocks = std::min<int64_t>((count + 255) / 256, 65536);
  detail::add_kernel<<<(unsigned)blocks, 256, 0, stream>>>(x, d, count);
  DUO_CUDA_TRY(cudaGetLastError());
}

}  // namespace duo::cuda
