// Device code of norm_grad.cu (RMSNorm backward, the final norm at the loss rows), built for the
// GPU and for the CPU emulation test (device_env.cuh). One CTA a row, fp32 throughout.
#pragma once
#include <cstdint>

#include "calibrate/cuda/device_env.cuh"

namespace duo::cuda::calib::DUO_CALIB_KERNELS {

namespace norm {
constexpr int kThreads = 256;
}  // namespace norm

__global__ void __launch_bounds__(norm::kThreads)
    rmsnorm_backward_kernel(const float* x, const float* w, const float* dy, float* dx, int dim, float eps,
                            bool accumulate, const int32_t* rows) {
  const int64_t r = blockIdx.x;
  const int64_t row = (rows ? (int64_t)rows[r] : r) * dim;
  const float* xr = x + row;
  const float* gr = dy + r * dim;
  float* dr = dx + row;
  float ss = 0.0f, gx = 0.0f;
  for (int i = threadIdx.x; i < dim; i += norm::kThreads) {
    const float v = xr[i];
    ss += v * v;
    gx += gr[i] * w[i] * v;
  }
  ss = dt::block_sum(ss);
  gx = dt::block_sum(gx);
  const float rr = 1.0f / sqrtf(ss / (float)dim + eps);
  const float c = rr * rr * rr * gx / (float)dim;
  for (int i = threadIdx.x; i < dim; i += norm::kThreads) {
    const float v = rr * gr[i] * w[i] - c * xr[i];
    dr[i] = accumulate ? dr[i] + v : v;
  }
}

__global__ void __launch_bounds__(norm::kThreads)
    rmsnorm_rows_kernel(const float* x, const int32_t* rows, const float* w, float* out, int dim, float eps) {
  const int64_t r = blockIdx.x;
  const float* xr = x + (int64_t)rows[r] * dim;
  float ss = 0.0f;
  for (int i = threadIdx.x; i < dim; i += norm::kThreads) ss += xr[i] * xr[i];
  ss = dt::block_sum(ss);
  const float rr = 1.0f / sqrtf(ss / (float)dim + eps);
  for (int i = threadIdx.x; i < dim; i += norm::kThreads) out[r * dim + i] = xr[i] * rr * w[i];
}

}  // namespace duo::cuda::calib::DUO_CALIB_KERNELS
