// The linear layer of one token (decode): y = W x with W bf16 [rows][cols] row-major, x bf16,
// y fp32. At M = 1 a linear layer is a pass over its weights, so the kernel is built to stream
// W at the device's read bandwidth: every warp owns whole rows (grid-stride over rows), each lane
// reads 16-byte pieces of a row with kUnroll loads in flight before any use, x sits in shared
// memory (read once a CTA), and a row's partial dot products are summed by a warp shuffle.
// cuBLAS picks a general GEMM tiling for n = 1 that left ~25% of the bandwidth unused in the
// Llama-3-8B decode step (bench/cuda/NOTES.md); this is its one-token replacement. The FFN's
// gate/up projection has a variant that also applies SwiGLU (a warp computes a gate row and its
// up row), so the decode step needs no separate SwiGLU kernel.
#include <algorithm>
#include <cstdint>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels.h"
#include "backend/cuda/reduce.cuh"
#include "backend/cuda/swiglu.cuh"

namespace duo::cuda {
namespace detail {
namespace {

constexpr int kGemvThreads = 256, kGemvWarps = kGemvThreads / 32;
// CTAs an SM: 4 x 256 threads x <= 64 registers and 4 x <= 48 KB of x always fit, so the grid
// below is resident at once without asking the occupancy API (the first call may be inside a
// CUDA graph capture). 32 warps an SM with 8 x 512-byte loads each in flight is ample.
constexpr int kGemvCtasPerSm = 4;
constexpr int kUnroll = 8;                 // 16-byte loads of W in flight a lane
constexpr int kMaxCols = 48 * 1024 / 2;    // x must fit the default 48 KB of dynamic shared memory

__device__ __forceinline__ float dot8(const uint4& w, const uint4& x) {
  const __nv_bfloat162* a = reinterpret_cast<const __nv_bfloat162*>(&w);
  const __nv_bfloat162* b = reinterpret_cast<const __nv_bfloat162*>(&x);
  float s = 0.0f;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 fa = __bfloat1622float2(a[i]), fb = __bfloat1622float2(b[i]);
    s = fmaf(fa.x, fb.x, s);
    s = fmaf(fa.y, fb.y, s);
  }
  return s;
}

// One row's dot product with x (in shared memory), summed over the warp (every lane gets it).
__device__ __forceinline__ float row_dot(const bf16* __restrict__ row, const uint4* sx, int pieces, int lane) {
  const uint4* wr = reinterpret_cast<const uint4*>(row);
  float acc = 0.0f;
  int c = lane;
  for (; c + 32 * (kUnroll - 1) < pieces; c += 32 * kUnroll) {
    uint4 wv[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) wv[u] = __ldcs(wr + c + 32 * u);  // streamed once: evict first
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) acc += dot8(wv[u], sx[c + 32 * u]);
  }
  for (; c < pieces; c += 32) acc += dot8(__ldcs(wr + c), sx[c]);
  return warp_sum(acc);
}

// kSwiGLU: W holds 2 * rows rows (gate rows, then up rows) and the output is
// h[r] = swiglu_bf16(gate . x, up . x), the SwiGLU of the FFN fused into its input projection.
template <bool kSwiGLU>
__global__ void __launch_bounds__(kGemvThreads, kGemvCtasPerSm) gemv_kernel(const bf16* __restrict__ W, int64_t rows,
                                                                            int cols, const bf16* __restrict__ x,
                                                                            float* __restrict__ y, bf16* __restrict__ h,
                                                                            bool accumulate) {
  extern __shared__ uint4 sx[];  // x as 16-byte pieces
  const int pieces = cols / 8;
  for (int i = threadIdx.x; i < pieces; i += kGemvThreads) sx[i] = reinterpret_cast<const uint4*>(x)[i];
  __syncthreads();
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t step = (int64_t)gridDim.x * kGemvWarps;
  for (int64_t r = (int64_t)blockIdx.x * kGemvWarps + warp; r < rows; r += step) {
    const float acc = row_dot(W + r * cols, sx, pieces, lane);
    if constexpr (kSwiGLU) {
      const float up = row_dot(W + (r + rows) * cols, sx, pieces, lane);
      if (lane == 0) h[r] = swiglu_bf16(acc, up);
    } else {
      if (lane == 0) y[r] = accumulate ? y[r] + acc : acc;
    }
  }
}

int sm_count() {
  static const int n = [] {
    int dev = 0, v = 0;
    DUO_CUDA_TRY(cudaGetDevice(&dev));
    DUO_CUDA_TRY(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev));
    return v;
  }();
  return n;
}

}  // namespace
}  // namespace detail

bool gemv_bf16_supported(const bf16* W, int64_t cols, const bf16* x) {
  auto aligned = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; };
  return cols > 0 && cols % 8 == 0 && cols <= detail::kMaxCols && aligned(W) && aligned(x);
}

namespace {
template <bool kSwiGLU>
void launch_gemv(const bf16* W, int64_t rows, int64_t cols, const bf16* x, float* y, bf16* h, bool accumulate,
                 cudaStream_t stream) {
  const int smem = (int)(cols * sizeof(bf16));
  // One wave of resident CTAs walks all rows (a second, partial wave would idle most SMs).
  const int64_t blocks = std::min<int64_t>((rows + detail::kGemvWarps - 1) / detail::kGemvWarps,
                                           (int64_t)detail::kGemvCtasPerSm * detail::sm_count());
  detail::gemv_kernel<kSwiGLU><<<(unsigned)blocks, detail::kGemvThreads, smem, stream>>>(W, rows, (int)cols, x, y, h,
                                                                                        accumulate);
  DUO_CUDA_TRY(cudaGetLastError());
}
}  // namespace

void gemv_bf16(const bf16* W, int64_t rows, int64_t cols, const bf16* x, float* y, bool accumulate,
               cudaStream_t stream) {
  if (rows <= 0) return;
  if (!gemv_bf16_supported(W, cols, x))
    fail_arg("gemv_bf16: needs cols % 8 == 0, cols <= 24576 and 16-byte aligned W and x");
  launch_gemv<false>(W, rows, cols, x, y, nullptr, accumulate, stream);
}

void gemv_swiglu_bf16(const bf16* Wgu, int64_t F, int64_t cols, const bf16* x, bf16* h, cudaStream_t stream) {
  if (F <= 0) return;
  if (!gemv_bf16_supported(Wgu, cols, x))
    fail_arg("gemv_swiglu_bf16: needs cols % 8 == 0, cols <= 24576 and 16-byte aligned W and x");
  launch_gemv<true>(Wgu, F, cols, x, nullptr, h, false, stream);
}

}  // namespace duo::cuda
