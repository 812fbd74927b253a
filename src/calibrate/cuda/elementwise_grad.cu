// Element-wise kernels of the calibration backward: SwiGLU backward and the fp32 -> bf16 copy of a
// gradient that becomes a GEMM operand. Grid-stride loops over int64 counts.
#include <algorithm>

#include "calibrate/cuda/elementwise_grad_kernels.cuh"
#include "calibrate/cuda/grad_kernels.h"

namespace duo::cuda::calib {
namespace {

constexpr int kEltThreads = 256;

unsigned elt_grid(int64_t count) {
  return (unsigned)std::max<int64_t>(1, std::min<int64_t>((count + kEltThreads - 1) / kEltThreads, 1 << 16));
}

using namespace DUO_CALIB_KERNELS;

}  // namespace

void swiglu_backward(const float* gu, const float* dh, bf16* dgu, int64_t n, int F, cudaStream_t stream) {
  if (n <= 0 || F <= 0) return;
  DUO_LAUNCH(swiglu_backward_kernel, elt_grid(n * F), kEltThreads, 0, stream, gu, dh, dgu, n, F);
  check_launch("swiglu_backward");
}

void to_bf16(const float* x, bf16* y, int64_t count, cudaStream_t stream) {
  if (count <= 0) return;
  DUO_LAUNCH(to_bf16_kernel, elt_grid(count), kEltThreads, 0, stream, x, y, count);
  check_launch("to_bf16");
}

}  // namespace duo::cuda::calib
