// SwiGLU of one element, shared by the SwiGLU kernel (elementwise.cu) and the fused gate/up GEMV
// (gemv.cu) so both round identically: bf16(silu(g) * u), silu(g) = g / (1 + e^-g).
#pragma once
#include <cuda_bf16.h>

namespace duo::cuda::detail {

__device__ __forceinline__ __nv_bfloat16 swiglu_bf16(float g, float u) {
  return __float2bfloat16(g / (1.0f + expf(-g)) * u);
}

}  // namespace duo::cuda::detail
