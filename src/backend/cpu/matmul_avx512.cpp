// AVX-512 (F/BW/VL/VNNI) kernels of the quantized matmul. Same numbers as the AVX2 kernels:
// 16-bit activations, exact int32 sums of each 32-block, float work per block. VNNI's vpdpwssd
// multiplies 16 lanes of int16 pairs and accumulates in one instruction, where AVX2 needs
// vpmaddwd + vpaddd for 8 lanes.
//
// Pre-fill puts 16 weight ROWS in the lanes of a vector (the AVX2 kernel puts tokens there):
// a thread unpacks a block of 16 * RV rows into a panel whose 32-bit words are (row, pair)
// interleaved -- word (b, j, i) holds elements 2j, 2j+1 of block b of row i -- so one aligned load
// gives pair j of 16 rows, and each token's pair is a 32-bit broadcast straight from its
// quantized activations (no regrouping pass). A register tile of RV row vectors x TT tokens
// keeps RV*TT int32 block sums and RV*TT float accumulators; per block the float work is one
// convert, one scale multiply and one FMA (two with a min term) per accumulator, against 16
// vpdpwssd. Results are 16 consecutive outputs of one token: plain vector stores.
//
// Decode (few tokens) keeps matmul.cpp's 256-bit per-row dots at every level: they are bound
// by vector ALU work per 32-block (nibble expansion, dot, convert, scale), and measured on Zen 4
// (which executes a 512-bit op as two halves) neither a 512-bit vpdpwssd version nor a 256-bit
// VNNI one beat them (~4.6 cycles a block each).
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

constexpr int kPairs = QK / 2;   // int16 pairs per 32-block

// A panel of kRB rows x nb blocks: q[(b * kPairs + j) * kRB + i] = pair j of block b of row i,
// d[b * kRB + i] and m[b * kRB + i] its scale and min. Rows past the matrix are zero.
struct Panel {
  std::vector<int32_t> q;
  std::vector<float> dm;       // d then m
  std::vector<int16_t> rows_q;  // 16 unpacked rows
  std::vector<float> rows_f;
};
Panel& thread_panel512() {
  static thread_local Panel p;
  return p;
}

// In-register transpose of a 16 x 16 matrix of 32-bit words.
inline void transpose16(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  // Now r[4g + k] holds words k, k+4, k+8, k+12 (by 128-bit lane) of rows 4g..4g+3.
  for (int k = 0; k < 4; ++k) {
    t[k] = _mm512_shuffle_i32x4(r[k], r[4 + k], 0x88);       // lanes 0,2 of rows 0-3 | 4-7
    t[4 + k] = _mm512_shuffle_i32x4(r[k], r[4 + k], 0xDD);   // lanes 1,3
    t[8 + k] = _mm512_shuffle_i32x4(r[8 + k], r[12 + k], 0x88);
    t[12 + k] = _mm512_shuffle_i32x4(r[8 + k], r[12 + k], 0xDD);
  }
  for (int k = 0; k < 4; ++k) {
    r[k] = _mm512_shuffle_i32x4(t[k], t[8 + k], 0x88);         // lane 0
    r[8 + k] = _mm512_shuffle_i32x4(t[k], t[8 + k], 0xDD);     // lane 2
    r[4 + k] = _mm512_shuffle_i32x4(t[4 + k], t[12 + k], 0x88);  // lane 1
    r[12 + k] = _mm512_shuffle_i32x4(t[4 + k], t[12 + k], 0xDD); // lane 3
  }
}

// Unpacks rows [r0, r0 + nr) into a panel (q: nb * kPairs * kRB words, d and m: nb * kRB
// floats each), 16 rows at a time: each row to int16 with unpack_row (into p's row buffers), then
// each block's 16 x 16 (row, pair) words transposed in registers.
void fill_panel(const MatmulWeight& w, int64_t r0, int nr, int64_t nb, Panel& p, int32_t* q, float* d, float* m) {
  int16_t* rq = scratch(p.rows_q, (size_t)(16 * nb * QK));
  float* rf = scratch(p.rows_f, (size_t)(16 * 2 * nb));
  for (int v = 0; v < kRV; ++v) {
    const int i0 = 16 * v, cnt = std::clamp(nr - i0, 0, 16);
    for (int i = 0; i < 16; ++i) {
      int16_t* row_q = rq + i * nb * QK;
      float* row_f = rf + i * 2 * nb;
      if (i < cnt) {
        avx2::kernels.unpack_row(w.type, w.data + (r0 + i0 + i) * w.row_stride, nb, PanelRow{row_q, row_f, row_f + nb});
      } else {
        std::memset(row_q, 0, sizeof(int16_t) * nb * QK);
        std::memset(row_f, 0, sizeof(float) * 2 * nb);
      }
      for (int64_t b = 0; b < nb; ++b) d[b * kRB + i0 + i] = row_f[b], m[b * kRB + i0 + i] = row_f[nb + b];
    }
    for (int64_t b = 0; b < nb; ++b) {
      __m512i r[16];
      for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_si512(rq + i * nb * QK + b * QK);
      transpose16(r);
      for (int j = 0; j < kPairs; ++j) _mm512_storeu_si512(q + (b * kPairs + j) * kRB + i0, r[j]);
    }
  }
}

inline __m512 to_float(__m512i v) { return _mm512_cvtepi32_ps(v); }

inline __m512i bcast_pair(const int16_t* q) {
  int32_t v;
  std::memcpy(&v, q, 4);
  return _mm512_set1_epi32(v);
}

// y[t][16 v + lane] for the TT tokens at a (token-major, nb blocks each) and the panel's rows.
// kSplit: fold the int32 sums into float after 8 pairs too (Q6_K's values reach 4096, and
// 16 pairs of 4096 * 32767 overflow int32).
template <int TT, bool kSplit, bool kMins>
inline void tile(const int32_t* pq, const float* pd, const float* pm, const ActQ16* a, int64_t nb, float* y,
                 int64_t ldy, const __mmask16* store_mask) {
  __m512 acc[kRV][TT];
  for (int v = 0; v < kRV; ++v)
    for (int t = 0; t < TT; ++t) acc[v][t] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const int32_t* q = pq + b * kPairs * kRB;
    const float* d = pd + b * kRB;
    __m512i is[kRV][TT];
    for (int v = 0; v < kRV; ++v)
      for (int t = 0; t < TT; ++t) is[v][t] = _mm512_setzero_si512();
    // acc += float(is) * d_row * d_token (the scales are formed here, not kept live in the loop).
    auto fold = [&] {
      for (int t = 0; t < TT; ++t) {
        const __m512 xd = _mm512_set1_ps(a[t * nb + b].d);
        for (int v = 0; v < kRV; ++v)
          acc[v][t] = _mm512_fmadd_ps(to_float(is[v][t]), _mm512_mul_ps(_mm512_loadu_ps(d + 16 * v), xd), acc[v][t]);
      }
    };
#pragma GCC unroll 16
    for (int j = 0; j < kPairs; ++j) {
      __m512i wv[kRV];
      for (int v = 0; v < kRV; ++v) wv[v] = _mm512_loadu_si512(q + j * kRB + 16 * v);
      for (int t = 0; t < TT; ++t) {
        const __m512i x = bcast_pair(a[t * nb + b].q + 2 * j);
        for (int v = 0; v < kRV; ++v) is[v][t] = _mm512_dpwssd_epi32(is[v][t], wv[v], x);
      }
      if (kSplit && j == kPairs / 2 - 1) {
        fold();
        for (int v = 0; v < kRV; ++v)
          for (int t = 0; t < TT; ++t) is[v][t] = _mm512_setzero_si512();
      }
    }
    fold();
    if (kMins) {
      const float* m = pm + b * kRB;
      for (int t = 0; t < TT; ++t) {
        const __m512 xs = _mm512_set1_ps(a[t * nb + b].s);
        for (int v = 0; v < kRV; ++v) acc[v][t] = _mm512_fmadd_ps(_mm512_loadu_ps(m + 16 * v), xs, acc[v][t]);
      }
    }
  }
  for (int t = 0; t < TT; ++t)
    for (int v = 0; v < kRV; ++v) _mm512_mask_storeu_ps(y + t * ldy + 16 * v, store_mask[v], acc[v][t]);
}

template <bool kSplit, bool kMins>
void tiles(const int32_t* pq, const float* pd, const float* pm, const ActQ16* a, int64_t nb, int64_t t0, int64_t t1,
           float* y, int64_t ldy, const __mmask16* mask) {
  int64_t t = t0;
  for (; t + kTT <= t1; t += kTT) tile<kTT, kSplit, kMins>(pq, pd, pm, a + t * nb, nb, y + t * ldy, ldy, mask);
  switch (t1 - t) {
    case 3: tile<3, kSplit, kMins>(pq, pd, pm, a + t * nb, nb, y + t * ldy, ldy, mask); break;
    case 2: tile<2, kSplit, kMins>(pq, pd, pm, a + t * nb, nb, y + t * ldy, ldy, mask); break;
    case 1: tile<1, kSplit, kMins>(pq, pd, pm, a + t * nb, nb, y + t * ldy, ldy, mask); break;
    default: break;
  }
}

}  // namespace

std::shared_ptr<const PackedWeight> pack_weight_avx512(const MatmulWeight& w, ThreadPool& pool) {
  return pack_panels(w, kPairs, 16, pool, [](const MatmulWeight& m, int64_t r0, int nr, int32_t* q, float* d, float* mn) {
    fill_panel(m, r0, nr, m.cols / QK, thread_panel512(), q, d, mn);
  });
}

void matmul_prefill_avx512(const MatmulOut* outs, int count, const ActQ16* a, int64_t n, ThreadPool& pool) {
  static_assert(kTT <= 4, "tiles() handles token tails of up to 3");
  const int64_t nb = outs[0].w.cols / QK;
  run_panel_tasks(
      outs, count, n, kPairs, 16, pool,
      [] {
        Panel& p = thread_panel512();
        return std::tie(p.q, p.dm);
      },
      [&](const MatmulWeight& w, int64_t r0, int nr, int32_t* q, float* d, float* m) {
        fill_panel(w, r0, nr, nb, thread_panel512(), q, d, m);
      },
      [&](int i, const int32_t* pq, const float* pd, const float* pm, int64_t t0, int64_t t1, float* yb,
          const __mmask16* mask) {
        const MatmulWeight& w = outs[i].w;
        if (w.type == GgmlType::Q6_K)
          tiles<true, false>(pq, pd, pm, a, nb, t0, t1, yb, w.rows, mask);
        else if (has_min(w.type))
          tiles<false, true>(pq, pd, pm, a, nb, t0, t1, yb, w.rows, mask);
        else
          tiles<false, false>(pq, pd, pm, a, nb, t0, t1, yb, w.rows, mask);
      });
}

}  // namespace duo::mm

#endif  // DUO_HAVE_AVX512
