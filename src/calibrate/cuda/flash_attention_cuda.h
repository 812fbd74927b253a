// Whole-sequence attention for the CUDA calibration, the twin of calibrate/flash_attention.h:
// a forward that also returns each row's log-sum-exp, and its backward in the FlashAttention-2
// split, for the causal mask (retrieval heads) and the Λ mask (streaming heads: sink + recent),
// head_dim 64 or 128, GQA. The mask policies are calibrate/attention_mask.h's, compiled for the
// device (DUO_HD). No L x L matrix exists anywhere: memory is O(block x head_dim) a CTA.
//
// Kernels (flash_forward.cu, flash_backward.cu): FlashAttention-2-style tiles on mma.sync
// m16n8k16 (bf16 operands, fp32 accumulation), 16-byte cp.async loads double-buffered into
// XOR-swizzled shared memory, the fragment layouts of backend/cuda/prefill.cu (verified there).
// Key (or query) tiles the mask hides entirely are skipped, so Λ costs O(L (sink + recent)).
//   forward   one CTA a (query head, 128 queries): S = Q K^T, online softmax in base 2, O += P V
//             (P rounded to bf16); writes O in fp32 and lse = max + log(sum) in natural units.
//   backward  delta_i = dO_i . O_i (one warp a row and head), then
//             dK/dV: one CTA a (query head, 64 keys), looping over the visible query tiles:
//                    S^T = K Q^T, P^T = exp(S^T - lse), dP^T = V dO^T, dS^T = P^T (dP^T - delta),
//                    dV += P^T dO, dK += dS^T Q (P^T and dS^T rounded to bf16 as MMA operands);
//             dQ:    one CTA a (query head, 64 queries), looping over the visible key tiles:
//                    S, P, dP, dS as above, dQ += dS K.
//             P is recomputed from lse in both; no atomics, so results are deterministic.
//   K and V gradients are written per QUERY head ([n][n_heads][head_dim]): the GQA sum over a
//   group happens in qkv_grad_pack (grad_kernels.h), which the backward GEMM needs anyway. This
//   keeps n_heads x (n / 64) CTAs in the dK/dV grid (a 2-KV-head model would otherwise have 2).
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "backend/cuda/attention.cuh"  // bf16
#include "calibrate/attention_mask.h"

namespace duo::cuda::calib {

struct FlashArgs {
  const bf16* q = nullptr;                        // [n][n_heads * head_dim]
  const bf16* k = nullptr;                        // [n][n_kv_heads * head_dim]
  const bf16* v = nullptr;                        // [n][n_kv_heads * head_dim]
  int64_t n = 0;                                  // positions 0 .. n-1
  int n_heads = 0, n_kv_heads = 0, head_dim = 0;  // head_dim 64 or 128; n_kv_heads <= 64
  AttentionMask mask;                             // causal, or Λ with sink >= 0, recent >= 1
  int64_t lse_ld = 0;  // per-head row stride of lse and delta: >= n, a multiple of 64 (flash_lse_ld)
  // Backward only: bit j set when KV head j's output gradient may be non-zero. Query heads of a
  // clear bit are skipped (their gradients are exactly zero: written as zeros, or left as they
  // are when accumulating), e.g. the causal branch of a head whose gate is 0.
  uint64_t active_kv = ~0ull;
};

// The lse / delta row stride for n positions (n rounded up to a multiple of 64).
int64_t flash_lse_ld(int64_t n);

// o [n][n_heads * head_dim] fp32 = softmax(q k^T / sqrt(head_dim) + mask) v;
// lse[h * lse_ld + i] = log-sum-exp (natural log) of row i's scaled scores for query head h.
void flash_forward(const FlashArgs& a, float* o, float* lse, cudaStream_t stream);

struct FlashGrads {
  float* dq = nullptr;       // [n][n_heads * head_dim]
  float* dk_part = nullptr;  // [n][n_heads * head_dim]: query head h's contribution to K's gradient
  float* dv_part = nullptr;  // [n][n_heads * head_dim]
  float* delta = nullptr;    // scratch [n_heads][lse_ld]
  bool accumulate = false;   // add to dq, dk_part, dv_part instead of overwriting them
};
// Gradients from d_o ([n][n_heads * head_dim] bf16), given the forward's o and lse.
void flash_backward(const FlashArgs& a, const float* o, const float* lse, const bf16* d_o, const FlashGrads& g,
                    cudaStream_t stream);

}  // namespace duo::cuda::calib
