// RMSNorm (optionally fused with the residual add before it, and with gemma3's sandwich norm of
// the added block output) and the plain residual add.
// One CTA a row; fp32 math, bf16 output for the GEMM that follows. Rows of up to 8192 floats
// (E % 4 == 0, aligned) stay in registers between the sums of squares and the scaling.
#include <algorithm>
#include <cstdint>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels.h"
#include "backend/cuda/reduce.cuh"

namespace duo::cuda {
namespace detail {
namespace {

constexpr int kNormThreads = 512;

// What is added to x before its norm: nothing, d, or rmsnorm(d) * dw (sandwich norms).
enum class AddMode : int { None, Add, NormedAdd };

// 1 / rms of row d (of E floats): the scale of its sandwich norm.
__device__ __forceinline__ float row_inv_rms(const float* d, int E, float eps) {
  float ss = 0.0f;
  for (int i = threadIdx.x; i < E; i += kNormThreads) ss += d[i] * d[i];
  ss = block_sum(ss);
  return 1.0f / sqrtf(ss / (float)E + eps);
}

template <AddMode kAdd>
__global__ void __launch_bounds__(kNormThreads) rmsnorm_kernel(float* x, const float* d, const float* dw,
                                                               const float* w, bf16* y, int E, float eps) {
  const int64_t row = (int64_t)blockIdx.x * E;
  float* xr = x + row;
  float dscale = 1.0f;
  if constexpr (kAdd == AddMode::NormedAdd) dscale = row_inv_rms(d + row, E, eps);
  float ss = 0.0f;
  for (int i = threadIdx.x; i < E; i += kNormThreads) {
    float v = xr[i];
    if constexpr (kAdd == AddMode::Add) v += d[row + i];
    if constexpr (kAdd == AddMode::NormedAdd) v += d[row + i] * dscale * dw[i];  // as cpu rmsnorm(), then the add
    if constexpr (kAdd != AddMode::None) xr[i] = v;  // read back below by this same thread only
    ss += v * v;
  }
  ss = block_sum(ss);
  const float scale = 1.0f / sqrtf(ss / (float)E + eps);
  for (int i = threadIdx.x; i < E; i += kNormThreads) y[row + i] = __float2bfloat16(xr[i] * scale * w[i]);
}

// The same with rows of float4 held in registers between the two passes (kVec float4 a
// thread): one round of loads (x, d and w issued together), one block reduction (two with the
// sandwich norm: d's, then x's), one round of stores. At one token a row (decode) the norm is a
// latency-bound single CTA, twice a layer.
template <AddMode kAdd, int kVec>
__global__ void __launch_bounds__(kNormThreads) rmsnorm_vec_kernel(float* x, const float* d, const float* dw,
                                                                   const float* w, bf16* y, int E, float eps) {
  const int64_t row = (int64_t)blockIdx.x * E;
  float4* xr = reinterpret_cast<float4*>(x + row);
  const float4* dr = reinterpret_cast<const float4*>(d + row);
  const float4* w4 = reinterpret_cast<const float4*>(w);
  const float4* dw4 = reinterpret_cast<const float4*>(dw);
  const int n4 = E / 4;
  float4 v[kVec], wv[kVec], e[kVec];
  float ss = 0.0f, dss = 0.0f;
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    const int i = k * kNormThreads + threadIdx.x;
    if (i < n4) {
      v[k] = xr[i];
      wv[k] = w4[i];
      if constexpr (kAdd != AddMode::None) e[k] = dr[i];
      if constexpr (kAdd == AddMode::NormedAdd)
        dss += e[k].x * e[k].x + e[k].y * e[k].y + e[k].z * e[k].z + e[k].w * e[k].w;
    }
  }
  if constexpr (kAdd == AddMode::NormedAdd) {  // x += d * scale * dw, as cpu rmsnorm() then the add
    const float dscale = 1.0f / sqrtf(block_sum(dss) / (float)E + eps);
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const int i = k * kNormThreads + threadIdx.x;
      if (i < n4) {
        const float4 g = dw4[i];
        e[k].x = e[k].x * dscale * g.x, e[k].y = e[k].y * dscale * g.y;
        e[k].z = e[k].z * dscale * g.z, e[k].w = e[k].w * dscale * g.w;
      }
    }
  }
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    const int i = k * kNormThreads + threadIdx.x;
    if (i < n4) {
      if constexpr (kAdd != AddMode::None) v[k].x += e[k].x, v[k].y += e[k].y, v[k].z += e[k].z, v[k].w += e[k].w;
      ss += v[k].x * v[k].x + v[k].y * v[k].y + v[k].z * v[k].z + v[k].w * v[k].w;
    }
  }
  ss = block_sum(ss);
  const float scale = 1.0f / sqrtf(ss / (float)E + eps);
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    const int i = k * kNormThreads + threadIdx.x;
    if (i < n4) {
      if constexpr (kAdd != AddMode::None) xr[i] = v[k];
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
template <AddMode kAdd>
bool launch_vec(float* x, const float* d, const float* dw, const float* w, bf16* y, int64_t n, int E, float eps,
                cudaStream_t stream) {
  auto aligned = [](const void* p, uintptr_t a) { return (reinterpret_cast<uintptr_t>(p) & (a - 1)) == 0; };
  const int vec = (E / 4 + kNormThreads - 1) / kNormThreads;
  if (E % 4 != 0 || vec > 4 || !aligned(x, 16) || !aligned(w, 16) || !aligned(y, 8) ||
      (kAdd != AddMode::None && !aligned(d, 16)) || (kAdd == AddMode::NormedAdd && !aligned(dw, 16)))
    return false;
  switch (vec) {
    case 1: rmsnorm_vec_kernel<kAdd, 1><<<(unsigned)n, kNormThreads, 0, stream>>>(x, d, dw, w, y, E, eps); break;
    case 2: rmsnorm_vec_kernel<kAdd, 2><<<(unsigned)n, kNormThreads, 0, stream>>>(x, d, dw, w, y, E, eps); break;
    case 3: rmsnorm_vec_kernel<kAdd, 3><<<(unsigned)n, kNormThreads, 0, stream>>>(x, d, dw, w, y, E, eps); break;
    default: rmsnorm_vec_kernel<kAdd, 4><<<(unsigned)n, kNormThreads, 0, stream>>>(x, d, dw, w, y, E, eps); break;
  }
  return true;
}

// The one launcher of every norm: the register-held kernel where the row fits, else the plain one.
template <AddMode kAdd>
void launch_norm(float* x, const float* d, const float* dw, const float* w, bf16* y, int64_t n, int E, float eps,
                 cudaStream_t stream) {
  if (n <= 0) return;
  if (!launch_vec<kAdd>(x, d, dw, w, y, n, E, eps, stream))
    rmsnorm_kernel<kAdd><<<(unsigned)n, kNormThreads, 0, stream>>>(x, d, dw, w, y, E, eps);
  DUO_CUDA_TRY(cudaGetLastError());
}

__global__ void add_kernel(float* x, const float* d, int64_t count) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += (int64_t)gridDim.x * blockDim.x)
    x[i] += d[i];
}

}  // namespace
}  // namespace detail

void rmsnorm(const float* x, const float* w, bf16* y, int64_t n, int E, float eps, cudaStream_t stream) {
  detail::launch_norm<detail::AddMode::None>(const_cast<float*>(x), nullptr, nullptr, w, y, n, E, eps, stream);
}

void add_rmsnorm(float* x, const float* d, const float* w, bf16* y, int64_t n, int E, float eps,
                 cudaStream_t stream) {
  detail::launch_norm<detail::AddMode::Add>(x, d, nullptr, w, y, n, E, eps, stream);
}

void add_normed_rmsnorm(float* x, const float* d, const float* dw, const float* w, bf16* y, int64_t n, int E,
                        float eps, cudaStream_t stream) {
  detail::launch_norm<detail::AddMode::NormedAdd>(x, d, dw, w, y, n, E, eps, stream);
}

void add_inplace(float* x, const float* d, int64_t count, cudaStream_t stream) {
  if (count <= 0) return;
  const int64_t blocks = std::min<int64_t>((count + 255) / 256, 65536);
  detail::add_kernel<<<(unsigned)blocks, 256, 0, stream>>>(x, d, count);
  DUO_CUDA_TRY(cudaGetLastError());
}

}  // namespace duo::cuda
