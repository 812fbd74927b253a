// The skeleton of the one-token linear layers (decode), y = W x with x bf16 and y fp32, shared
// by the weight formats: gemv.cu (bf16 W) and gemv_int8.cu (int8 W with an fp32 scale a row).
// At M = 1 a linear layer is a pass over its weights, so the kernel streams W at the device's
// read bandwidth: every warp owns whole rows (grid-stride over rows), each lane reads 16-byte
// pieces of a row with kGemvUnroll loads in flight before any use, x sits in shared memory (read
// once a CTA), and a row's partial dot products are summed by a warp shuffle. The gated variant
// (kSwiGLU) computes a gate row and its up row: h[r] = glu_bf16<kAct>(gate . x, up . x), kAct
// SwiGLU's silu or GeGLU's gelu (swiglu.cuh).
//
// The weight format is a policy Fmt:
//   Fmt::Elem        the weight element type;
//   Fmt::kPerLoad    weights a 16-byte load;
//   Fmt::kScaled     whether a row's dot product is multiplied by scale[row];
//   Fmt::dot(w, sx, c)  the dot product of load c of a row (w) with the matching bf16 of x
//                       (sx: x as 16-byte pieces of 8 bf16 in shared memory).
#pragma once
#include <algorithm>
#include <cstdint>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels.h"
#include "backend/cuda/reduce.cuh"
#include "backend/cuda/swiglu.cuh"

namespace duo::cuda::detail {
namespace {

constexpr int kGemvThreads = 256, kGemvWarps = kGemvThreads / 32;
// CTAs an SM: 4 x 256 threads x <= 64 registers and 4 x <= 48 KB of x always fit, so the grid
// below is resident at once without asking the occupancy API (the first call may be inside a
// CUDA graph capture). 32 warps an SM with 8 x 512-byte loads each in flight is ample.
constexpr int kGemvCtasPerSm = 4;
constexpr int kGemvUnroll = 8;               // 16-byte loads of W in flight a lane
constexpr int kGemvMaxCols = 48 * 1024 / 2;  // x must fit the default 48 KB of dynamic shared memory

// One row's dot product with x (in shared memory), summed over the warp (every lane gets it).
template <class Fmt>
__device__ __forceinline__ float row_dot(const typename Fmt::Elem* __restrict__ row, const uint4* sx, int pieces,
                                         int lane) {
  const uint4* wr = reinterpret_cast<const uint4*>(row);
  float acc = 0.0f;
  int c = lane;
  for (; c + 32 * (kGemvUnroll - 1) < pieces; c += 32 * kGemvUnroll) {
    uint4 wv[kGemvUnroll];
#pragma unroll
    for (int u = 0; u < kGemvUnroll; ++u) wv[u] = __ldcs(wr + c + 32 * u);  // streamed once: evict first
#pragma unroll
    for (int u = 0; u < kGemvUnroll; ++u) acc += Fmt::dot(wv[u], sx, c + 32 * u);
  }
  for (; c < pieces; c += 32) acc += Fmt::dot(__ldcs(wr + c), sx, c);
  return warp_sum(acc);
}

// kSwiGLU: W holds 2 * rows rows (gate rows, then up rows) and the output is h, else y
// (accumulate: y += W x). kAct: the gated activation (kSwiGLU only).
template <class Fmt, bool kSwiGLU, Glu kAct>
__global__ void __launch_bounds__(kGemvThreads, kGemvCtasPerSm)
    gemv_rows_kernel(const typename Fmt::Elem* __restrict__ W, const float* __restrict__ scale, int64_t rows,
                     int cols, const bf16* __restrict__ x, float* __restrict__ y, bf16* __restrict__ h,
                     bool accumulate) {
  extern __shared__ uint4 sx[];  // x as 16-byte pieces of 8 bf16
  for (int i = threadIdx.x; i < cols / 8; i += kGemvThreads) sx[i] = reinterpret_cast<const uint4*>(x)[i];
  __syncthreads();
  const int pieces = cols / Fmt::kPerLoad;  // 16-byte loads a weight row
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t step = (int64_t)gridDim.x * kGemvWarps;
  for (int64_t r = (int64_t)blockIdx.x * kGemvWarps + warp; r < rows; r += step) {
    float acc = row_dot<Fmt>(W + r * cols, sx, pieces, lane);
    if constexpr (Fmt::kScaled) acc *= scale[r];
    if constexpr (kSwiGLU) {
      float up = row_dot<Fmt>(W + (r + rows) * cols, sx, pieces, lane);
      if constexpr (Fmt::kScaled) up *= scale[r + rows];
      if (lane == 0) h[r] = glu_bf16<kAct>(acc, up);
    } else {
      if (lane == 0) y[r] = accumulate ? y[r] + acc : acc;
    }
  }
}

int gemv_sm_count() {
  static const int n = [] {
    int dev = 0, v = 0;
    DUO_CUDA_TRY(cudaGetDevice(&dev));
    DUO_CUDA_TRY(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev));
    return v;
  }();
  return n;
}

template <class Fmt, bool kSwiGLU>
void launch_gemv_rows(const typename Fmt::Elem* W, const float* scale, int64_t rows, int64_t cols, const bf16* x,
                      float* y, bf16* h, bool accumulate, cudaStream_t stream, Glu act = Glu::Silu) {
  const int smem = (int)(cols * sizeof(bf16));
  // One wave of resident CTAs walks all rows (a second, partial wave would idle most SMs).
  const int64_t blocks =
      std::min<int64_t>((rows + kGemvWarps - 1) / kGemvWarps, (int64_t)kGemvCtasPerSm * gemv_sm_count());
  // (The plain layer has no activation: only its Silu instantiation exists.)
  if constexpr (kSwiGLU) {
    if (act == Glu::GeluTanh) {
      gemv_rows_kernel<Fmt, true, Glu::GeluTanh>
          <<<(unsigned)blocks, kGemvThreads, smem, stream>>>(W, scale, rows, (int)cols, x, y, h, accumulate);
      DUO_CUDA_TRY(cudaGetLastError());
      return;
    }
  }
  gemv_rows_kernel<Fmt, kSwiGLU, Glu::Silu>
      <<<(unsigned)blocks, kGemvThreads, smem, stream>>>(W, scale, rows, (int)cols, x, y, h, accumulate);
  DUO_CUDA_TRY(cudaGetLastError());
}

}  // namespace
}  // namespace duo::cuda::detail
