// Element-wise kernels of the calibration backward: SwiGLU backward and the fp32 -> bf16 copy of a
// gradient that becomes a GEMM operand. Grid-stride loops over int64 counts.
#include <algorithm>

#include "calibrate/cuda/grad_kernels.h"

namespace duo::cuda::calib {
namespace {

constexpr int kThreads = 256;

unsigned grid_for(int64_t count) {
  return (unsigned)std::max<int64_t>(1, std::min<int64_t>((count + kThreads - 1) / kThreads, 1 << 16));
}

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

}  // namespace

void swiglu_backward(const float* gu, const float* dh, bf16* dgu, int64_t n, int F, cudaStream_t stream) {
  if (n <= 0 || F <= 0) return;
  swiglu_backward_kernel<<<grid_for(n * F), kThreads, 0, stream>>>(gu, dh, dgu, n, F);
  check_launch("swiglu_backward");
}

void to_bf16(const float* x, bf16* y, int64_t count, cudaStream_t stream) {
  if (count <= 0) return;
  to_bf16_kernel<<<grid_for(count), kThreads, 0, stream>>>(x, y, count);
  check_launch("to_bf16");
}

}  // namespace duo::cuda::calib
