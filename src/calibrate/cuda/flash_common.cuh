// Device pieces shared by the calibration's attention kernels (flash_forward.cu,
// flash_backward.cu): tile loads into swizzled shared memory and the three ways an mma.sync
// operand fragment is read from such a tile. The fragment layouts are those of
// backend/cuda/prefill.cu (verified on the H100), named here once:
//
//   mma.m16n8k16 (row.col): D (16 x 8, fp32) += A (16 x 16, bf16) B (16 x 8, bf16). With
//   g = lane / 4, q = lane % 4, a thread holds
//     C/D: c[0], c[1] at (row g, cols 2q, 2q+1), c[2], c[3] at (row g + 8, same cols);
//     A:   a[0] (row g, k 2q..2q+1), a[1] (row g+8, same k), a[2] (row g, k 2q+8..), a[3] (row g+8, k 2q+8..);
//     B:   b0 (k 2q..2q+1, col g), b1 (k 2q+8..2q+9, col g).
//   So the C fragments of two adjacent n8 tiles ARE the A fragment of a 16-wide k step
//   (pack_c_as_a): a score block computed by one MMA feeds the next MMA from registers.
//
// Tiles are [rows][D] bf16 (D = head_dim, the contiguous dimension), 16-byte chunks of a row
// XOR-swizzled by the row (chunk c of row r at chunk c ^ (r % 8)) so ldmatrix is conflict-free.
//   frag_a      A = rows [r0, r0+16) x k [16 kc, 16 kc + 16) of a tile stored [m][k]   (Q, K, V, dO as A)
//   frag_b_nk   B pair for n8 tiles (n0 / 8, n0 / 8 + 1) x k step kc of a tile stored [n][k]
//               (K in S = Q K^T; dO in dP^T = V dO^T; Q in S^T = K Q^T)
//   frag_b_kn   B pair for n8 tiles (2 nc, 2 nc + 1) x k rows [k0, k0 + 16) of a tile stored [k][n]
//               (V in O = P V; K in dQ = dS K; dO in dV = P^T dO; Q in dK = dS^T Q)
//
// Built for the GPU and for the CPU emulation test alike (device_env.cuh).
#pragma once
#include <cuda_bf16.h>

#include <cstdint>
#include <type_traits>

#include "calibrate/cuda/device_env.cuh"
#include "calibrate/cuda/flash_attention_cuda.h"

namespace duo::cuda::calib {
// Checks the arguments of flash_forward / flash_backward (throws duo::Error naming op).
void validate_flash_args(const FlashArgs& a, const char* op);

// Calls launch(std::integral_constant<int, D>{}, mask) with a's head dimension (64 or 128, as
// validate_flash_args allows) and mask policy (CausalMask or StreamingMask over 64-bit
// positions): the kernels are instantiated for each pair, and this is the one place that picks.
template <class Launch>
void dispatch_flash(const FlashArgs& a, Launch&& launch) {
  const bool causal = a.mask.kind == AttentionMask::Kind::Causal;
  const StreamingMask<int64_t> streaming{a.mask.window()};
  auto with_mask = [&](auto d) {
    if (causal)
      launch(d, CausalMask<int64_t>{});
    else
      launch(d, streaming);
  };
  if (a.head_dim == 64)
    with_mask(std::integral_constant<int, 64>{});
  else
    with_mask(std::integral_constant<int, 128>{});
}
}  // namespace duo::cuda::calib

namespace duo::cuda::calib::DUO_CALIB_KERNELS {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

__device__ __forceinline__ int swz(int row, int chunk) { return ((chunk ^ (row & 7)) << 3); }

// The head of an iteration of a double-buffered tile loop: starts the load of the next tile
// (load(next, stage ^ 1), when next < end) into the other stage, then waits until the tile of
// this stage has landed and every thread of the CTA sees it.
template <class Load>
__device__ __forceinline__ void prefetch_and_wait(int64_t next, int64_t end, int stage, Load&& load) {
  if (next < end) {
    load(next, stage ^ 1);
    dt::cp_async_commit();
    dt::cp_async_wait<1>();
  } else {
    dt::cp_async_wait<0>();
  }
  __syncthreads();
}

// Rows [r0, r0 + R) of a [n][ld] bf16 matrix (base already at the head's first column) into a
// swizzled [R][D] tile by kThreads threads; rows >= n are zero-filled (their source address is
// clamped to row n - 1, which exists: n >= 1).
template <int D, int R, int kThreads>
__device__ __forceinline__ void load_tile(bf16* tile, const bf16* base, int64_t ld, int64_t r0, int64_t n, int tid) {
  constexpr int CPR = D / 8;           // 16-byte chunks a row
  constexpr int RPP = kThreads / CPR;  // rows a pass
  static_assert(kThreads % CPR == 0 && R % RPP == 0, "tile load shape");
  const int cc = tid % CPR, rr = tid / CPR;
#pragma unroll
  for (int p = 0; p < R / RPP; ++p) {
    const int r = rr + p * RPP;
    const int64_t gi = r0 + r;
    const bf16* src = base + (gi < n ? gi : n - 1) * ld + cc * 8;
    dt::cp_async16(tile + r * D + swz(r, cc), src, gi < n ? 16 : 0);
  }
}

template <int D>
__device__ __forceinline__ void frag_a(uint32_t (&a)[4], const bf16* tile, int r0, int kc, int lane) {
  const int row = r0 + (lane % 8) + ((lane / 8) % 2) * 8;
  dt::ldmatrix_x4(a, tile + row * D + swz(row, kc * 2 + lane / 16));
}

template <int D>
__device__ __forceinline__ void frag_b_nk(uint32_t (&b)[4], const bf16* tile, int n0, int kc, int lane) {
  const int row = n0 + (lane % 8) + (lane / 16) * 8;
  dt::ldmatrix_x4(b, tile + row * D + swz(row, kc * 2 + (lane / 8) % 2));
}

template <int D>
__device__ __forceinline__ void frag_b_kn(uint32_t (&b)[4], const bf16* tile, int k0, int nc, int lane) {
  const int row = k0 + (lane % 8) + ((lane / 8) % 2) * 8;
  dt::ldmatrix_x4_trans(b, tile + row * D + swz(row, nc * 2 + lane / 16));
}

// A fragment of k step kk from the fp32 C fragments c[2 kk] and c[2 kk + 1] (rounded to bf16).
__device__ __forceinline__ void pack_c_as_a(uint32_t (&a)[4], const float (&c0)[4], const float (&c1)[4]) {
  a[0] = dt::pack_bf16(c0[0], c0[1]);
  a[1] = dt::pack_bf16(c0[2], c0[3]);
  a[2] = dt::pack_bf16(c1[0], c1[1]);
  a[3] = dt::pack_bf16(c1[2], c1[3]);
}

// acc (M16 x N, N / 8 n8 tiles) += A tile rows [r0, r0 + 16) x K=D  times  B tile [N][D] (as [n][k]).
template <int D, int N>
__device__ __forceinline__ void mma_rows_by_nk(float (&acc)[N / 8][4], const bf16* a_tile, int r0, const bf16* b_tile,
                                               int lane) {
#pragma unroll
  for (int kc = 0; kc < D / 16; ++kc) {
    uint32_t a[4];
    frag_a<D>(a, a_tile, r0, kc, lane);
#pragma unroll
    for (int np = 0; np < N / 16; ++np) {
      uint32_t b[4];
      frag_b_nk<D>(b, b_tile, np * 16, kc, lane);
      dt::mma_bf16(acc[2 * np], a, b[0], b[1]);
      dt::mma_bf16(acc[2 * np + 1], a, b[2], b[3]);
    }
  }
}

// acc (M16 x D) += P (M16 x K=KN, as fp32 C fragments p[KN / 8][4], rounded to bf16) times
// B tile [KN][D] (as [k][n]).
template <int D, int KN>
__device__ __forceinline__ void mma_c_by_kn(float (&acc)[D / 8][4], const float (&p)[KN / 8][4], const bf16* b_tile,
                                            int lane) {
#pragma unroll
  for (int kk = 0; kk < KN / 16; ++kk) {
    uint32_t a[4];
    pack_c_as_a(a, p[2 * kk], p[2 * kk + 1]);
#pragma unroll
    for (int nc = 0; nc < D / 16; ++nc) {
      uint32_t b[4];
      frag_b_kn<D>(b, b_tile, kk * 16, nc, lane);
      dt::mma_bf16(acc[2 * nc], a, b[0], b[1]);
      dt::mma_bf16(acc[2 * nc + 1], a, b[2], b[3]);
    }
  }
}

template <int N>
__device__ __forceinline__ void zero(float (&acc)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.0f;
}

}  // namespace duo::cuda::calib::DUO_CALIB_KERNELS
