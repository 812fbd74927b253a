// The gated activation of one element, shared by the GLU kernel (elementwise.cu) and the fused
// gate/up GEMVs (gemv_rows.cuh) so that all of them round identically: bf16(act(g) * u) with
//  - Glu::Silu (SwiGLU, llama / qwen): silu(g) = g / (1 + e^-g);
//  - Glu::GeluTanh (GeGLU, gemma3): gelu's tanh approximation 0.5 g (1 + tanh(k (g + 0.044715 g^3))),
//    k = sqrt(2 / pi), as the CPU's geglu() (backend/cpu/ops.cpp).
#pragma once
#include <cuda_bf16.h>

#include "backend/cuda/kernels.h"

namespace duo::cuda::detail {

template <Glu kAct>
__device__ __forceinline__ __nv_bfloat16 glu_bf16(float g, float u) {
  if constexpr (kAct == Glu::GeluTanh) {
    const float k = 0.7978845608028654f;  // sqrt(2 / pi)
    return __float2bfloat16(0.5f * g * (1.0f + tanhf(k * (g + 0.044715f * g * g * g))) * u);
  } else {
    return __float2bfloat16(g / (1.0f + expf(-g)) * u);
  }
}

}  // namespace duo::cuda::detail
