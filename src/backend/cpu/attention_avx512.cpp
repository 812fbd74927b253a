// AVX-512 pre-fill attention: the QUERY rows of a task (positions x the query heads of one
// KV head, up to 64) sit in the lanes of RV = rows/16 vectors, so
//  - scores S^T[j] (key j against every row) are broadcast-FMAs of the key's elements against
//    the transposed queries: no key transposition and no horizontal sums;
//  - the online softmax is lane-wise: running max m, sum l and rescale factor alpha are RV
//    vectors, and the causal / Λ masks are compares of a key index against the rows' positions;
//  - O^T[c] += V[j][c] * P^T[j] are broadcast-FMAs too, with O^T in registers over a whole key
//    block, one column tile at a time.
// Queries are transposed (and pre-scaled by 1/sqrt(d)) once per task and O^T back once at the
// end; float keys and values are read in place from the cache pages / the chunk, 16-bit ones
// (f16, bf16 caches) converted a block at a time into a float buffer (the tiles broadcast
// single elements, which a 16-bit row would make a convert each).
// The decode kernel (few rows) reads float and 16-bit rows in place, 16 elements a load,
// converting in registers (vcvtph2ps for f16, a 16-bit shift for bf16).
#include "backend/cpu/simd_avx512.h"  // first: it includes <immintrin.h>
#include "backend/cpu/attention_internal.h"

#if DUO_HAVE_AVX512

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <type_traits>

#include "backend/cpu/simd_level.h"
#include "backend/cpu/simd_math_avx512.h"
#include "core/error.h"

namespace duo::attn {

namespace {

constexpr int kLanes = 16;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

struct Scratch {
  alignas(64) float qt[kMaxHeadDim * kMaxRows];  // [c][RV * 16]: queries, transposed and scaled
  alignas(64) float ot[kMaxHeadDim * kMaxRows];  // [c][RV * 16]: unnormalized outputs
  alignas(64) float st[kKeyBlock * kMaxRows];    // [j][RV * 16]: scores, then probabilities
  alignas(64) float kf[kKeyBlock * kMaxHeadDim];  // a 16-bit block's keys and values as floats
  alignas(64) float vf[kKeyBlock * kMaxHeadDim];
};
Scratch& thread_scratch() {
  static thread_local std::unique_ptr<Scratch> s(new Scratch);
  return *s;
}

// Rows of one storage type: the element type, where a block's keys and values start, and a
// load of 16 consecutive elements as floats (exact: every f16 and bf16 value is a float).
template <KvType T>
struct Rows {
  static_assert(T == KvType::F32 || T == KvType::F16 || T == KvType::BF16, "rows read in place");
  using Elem = std::conditional_t<T == KvType::F32, float, uint16_t>;
  static const Elem* k(const KeyBlock& b) {
    if constexpr (T == KvType::F32) return b.k; else return b.kh;
  }
  static const Elem* v(const KeyBlock& b) {
    if constexpr (T == KvType::F32) return b.v; else return b.vh;
  }
  static __m512 load(const Elem* p) {
    if constexpr (T == KvType::F32) {
      return _mm512_loadu_ps(p);
    } else {
      const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
      if constexpr (T == KvType::F16)
        return _mm512_cvtph_ps(h);
      else
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
  }
};

// A 16-bit block's n rows of keys and values -> packed float rows (d apart) in kf, vf.
template <KvType T>
void widen_block(const KeyBlock& b, int d, float* kf, float* vf) {
  using R = Rows<T>;
  for (int j = 0; j < b.n; ++j) {
    const typename R::Elem* kr = R::k(b) + j * b.stride;
    const typename R::Elem* vr = R::v(b) + j * b.stride;
    for (int c = 0; c < d; c += 16) {
      _mm512_store_ps(kf + j * d + c, R::load(kr + c));
      _mm512_store_ps(vf + j * d + c, R::load(vr + c));
    }
  }
}

// Keeps a loaded vector in a register: without it GCC folds the load into every FMA that uses
// it (KJ or CT loads instead of one), and the loads, not the FMAs, become the limit (~1.25x).
inline void pin(__m512& v) { asm("" : "+v"(v)); }

// st[j] = Q^T . k_j for keys j of [j0, j0 + KJ): KJ keys x RV row vectors in registers.
template <int RV, int KJ>
inline void score_tile(const float* qt, const float* k, int64_t stride, int d, int j0, float* st) {
  __m512 acc[KJ][RV];
  for (int jj = 0; jj < KJ; ++jj)
    for (int v = 0; v < RV; ++v) acc[jj][v] = _mm512_setzero_ps();
  const float* kr = k + j0 * stride;
  for (int c = 0; c < d; ++c) {
    __m512 q[RV];
    for (int v = 0; v < RV; ++v) {
      q[v] = _mm512_load_ps(qt + c * RV * kLanes + v * kLanes);
      pin(q[v]);
    }
    for (int jj = 0; jj < KJ; ++jj) {
      const __m512 kb = _mm512_set1_ps(kr[jj * stride + c]);
      for (int v = 0; v < RV; ++v) acc[jj][v] = _mm512_fmadd_ps(kb, q[v], acc[jj][v]);
    }
  }
  for (int jj = 0; jj < KJ; ++jj)
    for (int v = 0; v < RV; ++v) _mm512_store_ps(st + (j0 + jj) * RV * kLanes + v * kLanes, acc[jj][v]);
}

// ot[c] = ot[c] * alpha + sum_j v_j[c] * st[j] for columns [c0, c0 + CT), keys j < n.
template <int RV, int CT>
inline void pv_tile(const float* st, const float* vb, int64_t stride, int n, int c0, const __m512* alpha, float* ot) {
  __m512 acc[CT][RV];
  for (int cc = 0; cc < CT; ++cc)
    for (int v = 0; v < RV; ++v)
      acc[cc][v] = _mm512_mul_ps(_mm512_load_ps(ot + (c0 + cc) * RV * kLanes + v * kLanes), alpha[v]);
  for (int j = 0; j < n; ++j) {
    __m512 p[RV];
    for (int v = 0; v < RV; ++v) {
      p[v] = _mm512_load_ps(st + j * RV * kLanes + v * kLanes);
      pin(p[v]);
    }
    const float* vr = vb + j * stride + c0;
    for (int cc = 0; cc < CT; ++cc) {
      const __m512 x = _mm512_set1_ps(vr[cc]);
      for (int v = 0; v < RV; ++v) acc[cc][v] = _mm512_fmadd_ps(x, p[v], acc[cc][v]);
    }
  }
  for (int cc = 0; cc < CT; ++cc)
    for (int v = 0; v < RV; ++v) _mm512_store_ps(ot + (c0 + cc) * RV * kLanes + v * kLanes, acc[cc][v]);
}

template <int RV>
void attend(const KeyBlock* blocks, size_t n_blocks, int rows, const float* const* qrow, const int64_t* pos,
            HeadKind kind, const StreamingWindow& w, int d, float scale, float* const* out) {
  constexpr int W = RV * kLanes;                 // floats per transposed row
  constexpr int KJ = RV <= 2 ? 8 : 4;            // keys per score tile (<= 24 accumulators)
  constexpr int CT = RV <= 2 ? 8 : (RV == 3 ? 8 : 4);  // output columns per PV tile
  Scratch& s = thread_scratch();
  int64_t pmin = pos[0], pmax = pos[0];
  for (int r = 1; r < rows; ++r) pmin = std::min(pmin, pos[r]), pmax = std::max(pmax, pos[r]);
  for (int c = 0; c < d; ++c)
    for (int r = 0; r < W; ++r) s.qt[c * W + r] = r < rows ? qrow[r][c] * scale : 0.0f;
  std::memset(s.ot, 0, sizeof(float) * d * W);
  __m512 m[RV], l[RV];
  for (int v = 0; v < RV; ++v) m[v] = _mm512_set1_ps(kNegInf), l[v] = _mm512_setzero_ps();

  for (size_t bi = 0; bi < n_blocks; ++bi) {
    KeyBlock b = blocks[bi];
    if (b.pos0 > pmax) continue;  // entirely in the future of every row
    const int64_t last = b.pos0 + b.n - 1;
    if (kind == HeadKind::Streaming && !w.reaches(pmin, b.pos0, last)) continue;  // outside Λ
    if (b.type != KvType::F32) {
      DUO_SIMD_CHECK(d % 16 == 0 && reads_in_place(b), "attention: AVX-512 pre-fill over a {} block (head dim {})",
                to_string(b.type), d);
      if (b.type == KvType::F16)
        widen_block<KvType::F16>(b, d, s.kf, s.vf);
      else
        widen_block<KvType::BF16>(b, d, s.kf, s.vf);
      b.k = s.kf, b.v = s.vf, b.stride = d;
    }

    int j = 0;
    for (; j + KJ <= b.n; j += KJ) score_tile<RV, KJ>(s.qt, b.k, b.stride, d, j, s.st);
    for (; j < b.n; ++j) score_tile<RV, 1>(s.qt, b.k, b.stride, d, j, s.st);

    // Mask, block max per row.
    __m512 mb[RV];
    for (int v = 0; v < RV; ++v) mb[v] = _mm512_set1_ps(kNegInf);
    const bool all_visible = kind == HeadKind::Retrieval && last <= pmin;
    if (all_visible) {
      for (int jj = 0; jj < b.n; ++jj)
        for (int v = 0; v < RV; ++v) mb[v] = _mm512_max_ps(mb[v], _mm512_load_ps(s.st + jj * W + v * kLanes));
    } else {
      // Row position relative to the block start (padding rows: never visible), and that minus
      // the recent window: key jj is visible to a row when jj <= rel, and for a streaming head
      // also when it is a sink or jj > rel - recent. (StreamingWindow::keeps_at of
      // duo/duo_policy.h with base = b.pos0, sixteen rows at a time.)
      alignas(64) int32_t rel[W], rel_recent[W];
      for (int r = 0; r < W; ++r) {
        const int64_t x = r < rows ? pos[r] - b.pos0 : INT_MIN / 2;
        rel[r] = (int32_t)std::clamp<int64_t>(x, INT_MIN / 2, INT_MAX / 2);
        rel_recent[r] = (int32_t)std::clamp<int64_t>(x - w.recent, INT_MIN / 2, INT_MAX / 2);
      }
      for (int jj = 0; jj < b.n; ++jj) {
        const __m512i jv = _mm512_set1_epi32(jj);
        const bool sink = b.pos0 + jj < w.sink;
        for (int v = 0; v < RV; ++v) {
          __mmask16 vis = _mm512_cmp_epi32_mask(jv, _mm512_load_si512(rel + v * kLanes), _MM_CMPINT_LE);
          if (kind == HeadKind::Streaming && !sink)
            vis &= _mm512_cmp_epi32_mask(jv, _mm512_load_si512(rel_recent + v * kLanes), _MM_CMPINT_NLE);
          float* sp = s.st + jj * W + v * kLanes;
          const __m512 sv = _mm512_mask_mov_ps(_mm512_set1_ps(kNegInf), vis, _mm512_load_ps(sp));
          _mm512_store_ps(sp, sv);
          mb[v] = _mm512_max_ps(mb[v], sv);
        }
      }
    }

    // Online softmax update. Rows that have seen nothing yet keep m = -inf; they subtract 0
    // instead (exp(-inf) = 0 for their scores and alpha), which avoids -inf - -inf.
    __m512 alpha[RV], sub[RV], sum[RV];
    for (int v = 0; v < RV; ++v) {
      const __m512 m_new = _mm512_max_ps(m[v], mb[v]);
      const __mmask16 none = _mm512_cmp_ps_mask(m_new, _mm512_set1_ps(kNegInf), _CMP_EQ_OQ);
      sub[v] = _mm512_mask_mov_ps(m_new, none, _mm512_setzero_ps());
      alpha[v] = exp512(_mm512_sub_ps(m[v], sub[v]));
      m[v] = m_new;
      sum[v] = _mm512_setzero_ps();
    }
    for (int jj = 0; jj < b.n; ++jj)
      for (int v = 0; v < RV; ++v) {
        float* sp = s.st + jj * W + v * kLanes;
        const __m512 p = exp512(_mm512_sub_ps(_mm512_load_ps(sp), sub[v]));
        _mm512_store_ps(sp, p);
        sum[v] = _mm512_add_ps(sum[v], p);
      }
    for (int v = 0; v < RV; ++v) l[v] = _mm512_fmadd_ps(l[v], alpha[v], sum[v]);

    for (int c0 = 0; c0 < d; c0 += CT) pv_tile<RV, CT>(s.st, b.v, b.stride, b.n, c0, alpha, s.ot);
  }

  alignas(64) float inv[W];
  for (int v = 0; v < RV; ++v) {
    const __mmask16 pos_l = _mm512_cmp_ps_mask(l[v], _mm512_setzero_ps(), _CMP_GT_OQ);
    _mm512_store_ps(inv + v * kLanes, _mm512_maskz_div_ps(pos_l, _mm512_set1_ps(1.0f), l[v]));
  }
  for (int r = 0; r < rows; ++r) {
    float* o = out[r];
    for (int c = 0; c < d; ++c) o[c] = s.ot[c * W + r] * inv[r];
  }
}

// Lane j of the result = sum of the 16 lanes of a[j].
inline __m512 hsum16(const __m512 a[16]) {
  __m512 b[8], c[4];
  for (int i = 0; i < 8; ++i)
    b[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
  // b[i], per 128-bit lane: the lane's elements 0+2 and 1+3 of a[2i] and a[2i+1], interleaved.
  for (int i = 0; i < 4; ++i) {
    const __m512d x = _mm512_castps_pd(b[2 * i]), y = _mm512_castps_pd(b[2 * i + 1]);
    c[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
  }
  // c[i], per 128-bit lane L: the lane-L sums of a[4i .. 4i+3].
  const __m512 e01 = _mm512_add_ps(_mm512_shuffle_f32x4(c[0], c[1], 0x88), _mm512_shuffle_f32x4(c[0], c[1], 0xDD));
  const __m512 e23 = _mm512_add_ps(_mm512_shuffle_f32x4(c[2], c[3], 0x88), _mm512_shuffle_f32x4(c[2], c[3], 0xDD));
  return _mm512_add_ps(_mm512_shuffle_f32x4(e01, e23, 0x88), _mm512_shuffle_f32x4(e01, e23, 0xDD));
}

// o[r][c] = o[r][c] * alpha[r] + sum_j p[r][j] v_j[c] for RT rows and 4 column vectors from c0:
// the value vectors are loaded once for all rows, and RT * 4 independent FMA chains hide the
// FMA latency (one row's 4 chains alone would wait on it every key).
template <KvType T, int RT>
inline void pv_rows(const float* ps, const float* alpha, const KeyBlock& b, int c0, int d, float* o) {
  using R = Rows<T>;
  __m512 acc[RT][4];
  for (int r = 0; r < RT; ++r)
    for (int c = 0; c < 4; ++c)
      acc[r][c] = _mm512_mul_ps(_mm512_loadu_ps(o + r * d + c0 + 16 * c), _mm512_set1_ps(alpha[r]));
  for (int j = 0; j < b.n; ++j) {
    const typename R::Elem* vr = R::v(b) + j * b.stride + c0;
    __m512 v[4];
    for (int c = 0; c < 4; ++c) {
      v[c] = R::load(vr + 16 * c);
      pin(v[c]);
    }
    for (int r = 0; r < RT; ++r) {
      const __m512 p = _mm512_set1_ps(ps[r * kKeyBlock + j]);
      for (int c = 0; c < 4; ++c) acc[r][c] = _mm512_fmadd_ps(p, v[c], acc[r][c]);
    }
  }
  for (int r = 0; r < RT; ++r)
    for (int c = 0; c < 4; ++c) _mm512_storeu_ps(o + r * d + c0 + 16 * c, acc[r][c]);
}

// s[j] = q . k_j for the n keys of rows of type T (stride elements apart); q: D16 vectors.
template <int D16, KvType T>
inline void key_scores(const typename Rows<T>::Elem* kb, int64_t stride, int n, const __m512* q, float* s) {
  using R = Rows<T>;
  int j = 0;
  for (; j + 16 <= n; j += 16) {
    __m512 acc[16];
    for (int jj = 0; jj < 16; ++jj) {
      const typename R::Elem* kr = kb + (j + jj) * stride;
      __m512 t = _mm512_mul_ps(R::load(kr), q[0]);
      for (int c = 1; c < D16; ++c) t = _mm512_fmadd_ps(R::load(kr + 16 * c), q[c], t);
      acc[jj] = t;
    }
    _mm512_store_ps(s + j, hsum16(acc));
  }
  for (; j < n; ++j) {
    const typename R::Elem* kr = kb + j * stride;
    __m512 t = _mm512_mul_ps(R::load(kr), q[0]);
    for (int c = 1; c < D16; ++c) t = _mm512_fmadd_ps(R::load(kr + 16 * c), q[c], t);
    s[j] = _mm512_reduce_add_ps(t);
  }
}

// One key block of the decode kernel, its rows of type T read in place: scores and the online
// softmax row by row, then O = O * alpha + P V.
template <int D16, KvType T>
void decode_block(const KeyBlock& b, int rows, const float* const* qrow, const int64_t* pos, int64_t pmin,
                  HeadKind kind, const StreamingWindow& w, float scale, float* m, float* l, float* o) {
  using R = Rows<T>;
  constexpr int d = 16 * D16;
  alignas(64) float ps[kMaxRows * kKeyBlock];  // per row: scores, then probabilities
  float alpha[kMaxRows];
  const int64_t last = b.pos0 + b.n - 1;
  const bool all_visible = kind == HeadKind::Retrieval && last <= pmin;
  const typename R::Elem* kb = R::k(b);
  // Scores and softmax statistics, row by row.
  for (int r = 0; r < rows; ++r) {
    float* s = ps + r * kKeyBlock;
    __m512 q[D16];
    for (int c = 0; c < D16; ++c) q[c] = _mm512_mul_ps(_mm512_loadu_ps(qrow[r] + 16 * c), _mm512_set1_ps(scale));
    key_scores<D16, T>(kb, b.stride, b.n, q, s);
    if (!all_visible)
      for (int jj = 0; jj < b.n; ++jj) {
        const int64_t kp = b.pos0 + jj;
        if (!visible(kind, w, pos[r], kp)) s[jj] = kNegInf;
      }
    // Online softmax over this block's n keys (lanes past n are masked out).
    __m512 mx = _mm512_set1_ps(kNegInf);
    for (int jj = 0; jj < b.n; jj += 16)
      mx = _mm512_max_ps(mx, _mm512_mask_load_ps(_mm512_set1_ps(kNegInf),
                                                 (__mmask16)((1u << std::min(16, b.n - jj)) - 1u), s + jj));
    const float bmax = _mm512_reduce_max_ps(mx);
    if (bmax == kNegInf) {  // nothing visible to this row here: o * 1 + 0
      alpha[r] = 1.0f;
      std::memset(s, 0, sizeof(float) * b.n);
      continue;
    }
    const float m_new = std::max(m[r], bmax);
    alpha[r] = m[r] == kNegInf ? 0.0f : std::exp(m[r] - m_new);
    __m512 sum = _mm512_setzero_ps();
    for (int jj = 0; jj < b.n; jj += 16) {
      const __mmask16 valid = (__mmask16)((1u << std::min(16, b.n - jj)) - 1u);
      const __m512 p =
          _mm512_maskz_mov_ps(valid, exp512(_mm512_sub_ps(_mm512_load_ps(s + jj), _mm512_set1_ps(m_new))));
      _mm512_store_ps(s + jj, p);
      sum = _mm512_add_ps(sum, p);
    }
    l[r] = l[r] * alpha[r] + _mm512_reduce_add_ps(sum);
    m[r] = m_new;
  }
  // O = O * alpha + P V, four rows x four column vectors at a time.
  for (int r0 = 0; r0 < rows; r0 += 4) {
    const float* pr = ps + r0 * kKeyBlock;
    float* orow = o + r0 * d;
    for (int c0 = 0; c0 < d; c0 += 64) {
      switch (std::min(4, rows - r0)) {
        case 4: pv_rows<T, 4>(pr, alpha + r0, b, c0, d, orow); break;
        case 3: pv_rows<T, 3>(pr, alpha + r0, b, c0, d, orow); break;
        case 2: pv_rows<T, 2>(pr, alpha + r0, b, c0, d, orow); break;
        default: pv_rows<T, 1>(pr, alpha + r0, b, c0, d, orow); break;
      }
    }
  }
}

template <int D16>
void attend_decode(const KeyBlock* blocks, size_t kb0, size_t kb1, int rows, const float* const* qrow,
                   const int64_t* pos, HeadKind kind, const StreamingWindow& w, float scale, float* m, float* l,
                   float* o) {
  static_assert(D16 % 4 == 0, "PV tiles are 4 vectors wide");
  int64_t pmin = pos[0], pmax = pos[0];
  for (int r = 1; r < rows; ++r) pmin = std::min(pmin, pos[r]), pmax = std::max(pmax, pos[r]);
  for (size_t bi = kb0; bi < kb1; ++bi) {
    const KeyBlock& b = blocks[bi];
    if (b.pos0 > pmax) continue;
    const int64_t last = b.pos0 + b.n - 1;
    if (kind == HeadKind::Streaming && !w.reaches(pmin, b.pos0, last)) continue;
    switch (b.type) {
      case KvType::F32: decode_block<D16, KvType::F32>(b, rows, qrow, pos, pmin, kind, w, scale, m, l, o); break;
      case KvType::F16: decode_block<D16, KvType::F16>(b, rows, qrow, pos, pmin, kind, w, scale, m, l, o); break;
      case KvType::BF16: decode_block<D16, KvType::BF16>(b, rows, qrow, pos, pmin, kind, w, scale, m, l, o); break;
      default: DUO_SIMD_FAIL("attention: the AVX-512 decode kernel cannot read {} rows in place", to_string(b.type));
    }
  }
}

}  // namespace

void attend_rows_decode_avx512(const KeyBlock* blocks, size_t kb0, size_t kb1, int rows, const float* const* qrow,
                               const int64_t* pos, HeadKind kind, const StreamingWindow& w, int d, float scale,
                               float* m, float* l, float* o) {
  switch (d / 16) {
    case 4: attend_decode<4>(blocks, kb0, kb1, rows, qrow, pos, kind, w, scale, m, l, o); break;
    case 8: attend_decode<8>(blocks, kb0, kb1, rows, qrow, pos, kind, w, scale, m, l, o); break;
    case 16: attend_decode<16>(blocks, kb0, kb1, rows, qrow, pos, kind, w, scale, m, l, o); break;
    default: DUO_SIMD_FAIL("attention: the AVX-512 decode kernel has no instantiation for head dim {}", d);
  }
}

void attend_rows_avx512(const KeyBlock* blocks, size_t n_blocks, int rows, const float* const* qrow,
                        const int64_t* pos, HeadKind kind, const StreamingWindow& w, int d, float scale,
                        float* const* out) {
  switch ((rows + kLanes - 1) / kLanes) {
    case 1: attend<1>(blocks, n_blocks, rows, qrow, pos, kind, w, d, scale, out); break;
    case 2: attend<2>(blocks, n_blocks, rows, qrow, pos, kind, w, d, scale, out); break;
    case 3: attend<3>(blocks, n_blocks, rows, qrow, pos, kind, w, d, scale, out); break;
    default: attend<4>(blocks, n_blocks, rows, qrow, pos, kind, w, d, scale, out); break;
  }
}

}  // namespace duo::attn

#endif  // DUO_HAVE_AVX512
