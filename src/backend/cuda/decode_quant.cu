// Decode attention over a quantized KV cache (q8 / q4 pages, kv/kv_quant.h): the split-KV
// structure of decode.cu (one CTA a retrieval head and split, one a streaming head, all G query
// heads of the GQA group in the CTA, the same partials and merge kernel), reading the quantized
// pages directly: nothing is dequantized to memory.
//
// Work unit: a block of 64 keys = one quantization group, taken by one warp (warp w of a CTA
// takes blocks w, w + 4, ... of its key range; splits start at multiples of 64). A block is
//  - a quantized group (retrieval head, >= sink16, complete): at the block's start each lane
//    turns the group's key params of its 8 channels into a scaled query qs_c = q_c * scale_c and
//    a bias sum_c q_c * min_c (reduced over the row's lanes), so a key's score is
//    bias + sum_c qs_c * code_c: the codes are converted to float (exact) and never scaled
//    themselves. Values: o_c += (p * vscale) * code_c, and p * vmin is summed once a lane (its 8
//    channels share a 64-channel group) and added to o at the end;
//  - bf16 rows: a retrieval head's sink rows or its residual (the last, incomplete group), or a
//    streaming head's sink + ring rows; the same loop with qs = q, bias 0.
// Lanes: as decode.cu, 8 channels a lane (D / 8 lanes a key row), KPW = 32 / (D / 8) keys a
// warp-load and U keys in flight a lane. A lane reads 4 (q4) or 8 (q8) bytes of codes a key for
// K and for V plus the key's 4-byte V params: 12 or 20 bytes where bf16 reads 32.
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

// 8 codes (one lane's channels) as exact floats: 2^23 + q built from bits, minus 2^23.
template <int BITS>
struct Codes;
template <>
struct Codes<4> {
  using Word = uint32_t;
  static __device__ __forceinline__ Word load(const uint8_t* p) { return __ldcs(reinterpret_cast<const unsigned*>(p)); }
  static __device__ __forceinline__ void to_float(Word w, float (&f)[8]) {
#pragma unroll
    for (int e = 0; e < 8; ++e) f[e] = __uint_as_float(0x4B000000u | ((w >> (4 * e)) & 15u)) - 8388608.0f;
  }
};
template <>
struct Codes<8> {
  using Word = uint2;
  static __device__ __forceinline__ Word load(const uint8_t* p) { return __ldcs(reinterpret_cast<const uint2*>(p)); }
  static __device__ __forceinline__ void to_float(Word w, float (&f)[8]) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      f[e] = __uint_as_float(0x4B000000u | ((w.x >> (8 * e)) & 255u)) - 8388608.0f;
      f[e + 4] = __uint_as_float(0x4B000000u | ((w.y >> (8 * e)) & 255u)) - 8388608.0f;
    }
  }
};

// Online-softmax state of one lane group for the G query heads.
template <int G>
struct State {
  float m[G], l[G], o[G][8], om[G];  // om: sum of p * vmin (quantized values), added to o at the end
};

// One block of n_keys keys (<= 64). kQuant: K/V codes at kc / vc (position-major rows of
// D * BITS / 8 bytes, the block's first position first) and V params at vp ([position][D / 64]
// words); else bf16 rows of D at kc / vc.
template <int D, int G, int U, int BITS, bool kQuant>
__device__ __forceinline__ void attend_block(const uint8_t* kc, const uint8_t* vc, const uint8_t* vp, int n_keys,
                                             const float (&qs)[G][8], const float (&qb)[G], State<G>& st, int sub,
                                             int cl) {
  constexpr int LANES = D / 8, KPW = 32 / LANES;
  constexpr int RB = D * BITS / 8, CG = D / kG64;
  using W = typename Codes<BITS>::Word;
  for (int i0 = 0; i0 < n_keys; i0 += KPW * U) {
    [[maybe_unused]] uint4 kr[kQuant ? 1 : U], vr[kQuant ? 1 : U];
    [[maybe_unused]] W kq[kQuant ? U : 1], vq[kQuant ? U : 1];
    [[maybe_unused]] uint32_t vw[kQuant ? U : 1];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int i = i0 + u * KPW + sub;
      const bool valid = i < n_keys;
      if constexpr (kQuant) {
        kq[u] = valid ? Codes<BITS>::load(kc + (int64_t)i * RB + cl * BITS) : W{};
        vq[u] = valid ? Codes<BITS>::load(vc + (int64_t)i * RB + cl * BITS) : W{};
        vw[u] = valid ? __ldcs(reinterpret_cast<const unsigned*>(vp + ((int64_t)i * CG + cl / 8) * 4)) : 0u;
      } else {
        kr[u] = valid ? __ldcs(reinterpret_cast<const uint4*>(kc + (int64_t)i * D * 2) + cl) : make_uint4(0, 0, 0, 0);
        vr[u] = valid ? __ldcs(reinterpret_cast<const uint4*>(vc + (int64_t)i * D * 2) + cl) : make_uint4(0, 0, 0, 0);
      }
    }
    float s[U][G];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      float kf[8];
      if constexpr (kQuant)
        Codes<BITS>::to_float(kq[u], kf);
      else
        bf16x8_to_float(kr[u], kf);
#pragma unroll
      for (int g = 0; g < G; ++g) {
        float d = 0.0f;
#pragma unroll
        for (int e = 0; e < 8; ++e) d = fmaf(qs[g][e], kf[e], d);
#pragma unroll
        for (int off = LANES / 2; off > 0; off /= 2) d += __shfl_xor_sync(0xffffffffu, d, off);
        s[u][g] = i0 + u * KPW + sub < n_keys ? d + qb[g] : -INFINITY;
      }
    }
#pragma unroll
    for (int g = 0; g < G; ++g) {
      float mx = st.m[g];
#pragma unroll
      for (int u = 0; u < U; ++u) mx = fmaxf(mx, s[u][g]);
      // A lane group that has seen no key yet (all of this iteration's keys past the end) keeps
      // mx = -inf: use 0 as the reference so alpha and every p are exactly 0 (decode.cu).
      const float ref = mx == -INFINITY ? 0.0f : mx;
      const float alpha = exp2f(st.m[g] - ref);
      st.m[g] = mx;
      st.l[g] *= alpha;
      st.om[g] *= alpha;
#pragma unroll
      for (int e = 0; e < 8; ++e) st.o[g][e] *= alpha;
#pragma unroll
      for (int u = 0; u < U; ++u) {
        s[u][g] = exp2f(s[u][g] - ref);
        st.l[g] += s[u][g];
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      float vf[8];
      if constexpr (kQuant) {
        Codes<BITS>::to_float(vq[u], vf);
        const float vs = kvq::params_scale(vw[u]), vm = kvq::params_min(vw[u]);
#pragma unroll
        for (int g = 0; g < G; ++g) {
          const float ps = s[u][g] * vs;
          st.om[g] = fmaf(s[u][g], vm, st.om[g]);
#pragma unroll
          for (int e = 0; e < 8; ++e) st.o[g][e] = fmaf(ps, vf[e], st.o[g][e]);
        }
      } else {
        bf16x8_to_float(vr[u], vf);
#pragma unroll
        for (int g = 0; g < G; ++g)
#pragma unroll
          for (int e = 0; e < 8; ++e) st.o[g][e] = fmaf(s[u][g], vf[e], st.o[g][e]);
      }
    }
  }
}

template <int D, int G, int BITS>
__global__ void __launch_bounds__(kDecThreads, G <= 4 ? 2 : 1)
    decode_quant_kernel(const __grid_constant__ DecodeParams one, const DecodeParams* __restrict__ items) {
  constexpr int LANES = D / 8, KPW = 32 / LANES, STREAMS = kDecWarps * KPW;
  constexpr int U = G <= 4 ? 8 : 4;
  static_assert(kG64 % (KPW * U) == 0, "a warp-iteration stays inside a block of 64 keys");
  static_assert(kPageTokens % kG64 == 0, "groups tile the pages");
  const DecodeParams& p = params_of(one, items);
  if ((int)blockIdx.x >= decode_ctas(p)) return;  // (a batch item with fewer CTAs than the grid)
  const DecodeArgs& a = p.a;
  const LayerKv& c = a.cache;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int sub = lane / LANES, cl = lane % LANES, stream = warp * KPW + sub;
  const int n_past = decode_n_past(a);
  const CtaWork w = cta_work<G>(p, n_past);
  if (!cta_has_keys<G>(p, w)) return;
  const bool streaming = w.streaming;
  const int kvh = w.kvh, h0 = w.h0, begin = w.begin, end = w.end;

  __shared__ float sm_q[G][D];  // q * log2(e) / sqrt(D): every block's query view is built from it
  const float sl2 = 1.4426950408889634f / sqrtf((float)D);
  for (int idx = threadIdx.x; idx < G * D; idx += kDecThreads)
    sm_q[idx / D][idx % D] = __bfloat162float(a.q[(int64_t)h0 * D + idx]) * sl2;
  __syncthreads();

  State<G> st;
#pragma unroll
  for (int g = 0; g < G; ++g) {
    st.m[g] = -INFINITY, st.l[g] = 0.0f, st.om[g] = 0.0f;
#pragma unroll
    for (int e = 0; e < 8; ++e) st.o[g][e] = 0.0f;
  }
  const kvq::QuantLayout L{D, BITS};
  const int64_t slot = streaming ? 0 : c.slot_of[kvh];
  const int32_t* pt = c.page_table + (int64_t)kvh * c.max_pages;
  for (int k0 = begin + warp * kG64; k0 < end; k0 += kDecWarps * kG64) {
    const int k1 = min(k0 + kG64, end);
    float qs[G][8], qb[G];
    if (!streaming && k0 >= c.sink16 && k0 + kG64 <= n_past) {  // a complete quantized group
      const int64_t page = pt[k0 / kPageTokens];
      const int gi = k0 % kPageTokens / kG64;
      const uint8_t* kp = c.kq_pages + page * c.page_bytes;
      const uint8_t* vp = c.vq_pages + page * c.page_bytes;
      const uint4* pw = reinterpret_cast<const uint4*>(kp + L.k_params(gi, cl * 8));
      const uint4 w0 = pw[0], w1 = pw[1];
      const uint32_t w[8] = {w0.x, w0.y, w0.z, w0.w, w1.x, w1.y, w1.z, w1.w};
#pragma unroll
      for (int g = 0; g < G; ++g) {
        float bias = 0.0f;
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          const float q = sm_q[g][cl * 8 + e];
          qs[g][e] = q * kvq::params_scale(w[e]);
          bias = fmaf(q, kvq::params_min(w[e]), bias);
        }
#pragma unroll
        for (int off = LANES / 2; off > 0; off /= 2) bias += __shfl_xor_sync(0xffffffffu, bias, off);
        qb[g] = bias;
      }
      attend_block<D, G, U, BITS, true>(kp + L.codes(gi * kG64), vp + L.codes(gi * kG64), vp + L.v_params(gi * kG64, 0),
                                        kG64, qs, qb, st, sub, cl);
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
#pragma unroll
      for (int g = 0; g < G; ++g) {
        qb[g] = 0.0f;
#pragma unroll
        for (int e = 0; e < 8; ++e) qs[g][e] = sm_q[g][cl * 8 + e];
      }
      attend_block<D, G, U, BITS, false>(reinterpret_cast<const uint8_t*>(kr), reinterpret_cast<const uint8_t*>(vr),
                                         nullptr, k1 - k0, qs, qb, st, sub, cl);
    }
  }
#pragma unroll
  for (int g = 0; g < G; ++g)
#pragma unroll
    for (int e = 0; e < 8; ++e) st.o[g][e] += st.om[g];

  finish_cta<D, G, STREAMS>(p, w, stream, cl, st.m, st.l, st.o);
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
  // Launch bounds give G <= 4 kernels two CTAs an SM and G > 4 one; read it off the device.
  const bool q8 = type == KvType::Q8, small = group <= 4;
  if (head_dim == 128)
    return q8 ? (small ? occupancy<128, 4, 8>() : occupancy<128, 8, 8>())
              : (small ? occupancy<128, 4, 4>() : occupancy<128, 8, 4>());
  return q8 ? (small ? occupancy<64, 4, 8>() : occupancy<64, 8, 8>())
            : (small ? occupancy<64, 4, 4>() : occupancy<64, 8, 4>());
}

}  // namespace duo::cuda::detail
