// Small device helpers shared by the attention kernels: cp.async, ldmatrix, mma.sync, cache rows.
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

// The same with f16 operands (the quantized decode: integer codes are exact in f16).
__device__ __forceinline__ void mma_f16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Transposes an 8x8 matrix of 16-bit elements held as mma fragments (lane l: row l / 4,
// columns 2 (l % 4) and 2 (l % 4) + 1) in registers: lane l gets row l / 4 of the transpose.
__device__ __forceinline__ uint32_t movmatrix_trans(uint32_t x) {
  uint32_t y;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(y) : "r"(x));
  return y;
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
  const StreamingWindow w = c.window();
  if (pos >= w.sink && pos < w.first_ring(end)) return false;
  dst = ((int64_t)h * w.rows() + w.ring_row(pos)) * d;
  k = c.k_ring + dst, v = c.v_ring + dst;
  return true;
}

// The mask policies (CausalMask<int>, StreamingMask<int>) are duo/duo_policy.h's.

}  // namespace duo::cuda::detail
