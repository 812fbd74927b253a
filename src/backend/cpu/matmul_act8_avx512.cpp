// AVX-512 VNNI many-token kernel of the 8-bit activation mode (MatmulWeight::act_bits == 8) for
// Q4_0/Q4_1/Q8_0 weights. The same shape as matmul_avx512.cpp's 16-bit kernel -- 16 weight rows
// in the lanes, a register tile of kRV row vectors x kTT tokens, exact int32 block sums, float
// work per block -- but the panel holds byte QUADS: word (b, j, i) = elements 4j..4j+3 of
// block b of row i, so a block is 8 words a row, and each token's quad is a 32-bit broadcast
// of its int8 activations. _mm512_dpbusd_epi32 (u8 x s8, four products a lane) then does in
// 8 instructions what vpdpwssd does in 16. The panel is 1 byte a weight (the 16-bit one: 2).
//  - Q4_0/Q4_1: nibbles 0..15 are the unsigned operand, activations the signed one; the block
//    sum (<= 32 * 15 * 127) is scaled, and the min term (Q4_0: -8 d) added, in float.
//  - Q8_0: both are signed, so the activations take the unsigned side as q + 128 (q xor 0x80)
//    and the block sum starts at -128 * sum(w) (an exact integer the panel keeps in its m slot),
//    so it ends at sum w q; |sums| <= 32 * 255 * 128: no overflow, no float work added.
#include "backend/cpu/simd_avx512.h"  // first: it includes <immintrin.h>
#include "backend/cpu/matmul_tiles_avx512.h"

#if DUO_HAVE_AVX512

#include <algorithm>
#include <cstring>
#include <memory>
#include <tuple>

#include "core/error.h"
#include "core/thread_pool.h"

namespace duo::mm {

namespace {

constexpr int kQuads = QK / 4;  // u8 quads per 32-block

struct Panel8 {
  std::vector<int32_t> q;
  std::vector<float> dm;  // d then m
  std::vector<uint8_t> row_q;
  std::vector<float> row_f;
};
Panel8& thread_panel8() {
  static thread_local Panel8 p;
  return p;
}

// Rows [r0, r0 + nr) into a panel: q[(b * kQuads + j) * kRB + i] = quad j of block b of row i,
// d[b * kRB + i], m[b * kRB + i] (Q8_0: -128 * the block's weight sum, int32 bits). Rows past the
// matrix are zero. Runs once per matrix when
// packed (pack_weight), else per call; plain word copies (a quarter of the tile's loads).
void fill_panel8(const MatmulWeight& w, int64_t r0, int nr, int64_t nb, Panel8& p, int32_t* q, float* d, float* m) {
  uint8_t* rq = scratch(p.row_q, (size_t)(nb * QK));
  float* dw = scratch(p.row_f, (size_t)(2 * nb));
  float* mw = dw + nb;
  for (int i = 0; i < kRB; ++i) {
    if (i < nr) {
      unpack_row_8(w.type, w.data + (r0 + i) * w.row_stride, nb, rq, dw, mw);
      for (int64_t b = 0; b < nb; ++b) {
        d[b * kRB + i] = dw[b], m[b * kRB + i] = mw[b];
        if (w.type == GgmlType::Q8_0) {
          int32_t sum = 0;
          for (int j = 0; j < QK; ++j) sum += (int8_t)rq[b * QK + j];
          const int32_t corr = -128 * sum;
          std::memcpy(m + b * kRB + i, &corr, 4);
        }
        for (int j = 0; j < kQuads; ++j) std::memcpy(q + (b * kQuads + j) * kRB + i, rq + b * QK + 4 * j, 4);
      }
    } else {
      for (int64_t b = 0; b < nb; ++b) {
        d[b * kRB + i] = m[b * kRB + i] = 0.0f;
        for (int j = 0; j < kQuads; ++j) q[(b * kQuads + j) * kRB + i] = 0;
      }
    }
  }
}

inline __m512i bcast_quad(const int8_t* q) {
  int32_t v;
  std::memcpy(&v, q, 4);
  return _mm512_set1_epi32(v);
}

// y[t][16 v + lane] for the TT tokens at a (token-major, nb blocks each) and the panel's rows.
// kSigned: Q8_0 (signed weights; see the top of the file).
template <int TT, bool kSigned>
inline void tile8(const int32_t* pq, const float* pd, const float* pm, const ActQ8* a, int64_t nb, float* y,
                  int64_t ldy, const __mmask16* store_mask) {
  __m512 acc[kRV][TT];
  for (int v = 0; v < kRV; ++v)
    for (int t = 0; t < TT; ++t) acc[v][t] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const int32_t* q = pq + b * kQuads * kRB;
    const float* d = pd + b * kRB;
    const float* m = pm + b * kRB;
    __m512i is[kRV][TT];
    for (int v = 0; v < kRV; ++v)
      for (int t = 0; t < TT; ++t) is[v][t] = kSigned ? _mm512_loadu_si512(m + 16 * v) : _mm512_setzero_si512();
#pragma GCC unroll 8
    for (int j = 0; j < kQuads; ++j) {
      __m512i wv[kRV];
      for (int v = 0; v < kRV; ++v) wv[v] = _mm512_loadu_si512(q + j * kRB + 16 * v);
      for (int t = 0; t < TT; ++t) {
        const __m512i x = bcast_quad(a[t * nb + b].q + 4 * j);
        for (int v = 0; v < kRV; ++v)
          is[v][t] = kSigned ? _mm512_dpbusd_epi32(is[v][t], _mm512_xor_si512(x, _mm512_set1_epi32((int)0x80808080)), wv[v])
                             : _mm512_dpbusd_epi32(is[v][t], wv[v], x);
      }
    }
    // acc += float(is) * d_row * d_token + m_row * s_token.
    for (int t = 0; t < TT; ++t) {
      const __m512 xd = _mm512_set1_ps(a[t * nb + b].d), xs = _mm512_set1_ps(a[t * nb + b].s);
      for (int v = 0; v < kRV; ++v) {
        acc[v][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(is[v][t]), _mm512_mul_ps(_mm512_loadu_ps(d + 16 * v), xd),
                                    acc[v][t]);
        if (!kSigned) acc[v][t] = _mm512_fmadd_ps(_mm512_loadu_ps(m + 16 * v), xs, acc[v][t]);
      }
    }
  }
  for (int t = 0; t < TT; ++t)
    for (int v = 0; v < kRV; ++v) _mm512_mask_storeu_ps(y + t * ldy + 16 * v, store_mask[v], acc[v][t]);
}

template <bool kSigned>
void tiles8(const int32_t* pq, const float* pd, const float* pm, const ActQ8* a, int64_t nb, int64_t t0, int64_t t1,
            float* y, int64_t ldy, const __mmask16* mask) {
  int64_t t = t0;
  for (; t + kTT <= t1; t += kTT) tile8<kTT, kSigned>(pq, pd, pm, a + t * nb, nb, y + t * ldy, ldy, mask);
  switch (t1 - t) {
    case 3: tile8<3, kSigned>(pq, pd, pm, a + t * nb, nb, y + t * ldy, ldy, mask); break;
    case 2: tile8<2, kSigned>(pq, pd, pm, a + t * nb, nb, y + t * ldy, ldy, mask); break;
    case 1: tile8<1, kSigned>(pq, pd, pm, a + t * nb, nb, y + t * ldy, ldy, mask); break;
    default: break;
  }
}

}  // namespace

std::shared_ptr<const PackedWeight> pack_weight_act8_avx512(const MatmulWeight& w, ThreadPool& pool) {
  DUO_SIMD_CHECK(act8_type(w.type), "matmul: no 8-bit activation path for {}", type_name(w.type));
  return pack_panels(w, kQuads, 8, pool, [](const MatmulWeight& m, int64_t r0, int nr, int32_t* q, float* d, float* mn) {
    fill_panel8(m, r0, nr, m.cols / QK, thread_panel8(), q, d, mn);
  });
}

void matmul_prefill_act8_avx512(const MatmulOut* outs, int count, const ActQ8* a, int64_t n, ThreadPool& pool) {
  static_assert(kTT <= 4, "tiles8() handles token tails of up to 3");
  const int64_t nb = outs[0].w.cols / QK;
  for (int i = 0; i < count; ++i)
    DUO_SIMD_CHECK(act8_type(outs[i].w.type), "matmul: no 8-bit activation path for {}", type_name(outs[i].w.type));
  run_panel_tasks(
      outs, count, n, kQuads, 8, pool,
      [] {
        Panel8& p = thread_panel8();
        return std::tie(p.q, p.dm);
      },
      [&](const MatmulWeight& w, int64_t r0, int nr, int32_t* q, float* d, float* m) {
        fill_panel8(w, r0, nr, nb, thread_panel8(), q, d, m);
      },
      [&](int i, const int32_t* pq, const float* pd, const float* pm, int64_t t0, int64_t t1, float* yb,
          const __mmask16* mask) {
        const MatmulWeight& w = outs[i].w;
        if (w.type == GgmlType::Q8_0)
          tiles8<true>(pq, pd, pm, a, nb, t0, t1, yb, w.rows, mask);
        else
          tiles8<false>(pq, pd, pm, a, nb, t0, t1, yb, w.rows, mask);
      });
}

}  // namespace duo::mm

#endif  // DUO_HAVE_AVX512
