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
#include "backend/cpu/simd_avx512.h"  // first: it includes <immintrin.h>
#include "backend/cpu/matmul_internal.h"

#if DUO_HAVE_AVX512

#include <algorithm>
#include <cstring>

#include "core/thread_pool.h"

namespace duo::mm {

namespace {

constexpr int kRV = 3;           // row vectors per tile (48 rows)
constexpr int kTT = 4;           // tokens per tile
constexpr int kRB = 16 * kRV;    // rows per panel
constexpr int kPairs = QK / 2;   // int16 pairs per 32-block

// A panel of kRB rows x nb blocks: q[(b * kPairs + j) * kRB + i] = pair j of block b of row i,
// d[b * kRB + i] and m[b * kRB + i] its scale and min. Rows past the matrix are zero.
struct Panel {
  std::vector<int32_t> q;
  std::vector<float> dm;  // d then m
  std::vector<int16_t> row_q;  // one unpacked row
  std::vector<float> row_f;
};
Panel& thread_panel512() {
  static thread_local Panel p;
  return p;
}

void fill_panel(const WeightView& w, int64_t r0, int nr, int64_t nb, Panel& p, int32_t*& q, float*& d, float*& m) {
  q = scratch(p.q, (size_t)(nb * kPairs * kRB));
  d = scratch(p.dm, (size_t)(2 * nb * kRB));
  m = d + nb * kRB;
  int16_t* rq = scratch(p.row_q, (size_t)(nb * QK));
  float* rf = scratch(p.row_f, (size_t)(2 * nb));
  for (int i = 0; i < kRB; ++i) {
    if (i < nr) {
      unpack_row(w.type, w.data + (r0 + i) * w.row_stride, nb, PanelRow{rq, rf, rf + nb});
      const int32_t* pairs = reinterpret_cast<const int32_t*>(rq);
      for (int64_t k = 0; k < nb * kPairs; ++k) q[k * kRB + i] = pairs[k];
      for (int64_t b = 0; b < nb; ++b) d[b * kRB + i] = rf[b], m[b * kRB + i] = rf[nb + b];
    } else {
      for (int64_t k = 0; k < nb * kPairs; ++k) q[k * kRB + i] = 0;
      for (int64_t b = 0; b < nb; ++b) d[b * kRB + i] = 0.0f, m[b * kRB + i] = 0.0f;
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

void matmul_prefill_avx512(const WeightView& w, const ActQ16* a, int64_t n, float* y, ThreadPool& pool) {
  static_assert(kTT <= 4, "tiles() handles token tails of up to 3");
  const int64_t nb = w.cols / QK;
  const bool mins = has_min(w.type), split = w.type == GgmlType::Q6_K;
  // Tasks are (row block, token chunk); token chunks only split the work when there are too
  // few row blocks to keep every thread busy (each chunk unpacks its panel again).
  const int64_t blocks = (w.rows + kRB - 1) / kRB;
  const int64_t tchunks = std::min<int64_t>((n + kTT - 1) / kTT, std::max<int64_t>(1, (2 * pool.size() + blocks - 1) / blocks));
  const int64_t tper = ((n + tchunks - 1) / tchunks + kTT - 1) / kTT * kTT;
  pool.parallel_for_dynamic(blocks * tchunks, 1, [&](int64_t task0, int64_t task1, int) {
    Panel& p = thread_panel512();
    for (int64_t task = task0; task < task1; ++task) {
      const int64_t blk = task / tchunks, t0 = (task % tchunks) * tper, t1 = std::min(n, t0 + tper);
      if (t0 >= t1) continue;
      const int64_t r0 = blk * kRB;
      const int nr = (int)std::min<int64_t>(kRB, w.rows - r0);
      int32_t* pq;
      float *pd, *pm;
      fill_panel(w, r0, nr, nb, p, pq, pd, pm);
      __mmask16 mask[kRV];
      for (int v = 0; v < kRV; ++v) {
        const int valid = std::clamp(nr - 16 * v, 0, 16);
        mask[v] = (__mmask16)((1u << valid) - 1u);
      }
      float* yb = y + r0;
      if (split)
        tiles<true, false>(pq, pd, pm, a, nb, t0, t1, yb, w.rows, mask);
      else if (mins)
        tiles<false, true>(pq, pd, pm, a, nb, t0, t1, yb, w.rows, mask);
      else
        tiles<false, false>(pq, pd, pm, a, nb, t0, t1, yb, w.rows, mask);
    }
  });
}

}  // namespace duo::mm

#endif  // DUO_HAVE_AVX512
