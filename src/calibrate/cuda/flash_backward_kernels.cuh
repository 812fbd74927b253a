// The calibration attention backward kernels (flash_attention_cuda.h), device code only:
// launched by flash_backward.cu, and compiled as host code by the CPU emulation test
// (flash_common.cuh). delta = rowsum(dO * O), then the FlashAttention-2 split into a dK/dV kernel
// (one CTA a query head and 64 keys) and a dQ kernel (one CTA a query head and 64 queries). Both
// recompute P = exp(S - lse) tile by tile from the forward's log-sum-exp; neither uses atomics.
//
// CTA = 4 warps, each owning 16 rows of the CTA's 64 (keys in dK/dV, queries in dQ), so every
// score tile is 16 x 64 a warp and the gradient accumulators (16 x head_dim) stay in registers.
// The CTA's own 64-row tiles are loaded once; the tiles it loops over (query tiles in dK/dV, key
// tiles in dQ) are double-buffered with cp.async and skipped when the mask hides all of them.
// Work order: dK/dV issues the first key blocks first (under the causal mask they are seen by
// the most queries), dQ the last query blocks first (they see the most keys).
#pragma once
#include <cmath>

#include "calibrate/cuda/flash_common.cuh"

namespace duo::cuda::calib::DUO_CALIB_KERNELS {

namespace bwd {
constexpr int kWarps = 4, kThreads = 32 * kWarps;
constexpr int kB = 64;  // rows of every tile (16 a warp) and width of every score tile
}  // namespace bwd

// dK/dV: K, V and two stages of Q and dO (6 tiles), two stages of lse and delta (4 x 64 floats).
// dQ: Q, dO and two stages of K and V (6 tiles).
template <int D>
constexpr int bwd_smem_bytes() {
  return 6 * bwd::kB * D * (int)sizeof(bf16) + 4 * bwd::kB * (int)sizeof(float);
}

struct BwdParams {
  const bf16 *q, *k, *v, *d_o;
  const float *lse, *delta;
  float *dq, *dk, *dv;
  int64_t n, lse_ld;
  int n_heads, n_kv_heads;
  uint64_t active_kv;
  bool accumulate;
  float scale;  // 1 / sqrt(head_dim)
};

// delta[h * lse_ld + i] = sum_d dO[i][h][d] * O[i][h][d]: one warp a (row, head).
template <int kUnused = 0>
__global__ void delta_kernel(const bf16* d_o, const float* o, float* delta, int64_t n, int n_heads, int head_dim,
                             int64_t lse_ld) {
  const int lane = threadIdx.x % 32;
  const int64_t items = n * n_heads;
  const int64_t warps = (int64_t)gridDim.x * blockDim.x / 32;
  for (int64_t it = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32; it < items; it += warps) {
    const int64_t i = it / n_heads;
    const int h = (int)(it % n_heads);
    const int64_t off = (i * n_heads + h) * head_dim;
    float s = 0.0f;
    for (int d = lane; d < head_dim; d += 32) s += __bfloat162float(d_o[off + d]) * o[off + d];
    s = dt::warp_sum(s);
    if (lane == 0) delta[(int64_t)h * lse_ld + i] = s;
  }
}

// Rows [r0, r1) of query head h's columns of a [n][n_heads * D] gradient set to zero (a skipped
// head's gradient when not accumulating).
template <int D>
__device__ void zero_rows(float* g, int64_t ld, int h, int64_t r0, int64_t r1, int tid) {
  for (int64_t e = tid; e < (r1 - r0) * D; e += bwd::kThreads) g[(r0 + e / D) * ld + (int64_t)h * D + e % D] = 0.0f;
}

// Writes (or adds) a warp's 16 x D accumulator rows to rows row0 + (lane / 4) + 8 hr of g.
template <int D>
__device__ __forceinline__ void store_rows(float* g, int64_t ld, int h, int64_t row0, int64_t n,
                                           const float (&acc)[D / 8][4], float mul, bool accumulate, int lane) {
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    const int64_t r = row0 + lane / 4 + hr * 8;
    if (r >= n) continue;
    float* out = g + r * ld + (int64_t)h * D + (lane % 4) * 2;
#pragma unroll
    for (int db = 0; db < D / 8; ++db) {
      float2 v = make_float2(acc[db][2 * hr] * mul, acc[db][2 * hr + 1] * mul);
      float2* dst = reinterpret_cast<float2*>(out + db * 8);
      if (accumulate) {
        const float2 old = *dst;
        v.x += old.x, v.y += old.y;
      }
      *dst = v;
    }
  }
}

// ------------------------------------------------------------------------------- dK, dV
template <int D, class Mask>
__global__ void __launch_bounds__(bwd::kThreads, 2) flash_bwd_dkdv_kernel(const BwdParams p, const Mask mask) {
  using namespace bwd;
  bf16* sK = dynamic_smem<bf16>();
  bf16* sV = sK + kB * D;
  bf16* sQ = sV + kB * D;                                 // 2 stages
  bf16* sO = sQ + 2 * kB * D;                             // dO, 2 stages
  float* sL = reinterpret_cast<float*>(sO + 2 * kB * D);  // lse, 2 stages
  float* sDl = sL + 2 * kB;                               // delta, 2 stages
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int h = blockIdx.x, hk = h / (p.n_heads / p.n_kv_heads);
  const int64_t n = p.n, ldq = (int64_t)p.n_heads * D, ldk = (int64_t)p.n_kv_heads * D;
  const int64_t k0 = (int64_t)blockIdx.y * kB, k1 = min(k0 + kB, n);
  if (!((p.active_kv >> hk) & 1)) {
    if (!p.accumulate) zero_rows<D>(p.dk, ldq, h, k0, k1, tid), zero_rows<D>(p.dv, ldq, h, k0, k1, tid);
    return;
  }

  // The next query tile at or after i that sees some key of [k0, k1) (n when none is left).
  auto next_q = [&](int64_t i) {
    while (i < n && !mask.any(i, min(i + kB, n), k0, k1)) i += kB;
    return i;
  };
  auto load_q = [&](int64_t i0, int st) {
    load_tile<D, kB, kThreads>(sQ + st * kB * D, p.q + (int64_t)h * D, ldq, i0, n, tid);
    load_tile<D, kB, kThreads>(sO + st * kB * D, p.d_o + (int64_t)h * D, ldq, i0, n, tid);
    if (tid < 32) {  // lse (threads 0-15) and delta (16-31), 4 rows a thread; rows >= n zero-filled
      const int c = tid % 16;
      const int64_t r = i0 + 4 * c, left = n - r;  // r < i0 + 64 <= lse_ld: the address exists
      const float* src = (tid < 16 ? p.lse : p.delta) + (int64_t)h * p.lse_ld + r;
      float* dst = (tid < 16 ? sL : sDl) + st * kB + 4 * c;
      dt::cp_async16(dst, src, left >= 4 ? 16 : left > 0 ? (int)left * 4 : 0);
    }
  };

  load_tile<D, kB, kThreads>(sK, p.k + (int64_t)hk * D, ldk, k0, n, tid);
  load_tile<D, kB, kThreads>(sV, p.v + (int64_t)hk * D, ldk, k0, n, tid);
  int64_t i0 = next_q(k0);  // queries before k0 see none of these keys (causality)
  if (i0 < n) load_q(i0, 0);
  dt::cp_async_commit();

  float dk[D / 8][4], dv[D / 8][4];
  zero<D / 8>(dk);
  zero<D / 8>(dv);
  const float sl2 = kLog2e * p.scale;
  const int r0 = warp * 16;  // this warp's keys within the block
  int st = 0;
  while (i0 < n) {  // i0 grows by >= kB an iteration
    const int64_t in = next_q(i0 + kB);
    prefetch_and_wait(in, n, st, load_q);
    const bf16* qs = sQ + st * kB * D;
    const bf16* os = sO + st * kB * D;
    const float* ls = sL + st * kB;
    const float* dls = sDl + st * kB;

    float s[kB / 8][4], dp[kB / 8][4];  // S^T and dP^T: rows keys, columns queries
    zero<kB / 8>(s);
    zero<kB / 8>(dp);
    mma_rows_by_nk<D, kB>(s, sK, r0, qs, lane);   // S^T = K Q^T
    mma_rows_by_nk<D, kB>(dp, sV, r0, os, lane);  // dP^T = V dO^T

    // P^T = exp(S^T * scale - lse[query]), dS^T = P^T (dP^T - delta[query]); 0 where masked.
    const bool full = i0 + kB <= n && k1 == k0 + kB && mask.all(i0, i0 + kB, k0, k1);
#pragma unroll
    for (int nb = 0; nb < kB / 8; ++nb)
#pragma unroll
      for (int hr = 0; hr < 2; ++hr)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int c = nb * 8 + (lane % 4) * 2 + e;  // query within the tile
          const int64_t i = i0 + c, j = k0 + r0 + lane / 4 + hr * 8;
          const bool vis = full || (i < n && j < n && mask.visible(i, j));
          const float pe = vis ? exp2f(s[nb][2 * hr + e] * sl2 - ls[c] * kLog2e) : 0.0f;
          s[nb][2 * hr + e] = pe;
          dp[nb][2 * hr + e] = vis ? pe * (dp[nb][2 * hr + e] - dls[c]) : 0.0f;
        }
    mma_c_by_kn<D, kB>(dv, s, os, lane);   // dV += P^T dO
    mma_c_by_kn<D, kB>(dk, dp, qs, lane);  // dK += dS^T Q
    __syncthreads();                       // this stage is refilled by the next iteration's prefetch
    i0 = in;
    st ^= 1;
  }
  dt::cp_async_wait<0>();
  store_rows<D>(p.dk, ldq, h, k0 + r0, n, dk, p.scale, p.accumulate, lane);
  store_rows<D>(p.dv, ldq, h, k0 + r0, n, dv, 1.0f, p.accumulate, lane);
}

// ------------------------------------------------------------------------------- dQ
template <int D, class Mask>
__global__ void __launch_bounds__(bwd::kThreads, 2) flash_bwd_dq_kernel(const BwdParams p, const Mask mask) {
  using namespace bwd;
  bf16* sQ = dynamic_smem<bf16>();
  bf16* sO = sQ + kB * D;      // dO
  bf16* sK = sO + kB * D;      // 2 stages
  bf16* sV = sK + 2 * kB * D;  // 2 stages
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int h = blockIdx.x, hk = h / (p.n_heads / p.n_kv_heads);
  const int64_t n = p.n, ldq = (int64_t)p.n_heads * D, ldk = (int64_t)p.n_kv_heads * D;
  const int64_t q0 = (int64_t)(gridDim.y - 1 - blockIdx.y) * kB, q1 = min(q0 + kB, n);
  if (!((p.active_kv >> hk) & 1)) {
    if (!p.accumulate) zero_rows<D>(p.dq, ldq, h, q0, q1, tid);
    return;
  }

  auto next_k = [&](int64_t j) {
    while (j < q1 && !mask.any(q0, q1, j, min(j + kB, n))) j += kB;
    return j;
  };
  auto load_kv = [&](int64_t j0, int st) {
    load_tile<D, kB, kThreads>(sK + st * kB * D, p.k + (int64_t)hk * D, ldk, j0, n, tid);
    load_tile<D, kB, kThreads>(sV + st * kB * D, p.v + (int64_t)hk * D, ldk, j0, n, tid);
  };

  load_tile<D, kB, kThreads>(sQ, p.q + (int64_t)h * D, ldq, q0, n, tid);
  load_tile<D, kB, kThreads>(sO, p.d_o + (int64_t)h * D, ldq, q0, n, tid);
  int64_t j0 = next_k(0);
  if (j0 < q1) load_kv(j0, 0);
  dt::cp_async_commit();

  const int r0 = warp * 16;  // this warp's queries within the block
  float lse2[2], dl[2];
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    const int64_t i = q0 + r0 + lane / 4 + hr * 8;
    lse2[hr] = i < n ? p.lse[(int64_t)h * p.lse_ld + i] * kLog2e : 0.0f;
    dl[hr] = i < n ? p.delta[(int64_t)h * p.lse_ld + i] : 0.0f;
  }
  float dq[D / 8][4];
  zero<D / 8>(dq);
  const float sl2 = kLog2e * p.scale;
  int st = 0;
  while (j0 < q1) {  // j0 grows by >= kB an iteration
    const int64_t jn = next_k(j0 + kB);
    prefetch_and_wait(jn, q1, st, load_kv);
    const bf16* ks = sK + st * kB * D;
    const bf16* vs = sV + st * kB * D;

    float s[kB / 8][4], dp[kB / 8][4];  // rows queries, columns keys
    zero<kB / 8>(s);
    zero<kB / 8>(dp);
    mma_rows_by_nk<D, kB>(s, sQ, r0, ks, lane);   // S = Q K^T
    mma_rows_by_nk<D, kB>(dp, sO, r0, vs, lane);  // dP = dO V^T

    const bool full = j0 + kB <= n && q1 == q0 + kB && mask.all(q0, q1, j0, j0 + kB);
#pragma unroll
    for (int nb = 0; nb < kB / 8; ++nb)
#pragma unroll
      for (int hr = 0; hr < 2; ++hr)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int64_t i = q0 + r0 + lane / 4 + hr * 8, j = j0 + nb * 8 + (lane % 4) * 2 + e;
          const bool vis = full || (i < n && j < n && mask.visible(i, j));
          const float pe = vis ? exp2f(s[nb][2 * hr + e] * sl2 - lse2[hr]) : 0.0f;
          dp[nb][2 * hr + e] = vis ? pe * (dp[nb][2 * hr + e] - dl[hr]) : 0.0f;  // dS
        }
    mma_c_by_kn<D, kB>(dq, dp, ks, lane);  // dQ += dS K
    __syncthreads();
    j0 = jn;
    st ^= 1;
  }
  dt::cp_async_wait<0>();
  store_rows<D>(p.dq, ldq, h, q0 + r0, n, dq, p.scale, p.accumulate, lane);
}

}  // namespace duo::cuda::calib::DUO_CALIB_KERNELS
