// RMSNorm backward (with the residual's accumulate) and the final norm at the loss rows in fp32.
// One CTA a row, fp32 throughout; the two row sums of the backward are block reductions
// (backend/cuda/reduce.cuh).
#include <stdexcept>
#include <string>

#include "backend/cuda/reduce.cuh"
#include "calibrate/cuda/grad_kernels.h"

namespace duo::cuda::calib {

void check_launch(const char* op) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess)
    throw std::runtime_error(std::string("CUDA calibration kernel ") + op + " failed: " + cudaGetErrorString(e) +
                             " (an asynchronous error of an earlier kernel shows here too: rerun with "
                             "DUO_CALIB_SYNC=1 to check after every op)");
}

namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads) rmsnorm_backward_kernel(const float* x, const float* w, const float* dy,
                                                                    float* dx, int dim, float eps, bool accumulate,
                                                                    const int32_t* rows) {
  const int64_t r = blockIdx.x;
  const int64_t row = (rows ? (int64_t)rows[r] : r) * dim;
  const float* xr = x + row;
  const float* gr = dy + r * dim;
  float* dr = dx + row;
  float ss = 0.0f, gx = 0.0f;
  for (int i = threadIdx.x; i < dim; i += kThreads) {
    const float v = xr[i];
    ss += v * v;
    gx += gr[i] * w[i] * v;
  }
  ss = detail::block_sum(ss);
  gx = detail::block_sum(gx);
  const float rr = 1.0f / sqrtf(ss / (float)dim + eps);
  const float c = rr * rr * rr * gx / (float)dim;
  for (int i = threadIdx.x; i < dim; i += kThreads) {
    const float v = rr * gr[i] * w[i] - c * xr[i];
    dr[i] = accumulate ? dr[i] + v : v;
  }
}

__global__ void __launch_bounds__(kThreads) rmsnorm_rows_kernel(const float* x, const int32_t* rows, const float* w,
                                                                float* out, int dim, float eps) {
  const int64_t r = blockIdx.x;
  const float* xr = x + (int64_t)rows[r] * dim;
  float ss = 0.0f;
  for (int i = threadIdx.x; i < dim; i += kThreads) ss += xr[i] * xr[i];
  ss = detail::block_sum(ss);
  const float rr = 1.0f / sqrtf(ss / (float)dim + eps);
  for (int i = threadIdx.x; i < dim; i += kThreads) out[r * dim + i] = xr[i] * rr * w[i];
}

}  // namespace

void rmsnorm_backward(const float* x, const float* w, const float* dy, float* dx, int64_t n, int dim, float eps,
                      bool accumulate, const int32_t* rows, cudaStream_t stream) {
  if (n <= 0) return;
  if (dim <= 0 || n > 0x7fffffff) throw std::invalid_argument("rmsnorm_backward: bad shape");
  rmsnorm_backward_kernel<<<(unsigned)n, kThreads, 0, stream>>>(x, w, dy, dx, dim, eps, accumulate, rows);
  check_launch("rmsnorm_backward");
}

void rmsnorm_rows_f32(const float* x, const int32_t* rows, const float* w, float* out, int64_t n, int dim, float eps,
                      cudaStream_t stream) {
  if (n <= 0) return;
  if (dim <= 0 || n > 0x7fffffff) throw std::invalid_argument("rmsnorm_rows_f32: bad shape");
  rmsnorm_rows_kernel<<<(unsigned)n, kThreads, 0, stream>>>(x, rows, w, out, dim, eps);
  check_launch("rmsnorm_rows_f32");
}

}  // namespace duo::cuda::calib
