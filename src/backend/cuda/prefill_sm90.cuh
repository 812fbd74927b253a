// Internal interface of the Hopper (sm_90a) wgmma pre-fill kernel (prefill_sm90.cu), used by
// prefill_attention's dispatch in prefill.cu.
#pragma once
#include "backend/cuda/attention.cuh"

namespace duo::cuda::detail {

// Whether this library holds sm_90a device code for the wgmma kernel (CMake defines DUO_CUDA_SM90A
// when CMAKE_CUDA_ARCHITECTURES names 90a); without it the kernel body is a trap.
bool prefill_sm90_built();

// Why the wgmma kernel cannot run these (already validated) arguments on the current device, or
// nullptr when it can: needs prefill_sm90_built(), a compute capability 9.0 device, head_dim 64 or
// 128, and 16-byte aligned rows (pointers and token strides) for its 16-byte cp.async loads.
const char* prefill_sm90_unsupported(const PrefillArgs& a);

// Launches the wgmma kernel. `overlap`: issue the S = Q K^T wgmma of the next key tile before the
// softmax of the current one (FA3's intra-warpgroup overlap); false runs each tile start to end.
void prefill_sm90(const PrefillArgs& a, bool overlap, cudaStream_t stream);

}  // namespace duo::cuda::detail
