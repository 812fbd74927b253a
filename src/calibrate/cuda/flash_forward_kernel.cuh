// The calibration attention forward kernel (flash_attention_cuda.h), device code only: launched
// by flash_forward.cu, and compiled as host code by the CPU emulation test (flash_common.cuh).
// The structure of backend/cuda/prefill.cu's mma.sync kernel without the KV cache: CTA = 4 warps,
// 128 query rows of one query head (32 a warp as two m16 tiles, so each K / V fragment feeds two
// MMAs), key tiles of 64 rows double-buffered with cp.async, online softmax in base 2 with the
// row maximum shared by the 4 lanes of a quad. Key tiles are visited in order and skipped when
// the mask hides them from every query of the block (mask.any); the per-element test runs only
// on tiles the mask does not fully expose (mask.all). Query blocks are issued longest first.
#pragma once
#include <cmath>

#include "backend/cuda/online_softmax.cuh"
#include "calibrate/cuda/flash_common.cuh"

namespace duo::cuda::calib::DUO_CALIB_KERNELS {

namespace fwd {
constexpr int kWarps = 4, kThreads = 32 * kWarps;
constexpr int kMt = 2;                  // m16 tiles a warp
constexpr int kBM = kWarps * 16 * kMt;  // 128 query rows a CTA
constexpr int kBN = 64;                 // keys a tile
}  // namespace fwd

template <int D>
constexpr int fwd_smem_bytes() {
  return (fwd::kBM * D + 4 * fwd::kBN * D) * (int)sizeof(bf16);  // Q + 2 stages of K and V
}

struct FwdParams {
  const bf16 *q, *k, *v;
  float *o, *lse;
  int64_t n, lse_ld;
  int n_heads, n_kv_heads;
};

template <int D, class Mask>
__global__ void __launch_bounds__(fwd::kThreads, 2) flash_fwd_kernel(const FwdParams p, const Mask mask) {
  using namespace fwd;
  bf16* sQ = dynamic_smem<bf16>();
  bf16* sK = sQ + kBM * D;
  bf16* sV = sK + 2 * kBN * D;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int h = blockIdx.x, hk = h / (p.n_heads / p.n_kv_heads);
  const int64_t n = p.n;
  const int64_t ldq = (int64_t)p.n_heads * D, ldk = (int64_t)p.n_kv_heads * D;
  const int64_t q0 = (int64_t)(gridDim.y - 1 - blockIdx.y) * kBM;  // longest (latest) query blocks first
  const int64_t q1 = min(q0 + kBM, n);

  // The next key tile at or after j that some query of [q0, q1) sees (q1 when none is left).
  auto next_tile = [&](int64_t j) {
    while (j < q1 && !mask.any(q0, q1, j, min(j + kBN, n))) j += kBN;
    return j;
  };
  auto load_kv = [&](int64_t j0, int stage) {
    load_tile<D, kBN, kThreads>(sK + stage * kBN * D, p.k + (int64_t)hk * D, ldk, j0, n, tid);
    load_tile<D, kBN, kThreads>(sV + stage * kBN * D, p.v + (int64_t)hk * D, ldk, j0, n, tid);
  };

  load_tile<D, kBM, kThreads>(sQ, p.q + (int64_t)h * D, ldq, q0, n, tid);
  int64_t j0 = next_tile(0);
  if (j0 < q1) load_kv(j0, 0);
  dt::cp_async_commit();

  float o[kMt][D / 8][4];
  float m[kMt][2], l[kMt][2];
#pragma unroll
  for (int mt = 0; mt < kMt; ++mt) {
    zero<D / 8>(o[mt]);
    m[mt][0] = m[mt][1] = -INFINITY;
    l[mt][0] = l[mt][1] = 0.0f;
  }
  const float sl2 = kLog2e / sqrtf((float)D);  // scores in base 2

  int stage = 0;
  while (j0 < q1) {  // j0 grows by >= kBN an iteration
    const int64_t jn = next_tile(j0 + kBN);
    prefetch_and_wait(jn, q1, stage, load_kv);
    const bf16* ks = sK + stage * kBN * D;
    const bf16* vs = sV + stage * kBN * D;

    // S = Q K^T (a K fragment feeds both m16 tiles)
    float s[kMt][kBN / 8][4];
#pragma unroll
    for (int mt = 0; mt < kMt; ++mt) zero<kBN / 8>(s[mt]);
#pragma unroll
    for (int kc = 0; kc < D / 16; ++kc) {
      uint32_t qa[kMt][4];
#pragma unroll
      for (int mt = 0; mt < kMt; ++mt) frag_a<D>(qa[mt], sQ, warp * 16 * kMt + mt * 16, kc, lane);
#pragma unroll
      for (int np = 0; np < kBN / 16; ++np) {
        uint32_t kb[4];
        frag_b_nk<D>(kb, ks, np * 16, kc, lane);
#pragma unroll
        for (int mt = 0; mt < kMt; ++mt) {
          dt::mma_bf16(s[mt][2 * np], qa[mt], kb[0], kb[1]);
          dt::mma_bf16(s[mt][2 * np + 1], qa[mt], kb[2], kb[3]);
        }
      }
    }

    // Mask, online softmax. Keys >= n exist only in the last tile and are always masked.
    const bool full = j0 + kBN <= n && mask.all(q0, q1, j0, j0 + kBN);
    online_softmax_tile<kMt, kBN, D>(s, m, l, o, mask, full, q0 + warp * 16 * kMt, j0, n, sl2, lane);

    // O += P V (P rounded to bf16)
#pragma unroll
    for (int kk = 0; kk < kBN / 16; ++kk) {
      uint32_t pa[kMt][4];
#pragma unroll
      for (int mt = 0; mt < kMt; ++mt) pack_c_as_a(pa[mt], s[mt][2 * kk], s[mt][2 * kk + 1]);
#pragma unroll
      for (int nc = 0; nc < D / 16; ++nc) {
        uint32_t vb[4];
        frag_b_kn<D>(vb, vs, kk * 16, nc, lane);
#pragma unroll
        for (int mt = 0; mt < kMt; ++mt) {
          dt::mma_bf16(o[mt][2 * nc], pa[mt], vb[0], vb[1]);
          dt::mma_bf16(o[mt][2 * nc + 1], pa[mt], vb[2], vb[3]);
        }
      }
    }
    __syncthreads();  // this stage is refilled by the next iteration's prefetch
    j0 = jn;
    stage ^= 1;
  }
  dt::cp_async_wait<0>();  // nothing may be in flight at exit (the loop may not have run)

  // Normalise and write O (fp32) and lse (natural log) of the real rows.
#pragma unroll
  for (int mt = 0; mt < kMt; ++mt)
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      float lt = l[mt][hr];
      lt += __shfl_xor_sync(0xffffffffu, lt, 1);
      lt += __shfl_xor_sync(0xffffffffu, lt, 2);
      const float inv = lt > 0.0f ? 1.0f / lt : 0.0f;
      const int64_t i = q0 + warp * 16 * kMt + mt * 16 + lane / 4 + hr * 8;
      if (i >= n) continue;
      float* orow = p.o + i * ldq + (int64_t)h * D + (lane % 4) * 2;
#pragma unroll
      for (int db = 0; db < D / 8; ++db)
        *reinterpret_cast<float2*>(orow + db * 8) = make_float2(o[mt][db][2 * hr] * inv, o[mt][db][2 * hr + 1] * inv);
      if (lane % 4 == 0) p.lse[(int64_t)h * p.lse_ld + i] = lt > 0.0f ? (m[mt][hr] + log2f(lt)) * kLn2 : -INFINITY;
    }
}

}  // namespace duo::cuda::calib::DUO_CALIB_KERNELS
