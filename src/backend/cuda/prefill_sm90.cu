// Pre-fill attention for Hopper (sm_90a): a FlashAttention-3-style warp-specialised kernel on
// wgmma (warpgroup MMA) with the same contract as the mma.sync kernel of prefill.cu (see
// attention.cuh): GQA, the causal (retrieval heads) or Λ sink + recent (streaming heads) mask
// policy chosen per KV head inside one launch, keys < pos0 read from the paged cache or the
// sink + ring buffers and the rest from the chunk's own K/V.
//
// CTA = 3 warpgroups (384 threads) for one query head and BM = 128 query rows.
//  - Warpgroup 0, the producer (40 registers after setmaxnreg.dec), streams key tiles of BN = 128
//    rows of K and of V into a 2-stage shared memory ring with 16-byte cp.async. Every row is
//    gathered from wherever it lives (chunk, cache page, ring row), so one code path serves every
//    source; TMA would need a tensor map per source and cannot gather the ring's wrapped rows.
//    Each stage of K and of V has a "full" mbarrier (128 arrivals, one a producer thread,
//    triggered by cp.async.mbarrier.arrive.noinc when that thread's copies have landed) and an
//    "empty" mbarrier (256 arrivals, one a consumer thread, once its wgmma reads are complete).
//  - Warpgroups 1 and 2, the consumers (232 registers after setmaxnreg.inc), own 64 query rows
//    each. Per key tile: S = Q K^T as D/16 wgmma.m64n128k16 with both operands in shared memory
//    (Q and K K-major); online softmax in registers (base 2; row max and sum over the 4 lanes of
//    a quad); P rounded to bf16 and kept in registers as the A operand of O += P V (8 wgmma
//    m64n{D}k16 with V as an MN-major B operand: V is never transposed).
//    Intra-warpgroup overlap (FA3): the S wgmma of tile t+1 is issued before the P V wgmma of
//    tile t, so the tensor cores work through both while the warps run the softmax of tile t+1;
//    O is rescaled between the two issues. The serial schedule runs each tile start to end (it
//    localises pipelining bugs and measures the overlap); the ping-pong schedule adds FA3's
//    inter-warpgroup turns (the two consumer warpgroups issue their GEMMs alternately).
//    Only tiles that cross the mask's edge pay for masking (a separate copy of the softmax).
//  - Rows are gathered by the producer with one address computation a tile when the tile lies
//    wholly in the chunk or in one cache page, row by row otherwise (ring rows, tile edges).
//  - Block order: longest query blocks first; with Mixed heads and the retrieval count given,
//    all retrieval heads' blocks before any streaming head's (heavy first, light ones fill in).
// Shared memory layouts and descriptors are documented in sm90_ptx.cuh (128-byte swizzle,
// tiles stored as 64-column halves). Key tiles are visited as the mask policy says (common.cuh),
// exactly as in prefill.cu: a causal block visits [0, qmax / BN], a Λ block its sink tiles and the
// tiles of its recent window, so a streaming head costs O(L * (sink + recent + BN)).
#include <atomic>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include "backend/cuda/attention.cuh"
#include "backend/cuda/common.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/prefill_sm90.cuh"
#include "backend/cuda/sm90_ptx.cuh"

namespace duo::cuda::detail {
namespace {

constexpr int kBM = 128, kBN = 128;  // query rows a CTA, keys a tile
constexpr int kStages = 2;           // depth of the K and V rings
// How the consumer warpgroups schedule their wgmma: each tile start to end (serial), S of tile
// t + 1 issued before the softmax of tile t (overlap, FA3's intra-warpgroup pipelining), and
// overlap plus ping-pong: the two consumer warpgroups take turns issuing their GEMMs (named
// barriers), so one's softmax runs while the other's GEMMs occupy the tensor cores.
enum Sched : int { kSerial = 0, kOverlap = 1, kPingPong = 2 };
constexpr int kSchedBar = 3;  // named barriers 3 and 4 (0: __syncthreads, 1-2: per-warpgroup syncs)
constexpr int kWg = 128;             // threads a warpgroup
constexpr int kThreads = 3 * kWg;
// __launch_bounds__(384, 1) gives every thread 168 registers at launch; the producer returns
// 128 * (168 - 40) of them and each consumer takes 128 * (232 - 168): the pool balances exactly
// (setmaxnreg.inc would wait forever for registers nobody returns).
constexpr int kProducerRegs = 40, kConsumerRegs = 232;
static_assert(kProducerRegs * kWg + 2 * kConsumerRegs * kWg == 168 * kThreads, "register pool must balance");
constexpr int kRowBytes = 128;                   // a swizzled row: 64 bf16
constexpr int kHalfBytes = 128 * kRowBytes;      // one 64-column half of a 128-row tile
static_assert(kBM == 128 && kBN == 128, "Q, K and V tiles share the 128-row half layout");
static_assert(kPageTokens % kBN == 0, "a key tile lies within one cache page");

template <int D>
struct SmemLayout {
  static constexpr int kTile = 128 * D * 2;  // bytes of a Q, K or V tile
  static constexpr int kQ = 0, kK = kTile, kV = kK + kStages * kTile, kBar = kV + kStages * kTile;
  static constexpr int kBytes = kBar + 4 * kStages * 8;
  static constexpr int kAlloc = kBytes + 1024;  // slack: the kernel aligns its base up to 1024 bytes
};

// Byte offset of the 16-byte chunk c (columns 8c..8c+7) of row r in a 128-row tile: half c / 8,
// row r at 128 bytes, chunk position (c % 8) ^ (r % 8) (128-byte swizzle, sm90_ptx.cuh).
__device__ __forceinline__ uint32_t chunk_off(int r, int c) {
  return (uint32_t)((c >> 3) * kHalfBytes + r * kRowBytes + (((c & 7) ^ (r & 7)) << 4));
}

struct Barriers {
  uint64_t *k_full, *v_full, *k_empty, *v_empty;  // kStages each
};

// The key tiles a query block visits, in visiting order (producer and consumers walk the same list).
struct TileList {
  int n0, r0b, r1b, count;
  __device__ __forceinline__ int operator[](int t) const { return t < n0 ? r0b + t : r1b + (t - n0); }
};
template <class Mask>
__device__ __forceinline__ TileList tile_list(const Mask& mask, int qmin, int qmax) {
  int r0b, r0e, r1b, r1e;
  mask.tiles(qmin, qmax, kBN, r0b, r0e, r1b, r1e);
  return {r0e - r0b, r0b, r1b, (r0e - r0b) + (r1e - r1b)};
}

// Warpgroup 0: fills the K and V rings. Key j of a tile comes from the chunk (j >= pos0), the
// sink + ring rows (streaming heads) or a cache page (retrieval heads); rows past the last key are
// zero-filled (the consumers mask them).
template <int D, bool kStreaming>
__device__ __forceinline__ void produce(const PrefillArgs& a, int kvh, const TileList& tiles, uint32_t sk, uint32_t sv,
                                        const Barriers& bar) {
  sm90::setmaxnreg_dec<kProducerRegs>();
  constexpr int kChunks = D / 8;               // 16-byte chunks a row
  constexpr int kRowsPerPass = kWg / kChunks;  // 8 or 16: a multiple of 8, so r % 8 is fixed per thread
  const int tid = threadIdx.x % kWg, c = tid % kChunks, r0 = tid / kChunks;
  const LayerKv& cache = a.cache;
  const int kv_len = a.pos0 + a.n;
  auto row = [&](int j, bool value) -> const bf16* {
    if (j >= a.pos0) return (value ? a.v : a.k) + (int64_t)(j - a.pos0) * a.kv_stride + (int64_t)kvh * D;
    if constexpr (kStreaming) {
      const int r = cache.window().ring_row(j);
      return (value ? cache.v_ring : cache.k_ring) + ((int64_t)kvh * cache.window().rows() + r) * D;
    } else {
      const int page = cache.page_table[kvh * cache.max_pages + j / kPageTokens];
      return (value ? cache.v_pages : cache.k_pages) + ((int64_t)page * kPageTokens + j % kPageTokens) * D;
    }
  };
  // Rows r0 + p * kRowsPerPass of a tile land at dst + chunk_off(r0, c) + p * (kRowsPerPass * 128)
  // (kRowsPerPass is a multiple of 8, so the swizzle phase r % 8 is the same for every pass).
  const uint32_t dst_off = chunk_off(r0, c);
  constexpr uint32_t kPassBytes = kRowsPerPass * kRowBytes;
  auto load = [&](int k0, uint32_t dst, bool value) {
    dst += dst_off;
    // Fast paths, one address computation a tile: the tile lies wholly in the chunk (one
    // strided run of rows), or wholly in one cache page (tiles are 128-aligned, pages 256 rows).
    if (k0 >= a.pos0 && k0 + kBN <= kv_len) {
      const bf16* src = (value ? a.v : a.k) + (int64_t)(k0 - a.pos0 + r0) * a.kv_stride + (int64_t)kvh * D + c * 8;
      const int64_t step = (int64_t)kRowsPerPass * a.kv_stride;
#pragma unroll
      for (int p = 0; p < kBN / kRowsPerPass; ++p) sm90::cp_async16(dst + p * kPassBytes, src + p * step, 16);
      return;
    }
    if constexpr (!kStreaming) {
      if (k0 + kBN <= a.pos0) {
        const int64_t page = cache.page_table[kvh * cache.max_pages + k0 / kPageTokens];
        const bf16* src =
            (value ? cache.v_pages : cache.k_pages) + (page * kPageTokens + k0 % kPageTokens + r0) * D + c * 8;
#pragma unroll
        for (int p = 0; p < kBN / kRowsPerPass; ++p)
          sm90::cp_async16(dst + p * kPassBytes, src + p * kRowsPerPass * D, 16);
        return;
      }
    }
    // General: row by row (tiles that straddle pos0 or the end of the keys, sink + ring rows).
#pragma unroll 4
    for (int p = 0; p < kBN / kRowsPerPass; ++p) {
      const int j = k0 + r0 + p * kRowsPerPass;
      const bool in = j < kv_len;
      sm90::cp_async16(dst + p * kPassBytes, in ? row(j, value) + c * 8 : a.k, in ? 16 : 0);
    }
  };
  for (int t = 0; t < tiles.count; ++t) {
    const int s = t % kStages, k0 = tiles[t] * kBN;
    const uint32_t phase = (t / kStages) & 1;
    sm90::mbar_wait(&bar.k_empty[s], phase ^ 1);  // first round: passes on the fresh barrier
    load(k0, sk + s * SmemLayout<D>::kTile, false);
    sm90::cp_async_mbar_arrive(&bar.k_full[s]);
    sm90::mbar_wait(&bar.v_empty[s], phase ^ 1);
    load(k0, sv + s * SmemLayout<D>::kTile, true);
    sm90::cp_async_mbar_arrive(&bar.v_full[s]);
  }
  sm90::cp_async_wait_all();  // leave no copy in flight behind an exiting thread
}

__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// Warpgroups 1 and 2: attention of query rows [64 cw, 64 cw + 64) of the block.
template <int D, class Mask, int kSched>
__device__ __forceinline__ void consume(const PrefillArgs& a, const Mask& mask, int h, int q0, const TileList& tiles,
                                        unsigned char* smem, uint32_t sbase, const Barriers& bar) {
  sm90::setmaxnreg_inc<kConsumerRegs>();
  using L = SmemLayout<D>;
  constexpr int kChunks = D / 8, kRowsPerPass = kWg / kChunks;
  constexpr int kSSteps = D / 16;   // k16 steps of S = Q K^T
  constexpr int kPSteps = kBN / 16;  // k16 steps of O += P V
  constexpr int kONb = D / 8;        // 8-column blocks of O
  const int cw = (int)threadIdx.x / kWg - 1;
  const int tid = threadIdx.x % kWg, warp = tid / 32, lane = tid % 32;
  const int kv_len = a.pos0 + a.n;
  const uint32_t sq = sbase + L::kQ, sk = sbase + L::kK, sv = sbase + L::kV;

  // This warpgroup's 64 Q rows -> shared memory (rows past the chunk zero-filled).
  {
    const int c = tid % kChunks, r0 = tid / kChunks;
#pragma unroll
    for (int p = 0; p < 64 / kRowsPerPass; ++p) {
      const int r = 64 * cw + r0 + p * kRowsPerPass, qi = q0 + r;
      const bf16* src = a.q + (int64_t)min(qi, a.n - 1) * a.q_stride + (int64_t)h * D + c * 8;
      sm90::cp_async16(sq + chunk_off(r, c), src, qi < a.n ? 16 : 0);
    }
    sm90::cp_async_wait_all();
    sm90::fence_proxy_async();  // this thread's generic-proxy writes before the wgmma (async proxy) reads
    sm90::named_bar_sync(1 + cw, kWg);
  }

  // Descriptors: built once, advanced by adding (byte offset >> 4) to the start address field
  // (no carry: shared addresses are < 2^18). Q: this warpgroup's rows start 64 rows into each half.
  const uint64_t q_desc = sm90::smem_desc(sq + 64 * cw * kRowBytes, 16, 1024);
  const uint64_t k_desc = sm90::smem_desc(sk, 16, 1024);
  const uint64_t v_desc = sm90::smem_desc(sv, kHalfBytes, 1024);
  auto k_step_off = [](int kk) { return (uint64_t)(((kk / 4) * kHalfBytes + (kk % 4) * 32) >> 4); };

  float o[D / 2], s[kBN / 2];
  uint32_t p[kPSteps][4];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) o[i] = 0.0f;
#pragma unroll
  for (int i = 0; i < kBN / 2; ++i) s[i] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  const float scale = 1.4426950408889634f / sqrtf((float)D);  // softmax in base 2
  const int row = 64 * cw + 16 * warp + lane / 4;              // block row of this thread's first row (+8: second)
  const int i0 = a.pos0 + q0 + row;
  const int wq_min = a.pos0 + q0 + 64 * cw, wq_max = wq_min + 63;
  constexpr bool kStreamingMask = std::is_same_v<Mask, StreamingMask<int>>;

  auto issue_s = [&](int stage) {
    sm90::fence_operands(s);
    sm90::wgmma_fence();
    const uint64_t kd = k_desc + (uint64_t)((stage * L::kTile) >> 4);
#pragma unroll
    for (int kk = 0; kk < kSSteps; ++kk) sm90::wgmma_m64n128k16_ss(s, q_desc + k_step_off(kk), kd + k_step_off(kk), kk > 0);
    sm90::wgmma_commit();
  };
  auto issue_pv = [&](int stage) {
    sm90::fence_operands(o);
    sm90::wgmma_fence();
    const uint64_t vd = v_desc + (uint64_t)((stage * L::kTile) >> 4);
#pragma unroll
    for (int kk = 0; kk < kPSteps; ++kk) {
      const uint64_t d = vd + (uint64_t)((kk * 16 * kRowBytes) >> 4);  // 16 keys = 2 groups of 8 rows
      if constexpr (D == 128)
        sm90::wgmma_m64n128k16_rs_mn(o, p[kk], d);
      else
        sm90::wgmma_m64n64k16_rs_mn(o, p[kk], d);
    }
    sm90::wgmma_commit();
  };
  // Online softmax of the tile at k0 held in s: masks, updates m (raw scores) and l, leaves P
  // (fp32) in s and the factor O must be scaled by in alpha. Scores stay unscaled until the
  // exponent, p = 2^(s * scale - max * scale), one FFMA + one MUFU.EX2 an element.
  // Only tiles that cross the mask's edge or the end of the keys are masked (kMasked): the
  // per-element tests are a separate copy of the code behind a warp-uniform branch, because
  // when they shared the loop the compiler predicated them onto every tile (5 integer
  // instructions an element, the largest cost in the profile). Row maxima and sums are
  // reduced in 4 independent chains (a 32-deep FMNMX/FADD chain was latency-bound).
  auto softmax = [&](int k0, float(&alpha)[2], auto masked) {
    constexpr bool kMasked = decltype(masked)::value;
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      if constexpr (kMasked) {
        // Element (nb, e) of this row is key j = base + c with c = 8 nb + e (a constant).
        const int i = i0 + 8 * hr, base = k0 + 2 * (lane % 4);
        const int hi = min(i, kv_len - 1) - base;  // causal and end of keys: c <= hi
#pragma unroll
        for (int nb = 0; nb < kBN / 8; ++nb)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int c = 8 * nb + e;
            bool vis = c <= hi;
            if constexpr (kStreamingMask) vis = vis && mask.w.keeps_at(i, base, c);
            if (!vis) s[4 * nb + 2 * hr + e] = -INFINITY;
          }
      }
      float mx4[4] = {m[hr], -INFINITY, -INFINITY, -INFINITY};
#pragma unroll
      for (int nb = 0; nb < kBN / 8; ++nb)
        mx4[nb % 4] = fmaxf(mx4[nb % 4], fmaxf(s[4 * nb + 2 * hr], s[4 * nb + 2 * hr + 1]));
      float mx = fmaxf(fmaxf(mx4[0], mx4[1]), fmaxf(mx4[2], mx4[3]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float mref = mx == -INFINITY ? 0.0f : mx * scale;  // nothing visible yet: P = 0, not NaN
      alpha[hr] = sm90::ex2(fmaf(m[hr], scale, -mref));       // m = -inf: 0
      m[hr] = mx;
      float rs4[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
      for (int nb = 0; nb < kBN / 8; ++nb)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& v = s[4 * nb + 2 * hr + e];
          v = sm90::ex2(fmaf(v, scale, -mref));
          rs4[nb % 4] += v;
        }
      l[hr] = l[hr] * alpha[hr] + ((rs4[0] + rs4[1]) + (rs4[2] + rs4[3]));
    }
  };
  // Whether the tile at k0 needs masking (uniform over the warpgroup).
  auto tile_masked = [&](int k0) { return !(mask.tile_full(wq_min, wq_max, k0, k0 + kBN) && k0 + kBN <= kv_len); };
  auto softmax_tile = [&](int k0, float(&alpha)[2]) {
    if (tile_masked(k0))
      softmax(k0, alpha, std::true_type{});
    else
      softmax(k0, alpha, std::false_type{});
  };
  auto rescale_o = [&](const float (&alpha)[2]) {
    // Once the row maxima settle (most tiles of a long row), alpha is 1 for every row of the
    // warp: skip the 64 multiplies (warp-uniform branch; O is not in flight here).
    if (__all_sync(0xffffffffu, alpha[0] == 1.0f && alpha[1] == 1.0f)) return;
#pragma unroll
    for (int db = 0; db < kONb; ++db)
#pragma unroll
      for (int hr = 0; hr < 2; ++hr) o[4 * db + 2 * hr] *= alpha[hr], o[4 * db + 2 * hr + 1] *= alpha[hr];
  };
  // P (fp32 accumulator layout) -> bf16 A fragments: for k16 step kk the fragment's registers are
  // the pairs s[8kk + 2j], s[8kk + 2j + 1] (sm90_ptx.cuh: accumulator and A layouts coincide).
  auto s_to_p = [&] {
#pragma unroll
    for (int kk = 0; kk < kPSteps; ++kk)
#pragma unroll
      for (int j = 0; j < 4; ++j) p[kk][j] = pack_bf16x2(s[8 * kk + 2 * j], s[8 * kk + 2 * j + 1]);
  };
  auto wait_full = [&](uint64_t* b, int t) {
    sm90::mbar_wait(b + t % kStages, (t / kStages) & 1);
    sm90::fence_proxy_async();  // cp.async (generic proxy) data -> wgmma (async proxy) reads
  };

  if (tiles.count > 0) {
    float alpha[2];
    if constexpr (kSched != kSerial) {
      // FA3's order: O is rescaled by alpha(t-1) between the S(t) and the P V(t-1) issues (O
      // is not in flight there), so after P V(t-1) completes only the bf16 packing of P(t)
      // stands between it and the next S issue.
      // Ping-pong: every GEMM-issue phase (S(0); S(t) + P V(t-1); the last P V) starts with a
      // wait on this warpgroup's scheduler barrier and ends with an arrive on the other's, so
      // the two warpgroups issue in turns, warpgroup 0 first (warpgroup 1 pre-arrives once).
      // Both walk the same tiles, so each does count + 1 phases; warpgroup 1 skips the arrive
      // after its last phase, which leaves every barrier generation matched when they finish.
      auto phase_begin = [&] {
        if constexpr (kSched == kPingPong) sm90::named_bar_sync(kSchedBar + cw, 2 * kWg);
      };
      auto phase_end = [&](bool last) {
        if constexpr (kSched == kPingPong)
          if (!(last && cw == 1)) sm90::named_bar_arrive(kSchedBar + (1 - cw), 2 * kWg);
      };
      if constexpr (kSched == kPingPong)
        if (cw == 1) sm90::named_bar_arrive(kSchedBar, 2 * kWg);
      wait_full(bar.k_full, 0);
      phase_begin();
      issue_s(0);
      phase_end(false);
      sm90::wgmma_wait<0>();
      sm90::fence_operands(s);
      sm90::mbar_arrive(&bar.k_empty[0]);
      softmax_tile(tiles[0] * kBN, alpha);  // alpha = 0 (m was -inf): O stays 0
      s_to_p();
      for (int t = 1; t < tiles.count; ++t) {
        wait_full(bar.k_full, t);
        phase_begin();
        issue_s(t % kStages);  // S(t) = Q K(t)^T ...
        rescale_o(alpha);
        wait_full(bar.v_full, t - 1);
        issue_pv((t - 1) % kStages);  // ... then O += P(t-1) V(t-1)
        phase_end(false);
        sm90::wgmma_wait<1>();        // S(t) done (groups complete in order)
        sm90::fence_operands(s);
        sm90::mbar_arrive(&bar.k_empty[t % kStages]);
        softmax_tile(tiles[t] * kBN, alpha);  // overlaps P V(t-1)
        sm90::fence_operands(s);  // the softmax is complete before the wait below
        sm90::wgmma_wait<0>();
        sm90::fence_operands(o);
        sm90::fence_operands(p);  // P(t-1) stays untouched until its wgmma is complete
        s_to_p();
        sm90::mbar_arrive(&bar.v_empty[(t - 1) % kStages]);
      }
      const int last = tiles.count - 1;
      rescale_o(alpha);
      wait_full(bar.v_full, last);
      phase_begin();
      issue_pv(last % kStages);
      phase_end(true);
      sm90::wgmma_wait<0>();
      sm90::fence_operands(o);
      sm90::fence_operands(p);
      sm90::mbar_arrive(&bar.v_empty[last % kStages]);
    } else {
      for (int t = 0; t < tiles.count; ++t) {
        wait_full(bar.k_full, t);
        issue_s(t % kStages);
        sm90::wgmma_wait<0>();
        sm90::fence_operands(s);
        sm90::mbar_arrive(&bar.k_empty[t % kStages]);
        softmax_tile(tiles[t] * kBN, alpha);
        rescale_o(alpha);
        s_to_p();
        wait_full(bar.v_full, t);
        issue_pv(t % kStages);
        sm90::wgmma_wait<0>();
        sm90::fence_operands(o);
        sm90::fence_operands(p);
        sm90::mbar_arrive(&bar.v_empty[t % kStages]);
      }
    }
  }

  // O / l as bf16 into this warpgroup's Q rows (their last reader, the final S wgmma, is complete:
  // wgmma completion implies a generic-async proxy fence, 9.7.15.4), then 16-byte rows to `out`.
  float inv[2];
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    float lt = l[hr];
    lt += __shfl_xor_sync(0xffffffffu, lt, 1);
    lt += __shfl_xor_sync(0xffffffffu, lt, 2);
    inv[hr] = lt > 0.0f ? 1.0f / lt : 0.0f;
  }
  unsigned char* gq = smem + L::kQ;
#pragma unroll
  for (int db = 0; db < kONb; ++db)
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      const int r = row + 8 * hr;
      *reinterpret_cast<uint32_t*>(gq + chunk_off(r, db) + (lane % 4) * 4) =
          pack_bf16x2(o[4 * db + 2 * hr] * inv[hr], o[4 * db + 2 * hr + 1] * inv[hr]);
    }
  sm90::named_bar_sync(1 + cw, kWg);
#pragma unroll
  for (int idx = tid; idx < 64 * kChunks; idx += kWg) {
    const int r = 64 * cw + idx / kChunks, c = idx % kChunks, qi = q0 + r;
    if (qi < a.n)
      *reinterpret_cast<uint4*>(a.out + (int64_t)qi * a.o_stride + (int64_t)h * D + c * 8) =
          *reinterpret_cast<const uint4*>(gq + chunk_off(r, c));
  }
}

template <int D, class Mask, bool kStreaming, int kSched>
__device__ __forceinline__ void run_block(const PrefillArgs& a, const Mask& mask, int h, int kvh, int q0,
                                          unsigned char* smem, const Barriers& bar) {
  using L = SmemLayout<D>;
  const int qmin = a.pos0 + q0, qmax = a.pos0 + min(q0 + kBM, a.n) - 1;
  const TileList tiles = tile_list(mask, qmin, qmax);
  const uint32_t sbase = smem_u32(smem);
  if (threadIdx.x < kWg)
    produce<D, kStreaming>(a, kvh, tiles, sbase + L::kK, sbase + L::kV, bar);
  else
    consume<D, Mask, kSched>(a, mask, h, q0, tiles, smem, sbase, bar);
}

template <int D, int kMode, int kSched>
__global__ void __launch_bounds__(kThreads, 1) prefill_sm90_kernel(const PrefillArgs a) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using L = SmemLayout<D>;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  // Swizzle atoms must start on 1024-byte boundaries (descriptor base offset 0).
  unsigned char* smem = smem_raw + ((1024u - (smem_u32(smem_raw) & 1023u)) & 1023u);
  uint64_t* b = reinterpret_cast<uint64_t*>(smem + L::kBar);
  const Barriers bar{b, b + kStages, b + 2 * kStages, b + 3 * kStages};
  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      sm90::mbar_init(&bar.k_full[s], kWg);
      sm90::mbar_init(&bar.v_full[s], kWg);
      sm90::mbar_init(&bar.k_empty[s], 2 * kWg);
      sm90::mbar_init(&bar.v_empty[s], 2 * kWg);
    }
    sm90::fence_mbarrier_init();
  }
  __syncthreads();
  // Which query head and block: longest (latest) query blocks first; with Mixed heads and the
  // retrieval count given, all retrieval heads' blocks before any streaming head's (CTAs are
  // dispatched roughly in linear block order, x fastest).
  int h = blockIdx.x, q0 = (gridDim.y - 1 - blockIdx.y) * kBM;
  if (kMode == (int)HeadMode::Mixed && a.retrieval_kv_heads > 0) {
    const int G = a.n_heads / a.n_kv_heads, rq = a.retrieval_kv_heads * G, sq = a.n_heads - rq;
    const int id = blockIdx.y * gridDim.x + blockIdx.x, heavy = rq * gridDim.y;
    const int kind = id < heavy ? 0 : 1, j = id < heavy ? id : id - heavy, per = id < heavy ? rq : sq;
    const int r = j % per;
    h = nth_kv_head(a.cache.kinds, a.n_kv_heads, r / G, kind) * G + r % G;
    q0 = (gridDim.y - 1 - j / per) * kBM;
  }
  const int kvh = h / (a.n_heads / a.n_kv_heads);
  const bool streaming = kMode == (int)HeadMode::AllStreaming || (kMode == (int)HeadMode::Mixed && a.cache.kinds[kvh] != 0);
  if (streaming)
    run_block<D, StreamingMask<int>, true, kSched>(a, StreamingMask<int>{a.cache.window()}, h, kvh, q0, smem, bar);
  else
    run_block<D, CausalMask<int>, false, kSched>(a, CausalMask<int>{}, h, kvh, q0, smem, bar);
#else
  (void)a;
  __trap();  // built without sm_90a code; the host never launches this (prefill_sm90_unsupported)
#endif
}

template <int D, int kMode, int kSched>
void launch(const PrefillArgs& a, cudaStream_t stream) {
  constexpr int smem = SmemLayout<D>::kAlloc;
  static bool configured = false;  // attribute set once a process per instantiation
  if (!configured) {
    DUO_CUDA_TRY(
        cudaFuncSetAttribute(prefill_sm90_kernel<D, kMode, kSched>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    configured = true;
  }
  const dim3 grid(a.n_heads, (a.n + kBM - 1) / kBM);
  prefill_sm90_kernel<D, kMode, kSched><<<grid, kThreads, smem, stream>>>(a);
  DUO_CUDA_TRY(cudaGetLastError());
}

template <int D, int kSched>
void dispatch_mode(const PrefillArgs& a, cudaStream_t stream) {
  switch (a.cache.mode) {
    case HeadMode::AllRetrieval: return launch<D, 0, kSched>(a, stream);
    case HeadMode::AllStreaming: return launch<D, 1, kSched>(a, stream);
    case HeadMode::Mixed: return launch<D, 2, kSched>(a, stream);
  }
}

template <int D>
void dispatch_sched(const PrefillArgs& a, PrefillKernel k, cudaStream_t stream) {
  switch (k) {
    case PrefillKernel::WgmmaSerial: return dispatch_mode<D, kSerial>(a, stream);
    case PrefillKernel::WgmmaPingPong: return dispatch_mode<D, kPingPong>(a, stream);
    default: return dispatch_mode<D, kOverlap>(a, stream);
  }
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// Compute capability 9.0 of the current device, cached per device (0 unknown, 1 yes, 2 no).
bool device_is_sm90() {
  static std::atomic<int> known[64];
  int dev = 0;
  DUO_CUDA_TRY(cudaGetDevice(&dev));
  if (dev < 0 || dev >= 64) return false;
  int v = known[dev].load(std::memory_order_relaxed);
  if (v == 0) {
    int major = 0, minor = 0;
    DUO_CUDA_TRY(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    DUO_CUDA_TRY(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
    v = major == 9 && minor == 0 ? 1 : 2;
    known[dev].store(v, std::memory_order_relaxed);
  }
  return v == 1;
}

}  // namespace

bool prefill_sm90_built() {
#ifdef DUO_CUDA_SM90A
  return true;
#else
  return false;
#endif
}

const char* prefill_sm90_unsupported(const PrefillArgs& a) {
  if (!prefill_sm90_built()) return "the library was built without sm_90a code (CMAKE_CUDA_ARCHITECTURES lacks 90a)";
  if (!device_is_sm90()) return "the device is not compute capability 9.0 (Hopper)";
  if (a.head_dim != 64 && a.head_dim != 128) return "head_dim must be 64 or 128";
  if (!aligned16(a.q) || !aligned16(a.k) || !aligned16(a.v) || !aligned16(a.out) || a.q_stride % 8 != 0 ||
      a.kv_stride % 8 != 0 || a.o_stride % 8 != 0)
    return "q/k/v/out rows must be 16-byte aligned (pointers and token strides)";
  const LayerKv& c = a.cache;
  if (a.pos0 > 0 && c.mode != HeadMode::AllStreaming && (!aligned16(c.k_pages) || !aligned16(c.v_pages)))
    return "cache pages must be 16-byte aligned";
  if (a.pos0 > 0 && c.mode != HeadMode::AllRetrieval && (!aligned16(c.k_ring) || !aligned16(c.v_ring)))
    return "sink + ring buffers must be 16-byte aligned";
  return nullptr;
}

void prefill_sm90(const PrefillArgs& a, PrefillKernel kernel, cudaStream_t stream) {
  if (const char* why = prefill_sm90_unsupported(a))
    fail_arg(std::string("prefill_attention (wgmma): ") + why);
  if (a.head_dim == 128) return dispatch_sched<128>(a, kernel, stream);
  return dispatch_sched<64>(a, kernel, stream);
}

}  // namespace duo::cuda::detail
