// The linear layer of one token (decode): y = W x with W bf16 [rows][cols] row-major, x bf16,
// y fp32: the skeleton of gemv_rows.cuh (whole rows a warp, W streamed at the device's read
// bandwidth) with bf16 weights.
// cuBLAS picks a general GEMM tiling for n = 1 that left ~25% of the bandwidth unused in the
// Llama-3-8B decode step (docs/cuda-backend.md); this is its one-token replacement. The FFN's
// gate/up projection has a variant that also applies SwiGLU or GeGLU (a warp computes a gate row
// and its up row), so the decode step needs no separate activation kernel.
#include <cstdint>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/gemv_rows.cuh"
#include "backend/cuda/kernels.h"

namespace duo::cuda {
namespace detail {
namespace {

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

// bf16 weights for gemv_rows.cuh: 8 a load, against one 16-byte piece of x.
struct Bf16Rows {
  using Elem = bf16;
  static constexpr int kPerLoad = 8;
  static constexpr bool kScaled = false;
  __device__ static __forceinline__ float dot(const uint4& w, const uint4* sx, int c) { return dot8(w, sx[c]); }
};

}  // namespace
}  // namespace detail

bool gemv_bf16_supported(const bf16* W, int64_t cols, const bf16* x) {
  auto aligned = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; };
  return cols > 0 && cols % 8 == 0 && cols <= detail::kGemvMaxCols && aligned(W) && aligned(x);
}

void gemv_bf16(const bf16* W, int64_t rows, int64_t cols, const bf16* x, float* y, bool accumulate,
               cudaStream_t stream) {
  if (rows <= 0) return;
  if (!gemv_bf16_supported(W, cols, x))
    fail_arg("gemv_bf16: needs cols % 8 == 0, cols <= 24576 and 16-byte aligned W and x");
  detail::launch_gemv_rows<detail::Bf16Rows, false>(W, nullptr, rows, cols, x, y, nullptr, accumulate, stream);
}

void gemv_swiglu_bf16(const bf16* Wgu, int64_t F, int64_t cols, const bf16* x, bf16* h, cudaStream_t stream,
                      Glu act) {
  if (F <= 0) return;
  if (!gemv_bf16_supported(Wgu, cols, x))
    fail_arg("gemv_swiglu_bf16: needs cols % 8 == 0, cols <= 24576 and 16-byte aligned W and x");
  detail::launch_gemv_rows<detail::Bf16Rows, true>(Wgu, nullptr, F, cols, x, nullptr, h, false, stream, act);
}

}  // namespace duo::cuda
