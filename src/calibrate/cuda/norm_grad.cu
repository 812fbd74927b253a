// RMSNorm backward (with the residual's accumulate) and the final norm at the loss rows in fp32:
// the launchers of norm_grad_kernels.cuh (one CTA a row; block reductions for the row sums).
#include <string>

#include "backend/cuda/cuda_check.h"
#include "calibrate/cuda/grad_kernels.h"
#include "calibrate/cuda/norm_grad_kernels.cuh"

namespace duo::cuda::calib {

void check_launch(const char* op) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess)
    fail_call(op,
              (std::string(cudaGetErrorString(e)) +
               " (an asynchronous error of an earlier kernel shows here too: rerun with DUO_CALIB_SYNC=1 to check "
               "after every op)")
                  .c_str(),
              __FILE__, __LINE__);
}

using namespace DUO_CALIB_KERNELS;

void rmsnorm_backward(const float* x, const float* w, const float* dy, float* dx, int64_t n, int dim, float eps,
                      bool accumulate, const int32_t* rows, cudaStream_t stream) {
  if (n <= 0) return;
  if (dim <= 0 || n > 0x7fffffff) fail_arg("rmsnorm_backward: bad shape");
  DUO_LAUNCH(rmsnorm_backward_kernel, (unsigned)n, norm::kThreads, 0, stream, x, w, dy, dx, dim, eps, accumulate, rows);
  check_launch("rmsnorm_backward");
}

void rmsnorm_rows_f32(const float* x, const int32_t* rows, const float* w, float* out, int64_t n, int dim, float eps,
                      cudaStream_t stream) {
  if (n <= 0) return;
  if (dim <= 0 || n > 0x7fffffff) fail_arg("rmsnorm_rows_f32: bad shape");
  DUO_LAUNCH(rmsnorm_rows_kernel, (unsigned)n, norm::kThreads, 0, stream, x, rows, w, out, dim, eps);
  check_launch("rmsnorm_rows_f32");
}

}  // namespace duo::cuda::calib
