// Small device helpers shared by the attention kernels: cp.async, ldmatrix, mma.sync, masks.
#pragma once
#include <cuda_bf16.h>

#include <cstdint>

#include "backend/cuda/attention.cuh"
#include "kv/kv_quant.h"

namespace duo::cuda::detail {

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte async copy global -> shared; src_bytes 0 zero-fills the destination.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}

// D = A (16x16 bf16, row) * B (16x8 bf16, col) + D, fp32 accumulators.
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// The r-th KV head of the given kind (0 retrieval, 1 streaming) in head order, from the per-head
// kinds in device memory. Every thread of the warp must call it (ballots over 32 heads at a
// time); returns 0 when there are fewer than r + 1 such heads (callers size grids from the counts).
__device__ __forceinline__ int nth_kv_head(const uint8_t* kinds, int n_kv, int r, int kind) {
  const int lane = threadIdx.x % 32;
  for (int base = 0; base < n_kv; base += 32) {
    const int h = base + lane;
    const unsigned m = __ballot_sync(0xffffffffu, h < n_kv && (kinds[h] != 0) == (kind != 0));
    const int cnt = __popc(m);
    if (r < cnt) return base + (int)__fns(m, 0, r + 1);
    r -= cnt;
  }
  return 0;
}

// Where KV head h stores position pos in a layer's cache when the chunk being appended ends at
// position end (exclusive): sets k / v to the K and V rows (page rows for retrieval heads, sink +
// ring rows for streaming heads) and returns true, or returns false when no later query can see
// that position (a streaming head's rows between its sink and the chunk's last `recent`).
// Quantized caches: a retrieval head's sink rows, or its residual rows for the positions of the
// chunk's last group (complete or not); positions of earlier groups return false (kv_quantize
// stores those, straight from the chunk).
__device__ __forceinline__ bool cache_rows(const LayerKv& c, int h, int pos, int end, int d, bf16*& k, bf16*& v) {
  const bool streaming = c.mode == HeadMode::AllStreaming || (c.mode == HeadMode::Mixed && c.kinds[h] != 0);
  int64_t dst;
  if (!streaming && quantized_cache(c)) {
    const int64_t slot = c.slot_of[h];
    if (pos < c.sink16) {
      dst = (slot * c.sink16 + pos) * d;
      k = c.k_sink + dst, v = c.v_sink + dst;
      return true;
    }
    if (pos < (end - 1) / kvq::kGroup * kvq::kGroup) return false;
    dst = (slot * kvq::kGroup + pos % kvq::kGroup) * d;
    k = c.k_resid + dst, v = c.v_resid + dst;
    return true;
  }
  if (!streaming) {
    dst = ((int64_t)c.page_table[(int64_t)h * c.max_pages + pos / kPageTokens] * kPageTokens + pos % kPageTokens) * d;
    k = c.k_pages + dst, v = c.v_pages + dst;
    return true;
  }
  int row;
  if (pos < c.sink)
    row = pos;
  else if (pos >= max(c.sink, end - c.recent))
    row = c.sink + (pos - c.sink) % c.recent;
  else
    return false;
  dst = ((int64_t)h * (c.sink + c.recent) + row) * d;
  k = c.k_ring + dst, v = c.v_ring + dst;
  return true;
}

// Mask policies. visible(i, j): may query position i see key position j?
// Key tiles of width bn are visited as two index ranges [r0b, r0e) and [r1b, r1e) for a block
// of queries [qmin, qmax]; tile_full() says that no element of a tile needs masking.
struct CausalMask {
  __device__ __forceinline__ bool visible(int i, int j) const { return j <= i; }
  __device__ __forceinline__ void tiles(int qmin, int qmax, int bn, int& r0b, int& r0e, int& r1b, int& r1e) const {
    (void)qmin;
    r0b = 0, r0e = qmax / bn + 1, r1b = r1e = r0e;
  }
  __device__ __forceinline__ bool tile_full(int qmin, int qmax, int k0, int k1) const {
    (void)qmax, (void)k0;
    return k1 - 1 <= qmin;
  }
};

// Λ mask of streaming heads: j <= i and (j < sink or j > i - recent).
struct SinkRecentMask {
  int sink, recent;
  __device__ __forceinline__ bool visible(int i, int j) const { return j <= i && (j < sink || j > i - recent); }
  __device__ __forceinline__ void tiles(int qmin, int qmax, int bn, int& r0b, int& r0e, int& r1b, int& r1e) const {
    const int last = qmax / bn + 1;                   // tiles past the newest query are invisible
    r1b = max(0, qmin - recent + 1) / bn, r1e = last;  // recent window of the block
    r0b = 0, r0e = min((sink + bn - 1) / bn, last);    // sink tiles
    if (r1b < r0e) r1b = r0e;
    if (r1b > r1e) r1b = r1e;
  }
  __device__ __forceinline__ bool tile_full(int qmin, int qmax, int k0, int k1) const {
    return k1 - 1 <= qmin && (k1 - 1 < sink || k0 > qmax - recent);
  }
};

}  // namespace duo::cuda::detail
