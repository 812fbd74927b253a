// Decode attention over a quantized KV cache (q8 / q4 pages, kv/kv_quant.h) on the tensor cores:
// the split-KV structure of decode.cu (one CTA a retrieval head and split, one a streaming head,
// all G <= 8 query heads of the GQA group in the CTA, the same partials and merge kernel), reading
// the quantized pages directly: nothing is dequantized to memory, no shared-memory staging.
//
// Why tensor cores: q4 reads a quarter of bf16's bytes a key but the CUDA-core loop does the same
// arithmetic a key (dot products, shuffles, value FMAs), so it ran out of issue slots at a third
// of the memory bandwidth. Here each warp computes, for 16 keys at a time,
//   S^T = K Q^T   (mma m16n8k16: rows = 16 keys, columns = 8 query heads, k = 16 channels)
//   O^T += V^T P^T (rows = 16 channels, columns = 8 query heads, k = 16 keys)
// so a key costs a few mma issues instead of ~2,000 lane operations. Heads are the mma's N = 8
// (the GQA group, at most 8; unused columns hold zero queries).
//
// Quantization is folded in, not applied to the codes: codes become f16 (keys) or bf16 (values)
// integers exactly (the 0x6400 | code and 0x4300 | code tricks; q8 values through fp32) and
//  - keys (per-channel scale s_c and min m_c over a 64-key group): score = sum_c (q_c s_c) code_c
//    + sum_c q_c m_c: the query is scaled per channel once a group (the mma's B operand) and the
//    bias is one number a head;
//  - values (per-key scale and min of each 64-channel group cg): o_c = sum_k (p_k s_k,cg) code_kc
//    + sum_k p_k m_k,cg: the probabilities are scaled per key (the B operand, one version a
//    channel group) and the min term is summed in fp32 beside the mma and added at the end.
// bf16 rows (a retrieval head's sink and residual, a streaming head's sink + ring) run the same
// loop with bf16 mma, the unscaled query and no params.
//
// Register layouts (lane = 4 g + t; the mma fragments fix which lane holds what, the channel
// order inside a lane's share is free as long as the query uses the same order):
//  - scores: lane (g, t) loads keys g and g + 8 of each 16-key block, the channels
//    [t D/4, (t + 1) D/4) of each (kchan: which of them each k-step takes); it gets the scores of
//    those keys for heads 2t and 2t + 1;
//  - the probabilities go from that (key x head) layout to the B operand's (head x key) layout
//    by movmatrix (an 8x8 transpose in registers);
//  - values: lane (g, t) loads, for keys 2t, 2t+1, 2t+8, 2t+9 of the block, the 8 channels
//    [64 cg + 8 g, + 8) of each channel group (vchan: which of them each m-block takes); it
//    accumulates those channels for heads 2t and 2t + 1.
// Each warp keeps its own online-softmax state for its 64-key blocks (warp w: blocks w, w + 4,
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
#pragma unroll
    for (int cg = 0; cg < CG; ++cg) st.om[h2][cg] *= alpha;
#pragma unroll
    for (int x = 0; x < D / 16; ++x) st.o[x][h2] *= alpha, st.o[x][h2 + 2] *= alpha;
#pragma unroll
    for (int mb = 0; mb < NCH; ++mb) {
      s[mb][h2] = exp2f(s[mb][h2] - ref);
      s[mb][h2 + 2] = exp2f(s[mb][h2 + 2] - ref);
      st.l[h2] += s[mb][h2] + s[mb][h2 + 2];
    }
  }

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

template <int D, int G, int BITS>
__global__ void __launch_bounds__(kDecThreads, 3)
    decode_quant_kernel(const __grid_constant__ DecodeParams one, const DecodeParams* __restrict__ items) {
  static_assert(G <= kHeads, "a GQA group is the mma's 8 columns at most");
  static_assert(kPageTokens % kG64 == 0, "groups tile the pages");
  using RQ = Rows<BITS, D>;
  using RB = Rows<16, D>;
  constexpr int CG = D / kG64;
  const DecodeParams& p = params_of(one, items);
  if ((int)blockIdx.x >= decode_ctas(p)) return;  // (a batch item with fewer CTAs than the grid)
  const DecodeArgs& a = p.a;
  const LayerKv& c = a.cache;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int n_past = decode_n_past(a);
  const CtaWork w = cta_work<G>(p, n_past);
  if (!cta_has_keys<G>(p, w)) return;
  const bool streaming = w.streaming;
  const int kvh = w.kvh, begin = w.begin, end = w.end;

  __shared__ float sm_q[kHeads][D];  // the G query heads; rows past G zero
  const float sl2 = 1.4426950408889634f / sqrtf((float)D);
  for (int idx = threadIdx.x; idx < kHeads * D; idx += kDecThreads)
    sm_q[idx / D][idx % D] = idx < G * D ? __bfloat162float(a.q[(int64_t)w.h0 * D + idx]) : 0.0f;
  __syncthreads();

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

  // The warp's state: sums over its lanes of each head, the min term added, into shared memory.
  __shared__ CtaStates<D, G, kDecWarps> s;
#pragma unroll
  for (int h2 = 0; h2 < 2; ++h2) {
#pragma unroll
    for (int off = 4; off < 32; off *= 2) {
      st.l[h2] += __shfl_xor_sync(0xffffffffu, st.l[h2], off);
#pragma unroll
      for (int cg = 0; cg < CG; ++cg) st.om[h2][cg] += __shfl_xor_sync(0xffffffffu, st.om[h2][cg], off);
    }
    const int h = 2 * t + h2;
    if (h < G) {
      if (g == 0) s.m[warp][h] = st.m[h2], s.l[warp][h] = st.l[h2];
#pragma unroll
      for (int cg = 0; cg < CG; ++cg)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
          for (int r = 0; r < 2; ++r)
            s.o[warp][h][kG64 * cg + 8 * g + RQ::vchan(j, r)] = st.o[cg * 4 + j][h2 + 2 * r] + st.om[h2][cg];
    }
  }
  __syncthreads();
  write_merged<D, G, kDecWarps>(p, w, s);
}

template <int D, int G, int BITS>
void launch(const DecodeParams& one, const DecodeLaunch& l, cudaStream_t stream) {
  decode_quant_kernel<D, G, BITS><<<dim3(l.ctas, l.n_items), kDecThreads, 0, stream>>>(one, l.items);
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
    int v = 0;
    DUO_CUDA_TRY(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&v, decode_quant_kernel<D, G, BITS>, kDecThreads, 0));
    return std::max(1, v);
  }();
  return n;
}

}  // namespace

void check_quant_view(const LayerKv& c) {
  if (!c.kq_pages || !c.vq_pages || !c.slot_of || c.page_bytes <= 0 || (c.sink16 > 0 && !c.k_sink) || !c.k_resid)
    fail_arg("decode_attention: the quantized cache view is incomplete");
}

void launch_decode_quant(const DecodeParams& p, const DecodeLaunch& l, cudaStream_t stream) {
  if (!l.items) check_quant_view(p.a.cache);  // (a batch checks each item's view itself)
  const bool q8 = p.a.cache.type == KvType::Q8;
  if (p.a.head_dim == 128) return q8 ? dispatch_group<128, 8>(p, l, stream) : dispatch_group<128, 4>(p, l, stream);
  if (p.a.head_dim == 64) return q8 ? dispatch_group<64, 8>(p, l, stream) : dispatch_group<64, 4>(p, l, stream);
  fail_arg("decode_attention: head_dim must be 64 or 128");
}

int decode_quant_resident_ctas(int head_dim, int group, KvType type) {
  // The registers do not depend on the group (the mma computes 8 heads); the shared memory of
  // the end merge grows with it: read the largest group's residency off the device.
  (void)group;
  const bool q8 = type == KvType::Q8;
  if (head_dim == 128) return q8 ? occupancy<128, 8, 8>() : occupancy<128, 8, 4>();
  return q8 ? occupancy<64, 8, 8>() : occupancy<64, 8, 4>();
}

}  // namespace duo::cuda::detail
