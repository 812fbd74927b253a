// Warp and block reductions / scans used by the norm and sampling kernels. Block helpers
// assume blockDim.x is a multiple of 32 (<= 1024), are called by every thread of the block,
// and return the result to every thread.
#pragma once
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

namespace duo::cuda::detail {

template <class T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

__device__ __forceinline__ int warp_max(int v) {
#pragma unroll
  for (int o = 16; o > 0; o /= 2) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Combines one value per thread with `op` (warp_sum / warp_max flavour) across the block.
template <class T, class WarpOp>
__device__ __forceinline__ T block_reduce(T v, WarpOp op, T identity) {
  __shared__ T partial[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  v = op(v);
  __syncthreads();  // partial[] may still be read by a previous call
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  v = lane < warps ? partial[lane] : identity;
  return op(v);  // every warp reduces the partials itself: no second broadcast needed
}

__device__ __forceinline__ float block_sum(float v) {
  return block_reduce<float>(v, [](float x) { return warp_sum(x); }, 0.0f);
}
__device__ __forceinline__ int block_sum(int v) {
  return block_reduce<int>(v, [](int x) { return warp_sum(x); }, 0);
}
__device__ __forceinline__ float block_max(float v) {
  return block_reduce<float>(v, [](float x) { return warp_max(x); }, -INFINITY);
}
__device__ __forceinline__ int block_max(int v) {
  return block_reduce<int>(v, [](int x) { return warp_max(x); }, INT32_MIN);
}

// Exclusive prefix sum of one float per thread, in thread order; `total` gets the block sum.
__device__ __forceinline__ float block_exclusive_scan(float v, float& total) {
  __shared__ float warp_tot[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  float incl = v;
#pragma unroll
  for (int o = 1; o < 32; o *= 2) {
    const float y = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += y;
  }
  __syncthreads();
  if (lane == 31) warp_tot[warp] = incl;
  __syncthreads();
  float before = 0.0f, all = 0.0f;
  for (int w = 0; w < warps; ++w) {  // <= 32 shared reads, identical order in every thread
    if (w < warp) before += warp_tot[w];
    all += warp_tot[w];
  }
  total = all;
  float excl = __shfl_up_sync(0xffffffffu, incl, 1);
  if (lane == 0) excl = 0.0f;
  return before + excl;
}

}  // namespace duo::cuda::detail
