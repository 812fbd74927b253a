// The logit distillation's softmaxes, KL and gradient (`duo calibrate --loss kl`) on the GPU: the
// LM head's logits of a step (2 x rows x vocab floats, ~670 MB for Qwen's 151936-token vocabulary
// and 550 answer rows) no longer travel to the host and back, which took ~1.2 s of a 1.5 s step.

#include "backend/cuda/cuda_check.h"
#include "calibrate/cuda/grad_kernels.h"
#include "calibrate/cuda/logit_kl_kernels.cuh"

namespace duo::cuda::calib {

void logit_kl_grad(const float* z, int64_t rows, int64_t vocab, double* kl_rows, bf16* d_mix, cudaStream_t stream) {
  if (rows <= 0 || vocab <= 0 || rows > 0x7fffffff)
    fail_arg("logit_kl_grad: needs 1 to 2^31-1 rows of at least one logit");
  using namespace DUO_CALIB_KERNELS;
  DUO_LAUNCH(logit_kl_kernel, (unsigned)rows, kl::kThreads, 0, stream, z, rows, vocab, 1.0 / (double)rows, kl_rows,
             d_mix);
  check_launch("logit_kl_grad");
}

}  // namespace duo::cuda::calib
