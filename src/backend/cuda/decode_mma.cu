// Decode attention on the tensor cores, one kernel skeleton for every KV type (the template
// parameter BITS: 16 bf16 pages, 8 / 4 quantized q8 / q4 pages, kv/kv_quant.h): the split-KV
// structure of decode_split.cuh (one CTA a retrieval head and split, one a streaming head, all
// G <= 8 query heads of the GQA group in the CTA, the same partials and merge kernel).
//
// Why tensor cores: the CUDA-core kernel this one replaced did a key's arithmetic per lane (dot
// products, shuffles, value FMAs); q4 reads a quarter of bf16's bytes a key for the same
// arithmetic and ran out of issue slots at a third of the memory bandwidth. Here each warp
// computes, for 16 keys at a time,
//   S^T = K Q^T   (mma m16n8k16: rows = 16 keys, columns = 8 query heads, k = 16 channels)
//   O^T += V^T P^T (rows = 16 channels, columns = 8 query heads, k = 16 keys)
// so a key costs a few mma issues instead of ~2,000 lane operations. Heads are the mma's N = 8
// (the GQA group, at most 8; unused columns hold zero queries).
//
// How rows are read depends on their format:
//  - quantized pages (and the bf16 sink / residual / ring rows of a quantized cache) go straight
//    from memory to registers (Rows below, attend_chunk): a q4 16-key block is small, so a warp
//    keeps several in flight in registers;
//  - bf16 caches (pages and rings) go through shared memory (Tile, attend_tile): a 16-key block
//    of bf16 K and V is 2 x 16 x 2D bytes (8 KB at D = 128), as large as four q4 blocks, and the
//    CUDA-core kernel needed 8 such loads in flight a thread to near the copy bandwidth; with
//    registers that would cost 64 registers a block. Each warp instead streams its blocks with
//    cp.async into a ring of kStages stages (16 KB a warp), so the next blocks' bytes are in
//    flight while it computes on one, and reads fragments with ldmatrix.
//
// Quantization is folded in, not applied to the codes: codes become f16 (keys) or bf16 (values)
// integers exactly (the 0x6400 | code and 0x4300 | code tricks; q8 values through fp32) and
//  - keys (per-channel scale s_c and min m_c over a 64-key group): score = sum_c (q_c s_c) code_c
//    + sum_c q_c m_c: the query is scaled per channel once a group (the mma's B operand) and the
//    bias is one number a head;
//  - values (per-key scale and min of each 64-channel group cg): o_c = sum_k (p_k s_k,cg) code_kc
//    + sum_k p_k m_k,cg: the probabilities are scaled per key (the B operand, one version a
//    channel group) and the min term is summed in fp32 beside the mma and added at the end.
// bf16 rows of a quantized cache (a retrieval head's sink and residual, a streaming head's
// sink + ring) run the same register loop with bf16 mma, the unscaled query and no params.
//
// Register layouts of the register path (lane = 4 g + t; the mma fragments fix which lane holds
// what, the channel order inside a lane's share is free as long as the query uses the same order):
//  - scores: lane (g, t) loads keys g and g + 8 of each 16-key block, the channels
//    [t D/4, (t + 1) D/4) of each (kchan: which of them each k-step takes); it gets the scores of
//    those keys for heads 2t and 2t + 1;
//  - the probabilities go from that (key x head) layout to the B operand's (head x key) layout
//    by movmatrix (an 8x8 transpose in registers);
//  - values: lane (g, t) loads, for keys 2t, 2t+1, 2t+8, 2t+9 of the block, the 8 channels
//    [64 cg + 8 g, + 8) of each channel group (vchan: which of them each m-block takes); it
//    accumulates those channels for heads 2t and 2t + 1.
// The shared-memory path uses the plain PTX fragment layouts (ldmatrix of keys x channels for
// the scores, ldmatrix.trans for V^T; accumulator x holds channels 16 x + g and 16 x + g + 8).
// Each warp keeps its own online-softmax state for its 64-key groups (warp w: groups w, w + 4,
// ... of the CTA's keys); the four are merged at the end (decode_split.cuh).
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>

#include "backend/cuda/attention.cuh"
#include "backend/cuda/common.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/decode_split.cuh"
#include "kv/kv_quant.h"

namespace duo::cuda::detail {
namespace {

constexpr int kG64 = kvq::kGroup;
constexpr int kHeads = 8;  // the mma's N: query heads of a GQA group, at most 8

// Two f16 integers 1024 + a, 1024 + b (bits 0x6400 | code) made a, b.
__device__ __forceinline__ uint32_t minus_1024(uint32_t u) {
  __half2 h = *reinterpret_cast<__half2*>(&u);
  h = __hsub2(h, __halves2half2(__ushort_as_half(0x6400), __ushort_as_half(0x6400)));
  return *reinterpret_cast<uint32_t*>(&h);
}
// Two bf16 integers 128 + a, 128 + b (bits 0x4300 | code, code < 128) made a, b.
__device__ __forceinline__ uint32_t minus_128(uint32_t u) {
  __nv_bfloat162 h = *reinterpret_cast<__nv_bfloat162*>(&u);
  h = __hsub2(h, __floats2bfloat162_rn(128.0f, 128.0f));
  return *reinterpret_cast<uint32_t*>(&h);
}
// Byte j of w as an exact float: 2^23 + byte built from bits, minus 2^23.
__device__ __forceinline__ float byte_as_float(uint32_t w, int j) {
  return __uint_as_float(__byte_perm(w, 0x4B000000u, 0x7540 | j)) - 8388608.0f;
}
__device__ __forceinline__ uint32_t pack_f16(float lo, float hi) {
  __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// N consecutive 32-bit words at p (16-, 8- or 4-byte aligned as N allows), streaming loads.
template <int N>
__device__ __forceinline__ void load_words(const uint8_t* p, uint32_t (&w)[N]) {
  if constexpr (N % 4 == 0) {
#pragma unroll
    for (int i = 0; i < N / 4; ++i) {
      const uint4 u = __ldcs(reinterpret_cast<const uint4*>(p) + i);
      w[4 * i] = u.x, w[4 * i + 1] = u.y, w[4 * i + 2] = u.z, w[4 * i + 3] = u.w;
    }
  } else if constexpr (N == 2) {
    const uint2 u = __ldcs(reinterpret_cast<const uint2*>(p));
    w[0] = u.x, w[1] = u.y;
  } else {
    static_assert(N == 1);
    w[0] = __ldcs(reinterpret_cast<const unsigned*>(p));
  }
}
template <int N>
__device__ __forceinline__ void zero_words(uint32_t (&w)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) w[i] = 0u;
}

// How rows of one kind are read and turned into mma fragments: BITS 4 / 8 (quantized codes) or
// 16 (bf16 rows). Scores of codes run in f16 (the query scaled per channel stays within f16's
// precision), products with values always in bf16: the probabilities are scaled by the values'
// per-key scale, which can be small enough that p * scale would fall below f16's normal range
// (the tensor cores flush what falls there), where bf16 keeps fp32's range.
template <int BITS, int D>
struct Rows {
  static constexpr bool kQuant = BITS != 16;
  static constexpr int kRowBytes = D * BITS / 8;
  static constexpr int kLaneCh = D / 4;                // K channels a lane reads ([t kLaneCh, + kLaneCh))
  static constexpr int kKWords = kLaneCh * BITS / 32;  // their words
  static constexpr int kVWords = 8 * BITS / 32;        // words of a lane's 8 V channels
  static constexpr int kSteps = D / 16;                // score k-steps
  // 16-key blocks whose loads are in flight together (about 8 KB a warp for every format).
  static constexpr int kChunk = BITS == 4 ? 4 : BITS == 8 ? 2 : 1;

  // Channel (within the lane's share) of element e of k-step kk: e = 0, 1 the low and high half
  // of the first fragment register (k rows 2t, 2t + 1), e = 2, 3 of the second (2t + 8, 2t + 9).
  static __device__ __forceinline__ constexpr int kchan(int kk, int e) {
    if constexpr (BITS == 4) {  // word kk / 2, nibbles s, s + 4 and s + 1, s + 5 (s = 0 or 2)
      const int base = 8 * (kk / 2) + 2 * (kk % 2);
      return base + (e == 0 ? 0 : e == 1 ? 4 : e == 2 ? 1 : 5);
    } else if constexpr (BITS == 8) {  // word kk, bytes 0, 2 and 1, 3
      return 4 * kk + (e == 0 ? 0 : e == 1 ? 2 : e == 2 ? 1 : 3);
    } else {  // words 2 kk and 2 kk + 1
      return 4 * kk + e;
    }
  }
  // The fragment register of k-step kk from the lane's K words: second = false elements 0, 1.
  static __device__ __forceinline__ uint32_t kpair(const uint32_t (&w)[kKWords], int kk, bool second) {
    if constexpr (BITS == 4) {
      const int s = 2 * (kk % 2) + (second ? 1 : 0);
      return minus_1024(((w[kk / 2] >> (4 * s)) & 0x000F000Fu) | 0x64006400u);
    } else if constexpr (BITS == 8) {
      return minus_1024(((w[kk] >> (second ? 8 : 0)) & 0x00FF00FFu) | 0x64006400u);
    } else {
      return w[2 * kk + (second ? 1 : 0)];
    }
  }
  // Channel (within the lane's 8 of a channel group) of row r (0: fragment row g, 1: g + 8) of
  // value m-block j (0..3). The same for every format: one warp's accumulators take blocks of
  // codes and of bf16 rows alike.
  static __device__ __forceinline__ constexpr int vchan(int j, int r) { return 2 * j + r; }
  // The (bf16) fragment register of m-block j, row r, from the V words of two keys (x: the low half).
  static __device__ __forceinline__ uint32_t vpair(const uint32_t (&x)[kVWords], const uint32_t (&y)[kVWords], int j,
                                                   int r) {
    if constexpr (BITS == 4) {  // byte j of each word: its low nibble is channel 2j, its high 2j + 1
      const uint32_t z = __byte_perm(x[0], y[0], j | (4 + j) << 8);
      return minus_128(((z >> (4 * r)) & 0x000F000Fu) | 0x43004300u);
    } else if constexpr (BITS == 8) {  // byte 2j + r (codes to 255 need bf16's 8 bits: via fp32)
      const int c = 2 * j + r;
      return pack_bf16(byte_as_float(x[c / 4], c % 4), byte_as_float(y[c / 4], c % 4));
    } else {  // half r of word j
      return __byte_perm(x[j], y[j], r ? 0x7632 : 0x5410);
    }
  }
  // Scores: f16 for codes, bf16 for bf16 rows.
  static __device__ __forceinline__ void mma_k(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    if constexpr (kQuant)
      mma_f16(d, a, b0, b1);
    else
      mma_bf16(d, a, b0, b1);
  }
  static __device__ __forceinline__ uint32_t pack_k(float lo, float hi) {
    if constexpr (kQuant) return pack_f16(lo, hi);
    return pack_bf16(lo, hi);
  }
};

// A warp's online-softmax state for heads 2t and 2t + 1 (h2 = 0, 1).
template <int D>
struct State {
  static constexpr int CG = D / kG64;
  float m[2];           // running max (every lane of the head agrees)
  float l[2];           // this lane's share of the sum
  float o[D / 16][4];   // value accumulators: m-block cg * 4 + j, fragment c0..c3
  float om[2][CG];      // this lane's share of sum p * vmin (quantized values) a channel group
};

// The query heads' B operand for the scores of one block of rows: per k-step, the lane's two
// registers (head g, its channels in Rows::kchan order), scaled per channel by the keys' scale
// (quantized group: kparams = the group's params words of the lane's channels) or not (bf16).
// qb: the bias of heads 2t, 2t + 1 (sum_c q_c min_c; 0 for bf16 rows).
template <int BITS, int D>
__device__ __forceinline__ void query_operand(const float (&sm_q)[kHeads][D], const uint32_t* kparams, int g, int t,
                                              uint32_t (&bq)[D / 16][2], float (&qb)[2]) {
  using R = Rows<BITS, D>;
  float bias = 0.0f;
#pragma unroll
  for (int kk = 0; kk < R::kSteps; ++kk) {
    float qs[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int c = R::kchan(kk, e);
      const float q = sm_q[g][t * R::kLaneCh + c];
      if constexpr (R::kQuant) {
        const uint32_t w = kparams[c];
        qs[e] = q * __half2float(__ushort_as_half((unsigned short)(w & 0xffffu)));
        bias = fmaf(q, __half2float(__ushort_as_half((unsigned short)(w >> 16))), bias);
      } else {
        qs[e] = q;
      }
    }
    bq[kk][0] = R::pack_k(qs[0], qs[1]);
    bq[kk][1] = R::pack_k(qs[2], qs[3]);
  }
  if constexpr (R::kQuant) {
    bias += __shfl_xor_sync(0xffffffffu, bias, 1);
    bias += __shfl_xor_sync(0xffffffffu, bias, 2);  // head g's bias in its four lanes
    qb[0] = __shfl_sync(0xffffffffu, bias, 8 * t);  // head 2t lives in lanes 8t .. 8t + 3
    qb[1] = __shfl_sync(0xffffffffu, bias, 8 * t + 4);
  } else {
    qb[0] = qb[1] = 0.0f;
  }
}

// The online-softmax step of NCH 16-key blocks of scores s (the mma accumulator layout: c0 key g
// head 2t, c1 key g head 2t + 1, c2 key g + 8 head 2t, c3 key g + 8 head 2t + 1; log2 units,
// -inf past the end): the running max of heads 2t and 2t + 1 over the warp, the state rescaled
// to it (kMin: with the quantized values' min term: a quantized kernel's state, whatever the
// rows), s made the probabilities.
template <int NCH, int D, bool kMin>
__device__ __forceinline__ void softmax_step(float (&s)[NCH][4], State<D>& st) {
#pragma unroll
  for (int h2 = 0; h2 < 2; ++h2) {
    float mx = st.m[h2];
#pragma unroll
    for (int mb = 0; mb < NCH; ++mb) mx = fmaxf(mx, fmaxf(s[mb][h2], s[mb][h2 + 2]));
#pragma unroll
    for (int off = 4; off < 32; off *= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
    // Nothing seen yet (every key so far past the end): reference 0 makes alpha and p exactly 0.
    const float ref = mx == -INFINITY ? 0.0f : mx;
    const float alpha = exp2f(st.m[h2] - ref);
    st.m[h2] = mx;
    st.l[h2] *= alpha;
    if constexpr (kMin) {
#pragma unroll
      for (int cg = 0; cg < D / kG64; ++cg) st.om[h2][cg] *= alpha;
    }
#pragma unroll
    for (int x = 0; x < D / 16; ++x) st.o[x][h2] *= alpha, st.o[x][h2 + 2] *= alpha;
#pragma unroll
    for (int mb = 0; mb < NCH; ++mb) {
      s[mb][h2] = exp2f(s[mb][h2] - ref);
      s[mb][h2 + 2] = exp2f(s[mb][h2 + 2] - ref);
      st.l[h2] += s[mb][h2] + s[mb][h2 + 2];
    }
  }
}

// kChunk 16-key blocks of rows: keys at k (row stride Rows::kRowBytes), values at v, value params
// at vp (quantized: [key][D / 64] words), n_valid of the rows exist (bf16 rows past it are not read).
// sl2 = log2(e) / sqrt(D) scales the scores after the mma, in fp32 (the query operand is q
// itself, exact in bf16, or q times the key scales).
template <int BITS, int D>
__device__ __forceinline__ void attend_chunk(const uint8_t* k, const uint8_t* v, const uint8_t* vp, int n_valid,
                                             const uint32_t (&bq)[D / 16][2], const float (&qb)[2], float sl2,
                                             State<D>& st, int g, int t) {
  using R = Rows<BITS, D>;
  constexpr int NCH = R::kChunk, CG = D / kG64, RB = R::kRowBytes;
  uint32_t kw[NCH][2][R::kKWords];
  uint32_t vw[NCH][4][CG][R::kVWords];
  [[maybe_unused]] uint32_t vpw[NCH][2][CG];
#pragma unroll
  for (int mb = 0; mb < NCH; ++mb) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = 16 * mb + g + 8 * r;
      if (R::kQuant || row < n_valid)
        load_words(k + (int64_t)row * RB + t * R::kLaneCh * BITS / 8, kw[mb][r]);
      else
        zero_words(kw[mb][r]);
      if constexpr (R::kQuant) {
        if constexpr (CG == 2) {
          const uint2 u = __ldcs(reinterpret_cast<const uint2*>(vp + (int64_t)row * CG * 4));
          vpw[mb][r][0] = u.x, vpw[mb][r][1] = u.y;
        } else {
          vpw[mb][r][0] = __ldcs(reinterpret_cast<const unsigned*>(vp + (int64_t)row * 4));
        }
      }
    }
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int row = 16 * mb + 2 * t + (r & 1) + 8 * (r >> 1);
#pragma unroll
      for (int cg = 0; cg < CG; ++cg) {
        if (R::kQuant || row < n_valid)
          load_words(v + (int64_t)row * RB + (kG64 * cg + 8 * g) * BITS / 8, vw[mb][r][cg]);
        else
          zero_words(vw[mb][r][cg]);
      }
    }
  }

  float s[NCH][4];  // scores: c0 (key g, head 2t), c1 (g, 2t + 1), c2 (g + 8, 2t), c3 (g + 8, 2t + 1)
#pragma unroll
  for (int mb = 0; mb < NCH; ++mb) {
#pragma unroll
    for (int e = 0; e < 4; ++e) s[mb][e] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < R::kSteps; ++kk) {
      const uint32_t a[4] = {R::kpair(kw[mb][0], kk, false), R::kpair(kw[mb][1], kk, false),
                             R::kpair(kw[mb][0], kk, true), R::kpair(kw[mb][1], kk, true)};
      R::mma_k(s[mb], a, bq[kk][0], bq[kk][1]);
    }
    const bool ok0 = 16 * mb + g < n_valid, ok1 = 16 * mb + g + 8 < n_valid;
    s[mb][0] = ok0 ? (s[mb][0] + qb[0]) * sl2 : -INFINITY;
    s[mb][1] = ok0 ? (s[mb][1] + qb[1]) * sl2 : -INFINITY;
    s[mb][2] = ok1 ? (s[mb][2] + qb[0]) * sl2 : -INFINITY;
    s[mb][3] = ok1 ? (s[mb][3] + qb[1]) * sl2 : -INFINITY;
  }

  softmax_step<NCH, D, true>(s, st);  // (bf16 rows too: the warp's state may hold quantized groups' min terms)

#pragma unroll
  for (int mb = 0; mb < NCH; ++mb) {
#pragma unroll
    for (int cg = 0; cg < CG; ++cg) {
      float sc0 = 1.0f, sc1 = 1.0f;  // value scales of keys g and g + 8
      if constexpr (R::kQuant) {
        const uint32_t w0 = vpw[mb][0][cg], w1 = vpw[mb][1][cg];
        sc0 = __half2float(__ushort_as_half((unsigned short)(w0 & 0xffffu)));
        sc1 = __half2float(__ushort_as_half((unsigned short)(w1 & 0xffffu)));
        const float mn0 = __half2float(__ushort_as_half((unsigned short)(w0 >> 16)));
        const float mn1 = __half2float(__ushort_as_half((unsigned short)(w1 >> 16)));
        st.om[0][cg] = fmaf(s[mb][0], mn0, fmaf(s[mb][2], mn1, st.om[0][cg]));
        st.om[1][cg] = fmaf(s[mb][1], mn0, fmaf(s[mb][3], mn1, st.om[1][cg]));
      }
      const uint32_t b0 = movmatrix_trans(pack_bf16(s[mb][0] * sc0, s[mb][1] * sc0));
      const uint32_t b1 = movmatrix_trans(pack_bf16(s[mb][2] * sc1, s[mb][3] * sc1));
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const uint32_t a[4] = {R::vpair(vw[mb][0][cg], vw[mb][1][cg], j, 0), R::vpair(vw[mb][0][cg], vw[mb][1][cg], j, 1),
                               R::vpair(vw[mb][2][cg], vw[mb][3][cg], j, 0), R::vpair(vw[mb][2][cg], vw[mb][3][cg], j, 1)};
        mma_bf16(st.o[cg * 4 + j], a, b0, b1);
      }
    }
  }
}

// bf16 rows through shared memory (the bf16 kernel: pages and rings). A stage holds one 16-key
// block: K rows, then V rows, 2D bytes each; chunk c (16 bytes) of row r sits at chunk c ^ (r % 8)
// of its row, so the 8 rows an ldmatrix reads (one chunk each) hit 8 different bank groups
// (rows are 128 or 256 bytes: unswizzled, all 8 would share one).
template <int D>
struct Tile {
  static constexpr int kRowBytes = 2 * D;
  static constexpr int kChunks = D / 8;               // 16-byte chunks a row
  static constexpr int kBytes = 16 * kRowBytes;       // a block's K (or V)
  static constexpr int kStageBytes = 2 * kBytes;
  static constexpr int kStages = 16384 / kStageBytes;  // 2 (D 128) or 4 (D 64): 16 KB a warp
  static constexpr int kCopies = 16 * kChunks / 32;   // 16-byte copies a lane, each of K and V
  static constexpr int kWarpBytes = kStages * kStageBytes;
  static_assert(kStages >= 2 && (kStages & (kStages - 1)) == 0, "a ring of 2^n stages");
  static __device__ __forceinline__ int at(int r, int c) { return r * kRowBytes + ((c ^ (r & 7)) << 4); }
  // Channel of accumulator x, fragment row r (0: c0 c1, 1: c2 c3), for lane group g.
  static __device__ __forceinline__ constexpr int ochan(int x, int r, int g) { return 16 * x + g + 8 * r; }
};

// Starts the copy of one 16-key block into a stage: rows k / v (stride D), n_valid of them
// exist; the others are zero-filled, not read (a zero V row times p = 0 adds nothing, where
// whatever a page holds past the end might be NaN).
template <int D>
__device__ __forceinline__ void copy_block(uint8_t* stage, const bf16* k, const bf16* v, int n_valid, int lane) {
  using T = Tile<D>;
#pragma unroll
  for (int i = 0; i < T::kCopies; ++i) {
    const int idx = 32 * i + lane, r = idx / T::kChunks, c = idx % T::kChunks;
    const bool ok = r < n_valid;
    const int64_t off = (int64_t)(ok ? r : 0) * D + 8 * c;  // (a valid address either way)
    cp_async16(stage + T::at(r, c), k + off, ok ? 16 : 0);
    cp_async16(stage + T::kBytes + T::at(r, c), v + off, ok ? 16 : 0);
  }
}

// One 16-key block from a stage (n_valid keys exist): scores from ldmatrix fragments of K
// (matrix m = lane / 8: keys 8 (m & 1) + 0..7, channel chunk 2 kk + m / 2: a0..a3 of the A
// operand), the softmax step, then O^T += V^T P^T with V^T from ldmatrix.trans (matrix m: keys
// 8 (m / 2) + 0..7, chunk 2 x + (m & 1)). bq: the query's B operand (channels 16 kk + 2t, + 1
// and + 8, + 9 of head g).
template <int D>
__device__ __forceinline__ void attend_tile(const uint8_t* stage, int n_valid, const uint32_t (&bq)[D / 16][2],
                                            float sl2, State<D>& st, int lane) {
  using T = Tile<D>;
  const int g = lane / 4, m = lane / 8, mr = lane % 8;
  float s[1][4] = {{0.0f, 0.0f, 0.0f, 0.0f}};
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    uint32_t a[4];
    ldmatrix_x4(a, stage + T::at(mr + 8 * (m & 1), 2 * kk + (m >> 1)));
    mma_bf16(s[0], a, bq[kk][0], bq[kk][1]);
  }
  const bool ok0 = g < n_valid, ok1 = g + 8 < n_valid;
  s[0][0] = ok0 ? s[0][0] * sl2 : -INFINITY;
  s[0][1] = ok0 ? s[0][1] * sl2 : -INFINITY;
  s[0][2] = ok1 ? s[0][2] * sl2 : -INFINITY;
  s[0][3] = ok1 ? s[0][3] * sl2 : -INFINITY;
  softmax_step<1, D, false>(s, st);
  const uint32_t b0 = movmatrix_trans(pack_bf16(s[0][0], s[0][1]));
  const uint32_t b1 = movmatrix_trans(pack_bf16(s[0][2], s[0][3]));
#pragma unroll
  for (int x = 0; x < D / 16; ++x) {
    uint32_t a[4];
    ldmatrix_x4_trans(a, stage + T::kBytes + T::at(mr + 8 * (m >> 1), 2 * x + (m & 1)));
    mma_bf16(st.o[x], a, b0, b1);
  }
}

// A warp's share of a bf16 CTA's keys [w.begin, w.end): its 16-key blocks b = 0, 1, ... at
// begin + 64 warp + 256 (b / 4) + 16 (b % 4) (the 64-key groups of the quantized kernel, so a
// group lies in one page), streamed through the warp's kStages stages: block b + kStages is
// copied while block b is computed. The page of the warp's next group is fetched a group
// ahead, so a copy never waits for the page table.
template <int D>
__device__ __forceinline__ void attend_bf16(const LayerKv& c, const CtaWork& w, uint8_t* stages,
                                            const uint32_t (&bq)[D / 16][2], float sl2, State<D>& st, int warp,
                                            int lane) {
  using T = Tile<D>;
  constexpr int S = T::kStages, kWarpStride = kDecWarps * kG64;
  static_assert(kPageTokens % kWarpStride == 0, "a warp's group lies in one page");
  const int begin = w.begin + kG64 * warp, end = w.end;
  const auto key_of = [&](int b) { return begin + kWarpStride * (b / 4) + 16 * (b % 4); };
  const bf16 *kbase, *vbase;
  const int32_t* pt = nullptr;
  if (w.streaming) {
    const int64_t at = (int64_t)w.kvh * c.window().rows() * D;
    kbase = c.k_ring + at, vbase = c.v_ring + at;
  } else {
    kbase = c.k_pages, vbase = c.v_pages;
    pt = c.page_table + (int64_t)w.kvh * c.max_pages;
  }
  int64_t page = 0, next_page = 0;
  if (!w.streaming && begin < end) next_page = pt[begin / kPageTokens];
  // Copies block b (in order b = 0, 1, ...: the page of a group is taken at its first block).
  const auto issue = [&](int b) {
    const int key = key_of(b);
    if (key >= end) return;
    int64_t row = key;
    if (!w.streaming) {
      if (b % 4 == 0) {
        page = next_page;
        next_page = key + kWarpStride < end ? pt[(key + kWarpStride) / kPageTokens] : 0;
      }
      row = page * kPageTokens + key % kPageTokens;
    }
    copy_block<D>(stages + (b % S) * T::kStageBytes, kbase + row * D, vbase + row * D, end - key, lane);
  };
#pragma unroll
  for (int b = 0; b < S; ++b) {
    issue(b);
    cp_async_commit();  // (empty groups too: the wait below counts groups)
  }
#pragma unroll 1
  for (int b = 0; key_of(b) < end; ++b) {
    cp_async_wait<S - 1>();  // block b's group done (S groups committed after it, less one)
    __syncwarp();            // ... and every lane's copies visible to the warp
    attend_tile<D>(stages + (b % S) * T::kStageBytes, end - key_of(b), bq, sl2, st, lane);
    __syncwarp();  // every lane done with the stage before it is refilled
    issue(b + S);
    cp_async_commit();
  }
  cp_async_wait<0>();
}

// The quantized kernel's keys of one warp: complete quantized groups from the pages, the rest
// (sink, residual; a streaming head's sink + ring) as bf16 rows, all through registers.
template <int D, int BITS>
__device__ __forceinline__ void attend_quant(const DecodeArgs& a, const CtaWork& w, int n_past,
                                             const float (&sm_q)[kHeads][D], float sl2, State<D>& st, int warp,
                                             int g, int t) {
  using RQ = Rows<BITS, D>;
  constexpr int CG = D / kG64;
  const LayerKv& c = a.cache;
  const bool streaming = w.streaming;
  const int kvh = w.kvh, begin = w.begin, end = w.end;
  const kvq::QuantLayout L{D, BITS};
  const int64_t slot = streaming ? 0 : c.slot_of[kvh];
  const int32_t* pt = c.page_table + (int64_t)kvh * c.max_pages;
  for (int k0 = begin + warp * kG64; k0 < end; k0 += kDecWarps * kG64) {
    uint32_t bq[D / 16][2];
    float qb[2];
    if (!streaming && k0 >= c.sink16 && k0 + kG64 <= n_past) {  // a complete quantized group
      const int64_t page = pt[k0 / kPageTokens];
      const int gi = k0 % kPageTokens / kG64;
      const uint8_t* kp = c.kq_pages + page * c.page_bytes;
      const uint8_t* vp = c.vq_pages + page * c.page_bytes;
      uint32_t kpar[RQ::kLaneCh];
      load_words(kp + L.k_params(gi, t * RQ::kLaneCh), kpar);
      query_operand<BITS, D>(sm_q, kpar, g, t, bq, qb);
      const uint8_t* kc = kp + L.codes(gi * kG64);
      const uint8_t* vc = vp + L.codes(gi * kG64);
      const uint8_t* vpar = vp + L.v_params(gi * kG64, 0);
#pragma unroll 1
      for (int i = 0; i < kG64; i += 16 * RQ::kChunk)
        attend_chunk<BITS, D>(kc + i * RQ::kRowBytes, vc + i * RQ::kRowBytes, vpar + i * CG * 4, 16 * RQ::kChunk, bq,
                              qb, sl2, st, g, t);
    } else {  // bf16 rows
      const bf16 *kr, *vr;
      if (streaming) {
        const int64_t at = ((int64_t)kvh * c.window().rows() + k0) * D;
        kr = c.k_ring + at, vr = c.v_ring + at;
      } else if (k0 < c.sink16) {
        const int64_t at = (slot * c.sink16 + k0) * D;
        kr = c.k_sink + at, vr = c.v_sink + at;
      } else {  // the residual: positions [k0, n_past) in rows 0 .. (k0 is a multiple of 64)
        const int64_t at = slot * kG64 * D;
        kr = c.k_resid + at, vr = c.v_resid + at;
      }
      query_operand<16, D>(sm_q, nullptr, g, t, bq, qb);
      const int n = min(k0 + kG64, end) - k0;
#pragma unroll 1
      for (int i = 0; i < n; i += 16)
        attend_chunk<16, D>(reinterpret_cast<const uint8_t*>(kr + (int64_t)i * D),
                            reinterpret_cast<const uint8_t*>(vr + (int64_t)i * D), nullptr, n - i, bq, qb, sl2, st, g, t);
    }
  }
}

// Dynamic shared memory of the bf16 kernel: the warps' stages, reused for the end merge's states.
template <int D, int G>
constexpr int bf16_smem_bytes() {
  constexpr int stages = kDecWarps * Tile<D>::kWarpBytes, states = (int)sizeof(CtaStates<D, G, kDecWarps>);
  return stages > states ? stages : states;
}

// The kernel skeleton: BITS 16 (bf16 caches) or 8 / 4 (quantized retrieval heads).
template <int D, int G, int BITS>
__global__ void __launch_bounds__(kDecThreads, 3)
    decode_mma_kernel(const __grid_constant__ DecodeParams one, const DecodeParams* __restrict__ items) {
  static_assert(G <= kHeads, "a GQA group is the mma's 8 columns at most");
  static_assert(kPageTokens % kG64 == 0, "groups tile the pages");
  constexpr int CG = D / kG64;
  constexpr bool kQuant = BITS != 16;
  extern __shared__ __align__(128) uint8_t dyn_smem[];  // (the bf16 kernel's only)
  const DecodeParams& p = params_of(one, items);
  if ((int)blockIdx.x >= decode_ctas(p)) return;  // (a batch item with fewer CTAs than the grid)
  const DecodeArgs& a = p.a;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int n_past = decode_n_past(a);
  const CtaWork w = cta_work<G>(p, n_past);
  if (!cta_has_keys<G>(p, w)) return;
  const float sl2 = 1.4426950408889634f / sqrtf((float)D);

  State<D> st;
#pragma unroll
  for (int h2 = 0; h2 < 2; ++h2) {
    st.m[h2] = -INFINITY, st.l[h2] = 0.0f;
#pragma unroll
    for (int cg = 0; cg < CG; ++cg) st.om[h2][cg] = 0.0f;
  }
#pragma unroll
  for (int x = 0; x < D / 16; ++x)
#pragma unroll
    for (int e = 0; e < 4; ++e) st.o[x][e] = 0.0f;

  CtaStates<D, G, kDecWarps>* sp;
  if constexpr (!kQuant) {
    // The query's B operand, once: head g's bf16 words (channels 16 kk + 2t, + 1 and + 8, + 9).
    uint32_t bq[D / 16][2];
    const uint32_t* qw = reinterpret_cast<const uint32_t*>(a.q + (int64_t)(w.h0 + min(g, G - 1)) * D);
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      bq[kk][0] = g < G ? qw[8 * kk + t] : 0u;
      bq[kk][1] = g < G ? qw[8 * kk + t + 4] : 0u;
    }
    attend_bf16<D>(a.cache, w, dyn_smem + warp * Tile<D>::kWarpBytes, bq, sl2, st, warp, lane);
    __syncthreads();  // every warp done with its stages: the states reuse them
    sp = reinterpret_cast<CtaStates<D, G, kDecWarps>*>(dyn_smem);
  } else {
    __shared__ float sm_q[kHeads][D];  // the G query heads; rows past G zero
    for (int idx = threadIdx.x; idx < kHeads * D; idx += kDecThreads)
      sm_q[idx / D][idx % D] = idx < G * D ? __bfloat162float(a.q[(int64_t)w.h0 * D + idx]) : 0.0f;
    __syncthreads();
    attend_quant<D, BITS>(a, w, n_past, sm_q, sl2, st, warp, g, t);
    __shared__ CtaStates<D, G, kDecWarps> states;
    sp = &states;
  }

  // The warp's state: sums over its lanes of each head, the min term added, into shared memory.
  CtaStates<D, G, kDecWarps>& s = *sp;
#pragma unroll
  for (int h2 = 0; h2 < 2; ++h2) {
#pragma unroll
    for (int off = 4; off < 32; off *= 2) {
      st.l[h2] += __shfl_xor_sync(0xffffffffu, st.l[h2], off);
      if constexpr (kQuant) {
#pragma unroll
        for (int cg = 0; cg < CG; ++cg) st.om[h2][cg] += __shfl_xor_sync(0xffffffffu, st.om[h2][cg], off);
      }
    }
    const int h = 2 * t + h2;
    if (h < G) {
      if (g == 0) s.m[warp][h] = st.m[h2], s.l[warp][h] = st.l[h2];
#pragma unroll
      for (int x = 0; x < D / 16; ++x)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          if constexpr (kQuant)
            s.o[warp][h][kG64 * (x / 4) + 8 * g + Rows<BITS, D>::vchan(x % 4, r)] = st.o[x][h2 + 2 * r] + st.om[h2][x / 4];
          else
            s.o[warp][h][Tile<D>::ochan(x, r, g)] = st.o[x][h2 + 2 * r];
        }
    }
  }
  __syncthreads();
  write_merged<D, G, kDecWarps>(p, w, s);
}

template <int D, int G, int BITS>
constexpr int dyn_smem_bytes() {
  return BITS == 16 ? bf16_smem_bytes<D, G>() : 0;
}

// Once per kernel: the bf16 kernel's dynamic shared memory is above the 48 KB default, and the
// carveout asks for the most shared memory (3 CTAs of 64 KB an SM; the loads bypass L1).
template <int D, int G, int BITS>
void prepare() {
  static const bool done = [] {
    if constexpr (BITS == 16) {
      DUO_CUDA_TRY(cudaFuncSetAttribute(decode_mma_kernel<D, G, BITS>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        dyn_smem_bytes<D, G, BITS>()));
      DUO_CUDA_TRY(cudaFuncSetAttribute(decode_mma_kernel<D, G, BITS>,
                                        cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared));
    }
    return true;
  }();
  (void)done;
}

template <int D, int G, int BITS>
void launch(const DecodeParams& one, const DecodeLaunch& l, cudaStream_t stream) {
  prepare<D, G, BITS>();
  decode_mma_kernel<D, G, BITS>
      <<<dim3(l.ctas, l.n_items), kDecThreads, dyn_smem_bytes<D, G, BITS>(), stream>>>(one, l.items);
  DUO_CUDA_TRY(cudaGetLastError());
  launch_merge<D, G>(one, l, stream);
}

template <int D, int BITS>
void dispatch_group(const DecodeParams& p, const DecodeLaunch& l, cudaStream_t stream) {
  switch (p.a.n_heads / p.a.n_kv_heads) {
    case 1: return launch<D, 1, BITS>(p, l, stream);
    case 2: return launch<D, 2, BITS>(p, l, stream);
    case 3: return launch<D, 3, BITS>(p, l, stream);
    case 4: return launch<D, 4, BITS>(p, l, stream);
    case 5: return launch<D, 5, BITS>(p, l, stream);
    case 6: return launch<D, 6, BITS>(p, l, stream);
    case 7: return launch<D, 7, BITS>(p, l, stream);
    case 8: return launch<D, 8, BITS>(p, l, stream);
    default: fail_arg("decode_attention: at most 8 query heads a KV head");
  }
}

template <int D, int G, int BITS>
int occupancy() {
  static const int n = [] {
    prepare<D, G, BITS>();
    int v = 0;
    DUO_CUDA_TRY(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&v, decode_mma_kernel<D, G, BITS>, kDecThreads,
                                                               dyn_smem_bytes<D, G, BITS>()));
    return std::max(1, v);
  }();
  return n;
}

int kv_bits(KvType kv) { return kv == KvType::Q8 ? 8 : kv == KvType::Q4 ? 4 : 16; }

}  // namespace

void check_quant_view(const LayerKv& c) {
  if (!c.kq_pages || !c.vq_pages || !c.slot_of || c.page_bytes <= 0 || (c.sink16 > 0 && !c.k_sink) || !c.k_resid)
    fail_arg("decode_attention: the quantized cache view is incomplete");
}

void launch_decode_mma(const DecodeParams& p, const DecodeLaunch& l, KvType kv, cudaStream_t stream) {
  const int bits = kv_bits(kv);
  if (bits != 16 && !l.items) check_quant_view(p.a.cache);  // (a batch checks each item's view itself)
  if (p.a.head_dim == 128) {
    if (bits == 16) return dispatch_group<128, 16>(p, l, stream);
    return bits == 8 ? dispatch_group<128, 8>(p, l, stream) : dispatch_group<128, 4>(p, l, stream);
  }
  if (p.a.head_dim == 64) {
    if (bits == 16) return dispatch_group<64, 16>(p, l, stream);
    return bits == 8 ? dispatch_group<64, 8>(p, l, stream) : dispatch_group<64, 4>(p, l, stream);
  }
  fail_arg("decode_attention: head_dim must be 64 or 128");
}

int decode_mma_resident_ctas(int head_dim, KvType kv) {
  // The registers do not depend on the group (the mma computes 8 heads); the shared memory of
  // the end merge grows with it: read the largest group's residency off the device.
  const int bits = kv_bits(kv);
  if (head_dim == 128) return bits == 16 ? occupancy<128, 8, 16>() : bits == 8 ? occupancy<128, 8, 8>() : occupancy<128, 8, 4>();
  return bits == 16 ? occupancy<64, 8, 16>() : bits == 8 ? occupancy<64, 8, 8>() : occupancy<64, 8, 4>();
}

}  // namespace duo::cuda::detail
