// Device code of elementwise_grad.cu (SwiGLU backward, fp32 -> bf16), built for the GPU and for
// the CPU emulation test (device_env.cuh). Grid-stride loops over int64 counts.
#pragma once
#include <cmath>
#include <cstdint>

#include "calibrate/cuda/device_env.cuh"

namespace duo::cuda::calib::DUO_CALIB_KERNELS {

__global__ void swiglu_backward_kernel(const float* gu, const float* dh, bf16* dgu, int64_t n, int F) {
  const int64_t count = n * F;
  for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < count;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t t = idx / F, i = idx % F;
    const int64_t gi = t * 2 * F + i, ui = gi + F;
    const float g = gu[gi], u = gu[ui], d = dh[idx];
    const float s = 1.0f / (1.0f + expf(-g));  // expf(-g) = inf for very negative g: s = 0, no NaN
    dgu[gi] = __float2bfloat16(d * u * s * (1.0f + g * (1.0f - s)));
    dgu[ui] = __float2bfloat16(d * (g * s));
  }
}

__global__ void to_bf16_kernel(const float* x, bf16* y, int64_t count) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += (int64_t)gridDim.x * blockDim.x)
    y[i] = __float2bfloat16(x[i]);
}

}  // namespace duo::cuda::calib::DUO_CALIB_KERNELS
