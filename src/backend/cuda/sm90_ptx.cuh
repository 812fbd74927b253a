// Raw PTX wrappers for the Hopper (sm_90a) pre-fill kernel: wgmma (warpgroup MMA), shared
// memory matrix descriptors, mbarrier, cp.async completion tracking, proxy fences, setmaxnreg and
// named barriers. Only compiled into device code for sm_90a (__CUDA_ARCH_FEAT_SM90_ALL); every
// wrapper follows one PTX ISA section, cited by number for the wgmma sections (9.7.15.*, PTX ISA
// 8.x/9.0 numbering) and by instruction name for the others (their numbers move between versions).
#pragma once
#include <cuda_bf16.h>

#include <cstdint>

namespace duo::cuda::sm90 {

// ---- 9.7.15.5.1.2.2 Matrix descriptor -----------------------------------------------------------
// 64-bit value: bits 0-13 start address >> 4, 16-29 leading dimension byte offset (LBO) >> 4,
// 32-45 stride dimension byte offset (SBO) >> 4, 49-51 base offset (0: every swizzle atom starts
// on a 1024-byte boundary, which the kernel guarantees), 62-63 swizzle mode (1 = 128-byte).
//
// All operand tiles of the kernel use the same shared memory layout: rows of 64 bf16 = 128 bytes,
// 8-row "swizzle atoms" of 1024 bytes starting on 1024-byte boundaries, 16-byte chunk c of row r
// stored at chunk position c ^ (r % 8) (the 128-byte swizzle of 9.7.15.5.1.2, Table 38: an 8x8
// atom of 128-bit elements; the hardware XORs address bits [4:6] with bits [7:9]). A tile with
// 128 columns (head_dim 128) is two such column halves, one after the other.
//  - K-major operand (Q for S = Q K^T as A; K as B): the 8-row groups are SBO = 1024 bytes apart;
//    LBO is unused for swizzled K-major layouts ("assumed 1"). The k16 steps inside a 64-column
//    half advance the start address by 32 bytes; the next half starts a new atom column.
//  - MN-major operand (V as B of O = P V, imm-trans-b = 1, 9.7.15.5.1.2 "N-major"): the 64-element
//    MN blocks (the head_dim halves) are LBO apart, the 8-key groups along K are SBO = 1024 apart.
//    The canonical MN-major 128B layout in 128-bit units is ((8,n),(8,k)):((1,LBO),(8,SBO)).
__device__ __forceinline__ uint64_t smem_desc(uint32_t smem_addr, uint32_t lbo_bytes, uint32_t sbo_bytes) {
  return (uint64_t)((smem_addr & 0x3FFFF) >> 4) | ((uint64_t)((lbo_bytes & 0x3FFFF) >> 4) << 16) |
         ((uint64_t)((sbo_bytes & 0x3FFFF) >> 4) << 32) | (1ull << 62);
}

// ---- 9.7.15.7 wgmma.fence / commit_group / wait_group -------------------------------------------
// wgmma.fence orders earlier register accesses (accumulators, A fragments) before the wgmma ops
// that follow; commit_group closes a group of issued wgmma ops; wait_group N returns once at most
// the N most recent groups are still pending (groups complete in order).
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// The compiler does not know that a wgmma keeps reading/writing its registers after the asm
// statement. An empty asm that "modifies" a register, placed after wgmma_wait, pins every later
// use of that register after the wait (volatile asm statements keep their order), and keeps A
// fragments alive (not reused for temporaries) until their wgmma is known complete.
__device__ __forceinline__ void fence_operand(float& r) { asm volatile("" : "+f"(r)::"memory"); }
__device__ __forceinline__ void fence_operand(uint32_t& r) { asm volatile("" : "+r"(r)::"memory"); }
template <int N>
__device__ __forceinline__ void fence_operands(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) fence_operand(r[i]);
}
template <int N, int M>
__device__ __forceinline__ void fence_operands(uint32_t (&r)[N][M]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int j = 0; j < M; ++j) fence_operand(r[i][j]);
}

// ---- 9.7.15.5 wgmma.mma_async, bf16 inputs, fp32 accumulators -----------------------------------
// Accumulator fragment of m64nNk16 (9.7.15.5.1.1, "Matrix D"): warp w of the warpgroup owns rows
// 16w..16w+15; lane l holds, for each 8-column block nb, d[4nb + 2v1 + v0] = D[16w + l/4 + 8v1]
// [8nb + 2(l%4) + v0]. The register A fragment of m64k16 (bf16) has the same shape: register j
// holds the bf16 pair (A[16w + l/4 + 8(j%2)][2(l%4) + 8(j/2)], next column) in (low, high) halves.
#define DUO_ACC8(i)                                                                                   \
  "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), "+f"(d[i + 6]), \
      "+f"(d[i + 7])
#define DUO_ACC32 DUO_ACC8(0), DUO_ACC8(8), DUO_ACC8(16), DUO_ACC8(24)
#define DUO_ACC64 DUO_ACC32, DUO_ACC8(32), DUO_ACC8(40), DUO_ACC8(48), DUO_ACC8(56)
#define DUO_REGS32                                                                                      \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, " \
  "%22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define DUO_REGS64                                                                                        \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, "   \
  "%22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, " \
  "%43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"

// D(64x128) = A(64x16, smem K-major) * B(16x128, smem K-major) (+ D when `accumulate`).
__device__ __forceinline__ void wgmma_m64n128k16_ss(float (&d)[64], uint64_t desc_a, uint64_t desc_b, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " DUO_REGS64
      ", %64, %65, p, 1, 1, 0, 0;\n}\n"
      : DUO_ACC64
      : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}

// D(64x128) += A(64x16, registers) * B(16x128, smem MN-major: imm-trans-b = 1).
__device__ __forceinline__ void wgmma_m64n128k16_rs_mn(float (&d)[64], const uint32_t (&a)[4], uint64_t desc_b) {
  asm volatile(
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " DUO_REGS64
      ", {%64, %65, %66, %67}, %68, 1, 1, 1, 1;\n"
      : DUO_ACC64
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b));
}

// D(64x64) += A(64x16, registers) * B(16x64, smem MN-major: imm-trans-b = 1).
__device__ __forceinline__ void wgmma_m64n64k16_rs_mn(float (&d)[32], const uint32_t (&a)[4], uint64_t desc_b) {
  asm volatile(
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " DUO_REGS32
      ", {%32, %33, %34, %35}, %36, 1, 1, 1, 1;\n"
      : DUO_ACC32
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b));
}

#undef DUO_ACC8
#undef DUO_ACC32
#undef DUO_ACC64
#undef DUO_REGS32
#undef DUO_REGS64

// ---- mbarrier (Parallel Synchronization and Communication Instructions: mbarrier) ---------------
// A phase completes when `count` arrivals have happened; waiters name the phase by its parity.
// Waiting for parity p returns at once while the barrier's current phase has the other parity,
// so a producer's first wait on an "empty" barrier (parity 1 on a fresh barrier) passes.
__device__ __forceinline__ void mbar_init(uint64_t* bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"((uint32_t)__cvta_generic_to_shared(bar)), "r"(count)
               : "memory");
}
// fence.mbarrier_init (membar/fence section): makes the initialisation visible before the barrier is used.
__device__ __forceinline__ void fence_mbarrier_init() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
// Arrive (release semantics at CTA scope: earlier memory accesses of this thread are visible to a
// thread whose wait observes the phase completion).
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("{\n.reg .b64 state;\nmbarrier.arrive.release.cta.shared::cta.b64 state, [%0];\n}\n" ::"r"(
                   (uint32_t)__cvta_generic_to_shared(bar))
               : "memory");
}
// One test of the phase: 1 when the phase with the given parity has completed (acquire).
__device__ __forceinline__ uint32_t mbar_try_wait(uint64_t* bar, uint32_t parity) {
  uint32_t done;
  asm volatile(
      "{\n.reg .pred p;\n"
      "mbarrier.try_wait.parity.acquire.cta.shared::cta.b64 p, [%1], %2;\n"
      "selp.u32 %0, 1, 0, p;\n}\n"
      : "=r"(done)
      : "r"((uint32_t)__cvta_generic_to_shared(bar)), "r"(parity)
      : "memory");
  return done;
}
// Blocks until the phase with the given parity has completed. (No timeout: any extra state in
// this loop made ptxas spill the consumers' accumulators; the tests and the benchmark put a
// host-side watchdog around launches instead.)
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  while (!mbar_try_wait(bar, parity)) {
  }
}
// cp.async.mbarrier.arrive.noinc (mbarrier section): an arrive-on the barrier is triggered once all
// prior cp.async operations of this thread have completed. With .noinc the barrier's expected
// count must include these arrivals (one per producer thread and phase).
__device__ __forceinline__ void cp_async_mbar_arrive(uint64_t* bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(
                   (uint32_t)__cvta_generic_to_shared(bar))
               : "memory");
}
// 16-byte cp.async to a shared memory address (cvta'd once by the caller); src_bytes 0 zero-fills.
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }

// ---- fence.proxy.async (membar/fence section) ---------------------------------------------------
// wgmma reads shared memory through the async proxy (9.7.15.4); cp.async and st.shared write
// through the generic proxy. A proxy fence orders the generic writes before the async reads.
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// ---- setmaxnreg (Miscellaneous Instructions) ----------------------------------------------------
// Moves registers between the warpgroups of a CTA (all warps of a warpgroup execute it).
template <int N>
__device__ __forceinline__ void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
}
template <int N>
__device__ __forceinline__ void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
}

// ---- bar.sync with a barrier id and thread count (one warpgroup) --------------------------------
__device__ __forceinline__ void named_bar_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// ---- ex2.approx (Floating-Point Instructions): 2^x on the SFU (ex2.approx.ftz(-inf) = +0) -------
__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

}  // namespace duo::cuda::sm90
