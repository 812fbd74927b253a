// From the attention backward's gradients to the input of the backward GEMM through Wq|Wk|Wv:
// the GQA sum of the per-query-head K/V gradients, the RoPE backward (rotation by -angle; the
// rotation is orthogonal, so its transpose is its inverse) and the bf16 packing [dq | dk | dv].
// One CTA a token, as the forward's qkv_bias_rope; a thread handles one (a, b) pair of a head.

#include "backend/cuda/cuda_check.h"
#include "calibrate/cuda/grad_kernels.h"
#include "calibrate/cuda/qkv_grad_kernels.cuh"

namespace duo::cuda::calib {
using namespace DUO_CALIB_KERNELS;

void qkv_grad_pack(const QkvGradArgs& a, cudaStream_t stream) {
  if (a.n <= 0) return;
  if (a.head_dim <= 0 || a.head_dim % 2 != 0 || a.n_kv_heads <= 0 || a.n_heads % a.n_kv_heads != 0 || a.n > 0x7fffffff)
    fail_arg("qkv_grad_pack: bad head shape");
  DUO_LAUNCH(qkv_grad_kernel, (unsigned)a.n, qkv::kThreads, 0, stream, a);
  check_launch("qkv_grad_pack");
}

}  // namespace duo::cuda::calib
