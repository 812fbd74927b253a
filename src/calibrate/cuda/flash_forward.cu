// Calibration attention forward (flash_attention_cuda.h): O in fp32 and the row log-sum-exp. The
// kernel is in flash_forward_kernel.cuh; this file launches it and checks the arguments.
#include <cmath>
#include <string>

#include "backend/cuda/cuda_check.h"
#include "calibrate/cuda/flash_attention_cuda.h"
#include "calibrate/cuda/flash_forward_kernel.cuh"
#include "calibrate/cuda/grad_kernels.h"

namespace duo::cuda::calib {

int64_t flash_lse_ld(int64_t n) { return (n + 63) / 64 * 64; }

namespace DUO_CALIB_KERNELS {
namespace {

template <int D, class Mask>
void launch_fwd(const FwdParams& p, const Mask& mask, cudaStream_t stream) {
  constexpr int smem = fwd_smem_bytes<D>();
  const auto kernel = flash_fwd_kernel<D, Mask>;
  static bool configured = false;  // attribute set once a process per instantiation
  if (!configured) {
    if (cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel), cudaFuncAttributeMaxDynamicSharedMemorySize,
                             smem) != cudaSuccess)
      check_launch("flash_forward (shared memory attribute)");
    configured = true;
  }
  const dim3 grid((unsigned)p.n_heads, (unsigned)((p.n + fwd::kBM - 1) / fwd::kBM));
  DUO_LAUNCH(kernel, grid, fwd::kThreads, smem, stream, p, mask);
  check_launch(D == 64 ? "flash_forward (head_dim 64)" : "flash_forward (head_dim 128)");
}

}  // namespace
}  // namespace DUO_CALIB_KERNELS

void validate_flash_args(const FlashArgs& a, const char* op) {
  auto bad = [&](const char* why) { fail_arg(std::string(op) + ": " + why); };
  if (a.n <= 0) bad("needs at least one position");
  if (a.head_dim != 64 && a.head_dim != 128) bad("head_dim must be 64 or 128");
  if (a.n_kv_heads <= 0 || a.n_kv_heads > 64 || a.n_heads % a.n_kv_heads != 0)
    bad("needs 1..64 KV heads dividing the query heads");
  if (a.lse_ld < a.n || a.lse_ld % 64 != 0) bad("lse_ld must be >= n and a multiple of 64 (flash_lse_ld)");
  if (a.mask.kind == AttentionMask::Kind::Streaming && (a.mask.sink < 0 || a.mask.recent < 1))
    bad("the Λ mask needs sink >= 0 and recent >= 1");
  if ((a.n + 63) / 64 > 65535) bad("too many positions for the grid (at most 4M)");
  auto misaligned = [](const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15) != 0; };
  if (!a.q || !a.k || !a.v || misaligned(a.q) || misaligned(a.k) || misaligned(a.v))
    bad("q, k and v must be 16-byte aligned device pointers");
}

void flash_forward(const FlashArgs& a, float* o, float* lse, cudaStream_t stream) {
  validate_flash_args(a, "flash_forward");
  const DUO_CALIB_KERNELS::FwdParams p{a.q, a.k, a.v, o, lse, a.n, a.lse_ld, a.n_heads, a.n_kv_heads};
  dispatch_flash(a, [&](auto d, const auto& mask) {
    DUO_CALIB_KERNELS::launch_fwd<decltype(d)::value>(p, mask, stream);
  });
}

}  // namespace duo::cuda::calib
