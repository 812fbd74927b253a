// Calibration attention backward (flash_attention_cuda.h): delta, then the dK/dV and the dQ
// kernels of flash_backward_kernels.cuh; this file launches them and checks the arguments.
#include <algorithm>
#include <cmath>

#include "backend/cuda/cuda_check.h"
#include "calibrate/cuda/flash_attention_cuda.h"
#include "calibrate/cuda/flash_backward_kernels.cuh"
#include "calibrate/cuda/grad_kernels.h"

namespace duo::cuda::calib {
namespace DUO_CALIB_KERNELS {
namespace {

template <class Kernel>
void set_smem(Kernel kernel, int bytes, bool& configured, const char* op) {
  if (configured) return;
  if (cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel), cudaFuncAttributeMaxDynamicSharedMemorySize, bytes) !=
      cudaSuccess)
    check_launch(op);
  configured = true;
}

template <int D, class Mask>
void launch_bwd(const BwdParams& p, const Mask& mask, cudaStream_t stream) {
  constexpr int smem = bwd_smem_bytes<D>();
  static bool dkdv_set = false, dq_set = false;
  const auto dkdv = flash_bwd_dkdv_kernel<D, Mask>;
  const auto dq = flash_bwd_dq_kernel<D, Mask>;
  set_smem(dkdv, smem, dkdv_set, "flash_backward dK/dV (shared memory attribute)");
  set_smem(dq, smem, dq_set, "flash_backward dQ (shared memory attribute)");
  const dim3 grid((unsigned)p.n_heads, (unsigned)((p.n + bwd::kB - 1) / bwd::kB));
  DUO_LAUNCH(dkdv, grid, bwd::kThreads, smem, stream, p, mask);
  check_launch(D == 64 ? "flash_backward dK/dV (head_dim 64)" : "flash_backward dK/dV (head_dim 128)");
  DUO_LAUNCH(dq, grid, bwd::kThreads, smem, stream, p, mask);
  check_launch(D == 64 ? "flash_backward dQ (head_dim 64)" : "flash_backward dQ (head_dim 128)");
}

}  // namespace
}  // namespace DUO_CALIB_KERNELS

void flash_backward(const FlashArgs& a, const float* o, const float* lse, const bf16* d_o, const FlashGrads& g,
                    cudaStream_t stream) {
  validate_flash_args(a, "flash_backward");
  auto misaligned = [](const void* ptr) { return !ptr || (reinterpret_cast<uintptr_t>(ptr) & 15) != 0; };
  if (misaligned(o) || misaligned(lse) || misaligned(d_o) || misaligned(g.dq) || misaligned(g.dk_part) ||
      misaligned(g.dv_part) || misaligned(g.delta))
    fail_arg(
        "flash_backward: o, lse, d_o and the gradients must be 16-byte aligned device pointers");
  const int64_t items = a.n * a.n_heads;
  const unsigned blocks = (unsigned)std::min<int64_t>((items + 7) / 8, 65536);
  DUO_LAUNCH(DUO_CALIB_KERNELS::delta_kernel<>, blocks, 256, 0, stream, d_o, o, g.delta, a.n, a.n_heads, a.head_dim,
             a.lse_ld);
  check_launch("flash_backward delta");
  const DUO_CALIB_KERNELS::BwdParams p{a.q,          a.k,         a.v,          d_o,
                             lse,          g.delta,     g.dq,         g.dk_part,
                             g.dv_part,    a.n,         a.lse_ld,     a.n_heads,
                             a.n_kv_heads, a.active_kv, g.accumulate, 1.0f / std::sqrt((float)a.head_dim)};
  dispatch_flash(a, [&](auto d, const auto& mask) {
    DUO_CALIB_KERNELS::launch_bwd<decltype(d)::value>(p, mask, stream);
  });
}

}  // namespace duo::cuda::calib
