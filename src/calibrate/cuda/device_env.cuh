// Where the calibration's kernels live and what device primitives they call, in one place so the
// same kernel source builds twice:
//  - for the GPU (nvcc): namespace duo::cuda::calib::kernels, primitives from backend/cuda's
//    common.cuh (cp.async, ldmatrix, mma.sync) and reduce.cuh (warp / block sums);
//  - for the CPU emulation test (DUO_CUDA_EMULATION, tests/calibrate/cuda_emulation.h defines it
//    and the primitives with their PTX semantics, running a CTA's threads as fibers): namespace
//    duo::cuda::calib::kernels_emulated, so nothing collides with the real kernels at link time.
// The kernels refer to the primitives as dt::name and to dynamic shared memory as dynamic_smem<T>();
// the launchers launch with DUO_LAUNCH, so they build for both too.
#pragma once
#include <cuda_bf16.h>

#ifdef DUO_CUDA_EMULATION
#define DUO_CALIB_KERNELS kernels_emulated
// Every CTA of the grid, one after the other, on the CPU (streams do not exist there).
#define DUO_LAUNCH(kernel, grid, block, smem, stream, ...)                                      \
  do {                                                                                          \
    (void)(stream);                                                                             \
    ::duo::cuda::emu::launch(dim3(grid), dim3(block), (size_t)(smem), [&] { kernel(__VA_ARGS__); }); \
  } while (0)
#else
// kernel<<<grid, block, smem, stream>>>(args); a kernel name with template arguments goes
// through a variable first (its commas would split the macro's arguments).
#define DUO_LAUNCH(kernel, grid, block, smem, stream, ...) kernel<<<(grid), (block), (smem), (stream)>>>(__VA_ARGS__)
#include "backend/cuda/common.cuh"
#include "backend/cuda/reduce.cuh"
#define DUO_CALIB_KERNELS kernels
#endif

namespace duo::cuda::calib::DUO_CALIB_KERNELS {

using bf16 = __nv_bfloat16;

#ifdef DUO_CUDA_EMULATION
namespace dt = duo::cuda::emu;
template <class T>
inline T* dynamic_smem() {
  return reinterpret_cast<T*>(dt::shared_memory());
}
#else
namespace dt = duo::cuda::detail;
// The kernel's dynamic shared memory (sized at launch).
template <class T>
__device__ __forceinline__ T* dynamic_smem() {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  return reinterpret_cast<T*>(smem_raw);
}
#endif

}  // namespace duo::cuda::calib::DUO_CALIB_KERNELS
