// The CPU attention's row kernel below the AVX-512 level: online softmax over key blocks with
// scores and the value sum in AVX2 (or plain loops). A kernel body, not an ordinary header:
// compiled by attention_scalar.cpp (plain loops, the reference and fallback) and by
// attention_avx2.cpp (AVX2+FMA, with those target flags on that file alone), each into its own
// namespace (DUO_ISA_NS); attention.cpp picks one at run time (simd_level.h). Everything here
// has internal linkage or lives in DUO_ISA_NS (matmul_kernels.h says why).
#ifndef DUO_ISA_NS
#error "compile this through attention_scalar.cpp or attention_avx2.cpp"
#endif
#include "backend/cpu/simd_avx512.h"  // first: it includes <immintrin.h>

#include <algorithm>
#include <cmath>

#include "backend/cpu/attention_internal.h"
#include "backend/cpu/ops.h"

namespace duo::attn::DUO_ISA_NS {

namespace {

// s[0..kPad) = scale * (q . key_j) for the transposed key block kt (d x kKeyBlock).
inline void row_scores(const float* q, const float* kt, int d, float scale, float* s) {
#if DUO_ISA_AVX2
  __m256 acc[8];
  for (int j = 0; j < 8; ++j) acc[j] = _mm256_setzero_ps();
  for (int c = 0; c < d; ++c) {
    const __m256 qc = _mm256_broadcast_ss(q + c);
    const float* kr = kt + c * kKeyBlock;
    for (int j = 0; j < 8; ++j) acc[j] = _mm256_fmadd_ps(qc, _mm256_load_ps(kr + 8 * j), acc[j]);
  }
  const __m256 sc = _mm256_set1_ps(scale);
  for (int j = 0; j < 8; ++j) _mm256_storeu_ps(s + 8 * j, _mm256_mul_ps(acc[j], sc));
#else
  for (int j = 0; j < kKeyBlock; ++j) s[j] = 0.0f;
  for (int c = 0; c < d; ++c)
    for (int j = 0; j < kKeyBlock; ++j) s[j] += q[c] * kt[c * kKeyBlock + j];
  for (int j = 0; j < kKeyBlock; ++j) s[j] *= scale;
#endif
}

// Decode has few query rows per task (the query heads of one KV head at one position). For
// them, transposing a key block costs more than the rows' dot products, so their scores are
// taken straight from the key rows: s[r][j] = scale * (q_r . key_j).
constexpr int kDirectRows = 8;

inline void direct_scores(const float* const* qrow, int rows, const float* k, int n, int64_t stride, int d,
                          float scale, float (*s)[kKeyBlock]) {
#if DUO_ISA_AVX2
  for (int j = 0; j < n; ++j) {
    const float* kr = k + j * stride;
    __m256 acc[kDirectRows];
    for (int r = 0; r < rows; ++r) acc[r] = _mm256_setzero_ps();
    for (int c = 0; c < d; c += 8) {
      const __m256 kv = _mm256_loadu_ps(kr + c);
      for (int r = 0; r < rows; ++r) acc[r] = _mm256_fmadd_ps(_mm256_loadu_ps(qrow[r] + c), kv, acc[r]);
    }
    for (int r = 0; r < rows; ++r) {
      const __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc[r]), _mm256_extractf128_ps(acc[r], 1));
      const __m128 h2 = _mm_add_ps(h, _mm_movehl_ps(h, h));
      s[r][j] = _mm_cvtss_f32(_mm_add_ss(h2, _mm_movehdup_ps(h2))) * scale;
    }
  }
#else
  for (int r = 0; r < rows; ++r)
    for (int j = 0; j < n; ++j) {
      float dot = 0.0f;
      for (int c = 0; c < d; ++c) dot += qrow[r][c] * k[j * stride + c];
      s[r][j] = dot * scale;
    }
#endif
}

// o[0..d) = o * alpha + sum_j p[j] * v_j
inline void row_pv(float* o, float alpha, const float* p, const KeyBlock& b, int d) {
#if DUO_ISA_AVX2
  const __m256 al = _mm256_set1_ps(alpha);
  for (int c0 = 0; c0 < d; c0 += 64) {
    const int w = std::min(64, d - c0) / 8;
    __m256 acc[8];
    for (int i = 0; i < w; ++i) acc[i] = _mm256_mul_ps(_mm256_load_ps(o + c0 + 8 * i), al);
    for (int j = 0; j < b.n; ++j) {
      if (p[j] == 0.0f) continue;
      const __m256 pj = _mm256_set1_ps(p[j]);
      const float* vr = b.v + j * b.stride + c0;
      for (int i = 0; i < w; ++i) acc[i] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vr + 8 * i), acc[i]);
    }
    for (int i = 0; i < w; ++i) _mm256_store_ps(o + c0 + 8 * i, acc[i]);
  }
#else
  for (int c = 0; c < d; ++c) o[c] *= alpha;
  for (int j = 0; j < b.n; ++j)
    for (int c = 0; c < d; ++c) o[c] += p[j] * b.v[j * b.stride + c];
#endif
}

}  // namespace

// Processes key blocks [kb0, kb1) for `rows` query rows into state st.
// Row r is query position pos[r] of query vector qrow[r].
void attend_blocks(const KeyBlock* blocks, size_t kb0, size_t kb1, int rows, const float* const* qrow,
                   const int64_t* pos, HeadKind kind, const StreamingWindow& w, int d, float scale, RowState& st) {
  alignas(32) float kt[kMaxHeadDim * kKeyBlock];
  alignas(32) float s_rows[kDirectRows][kKeyBlock];
  alignas(32) static thread_local float k_dec[kKeyBlock * kMaxHeadDim], v_dec[kKeyBlock * kMaxHeadDim];
  const bool direct = rows <= kDirectRows;
  int64_t pmin = pos[0], pmax = pos[0];
  for (int r = 1; r < rows; ++r) pmin = std::min(pmin, pos[r]), pmax = std::max(pmax, pos[r]);
  for (size_t bi = kb0; bi < kb1; ++bi) {
    KeyBlock b = blocks[bi];
    if (b.pos0 > pmax) continue;  // entirely in the future of every row
    if (kind == HeadKind::Streaming) {
      // Entirely outside both the sink and every row's recent window?
      const int64_t last = b.pos0 + b.n - 1;
      if (!w.reaches(pmin, b.pos0, last)) continue;
    }
    if (b.seg) {  // decode this block's rows (16-bit or quantized) to floats
      segment_rows(*b.seg, b.r0, b.n, d, k_dec, v_dec);
      b.k = k_dec, b.v = v_dec, b.stride = d;
    }
    if (direct) {
      direct_scores(qrow, rows, b.k, b.n, b.stride, d, scale, s_rows);
    } else {
      // Transpose the key block so a row's scores are a sequence of broadcast-FMAs.
      for (int j = 0; j < b.n; ++j) {
        const float* kr = b.k + j * b.stride;
        for (int c = 0; c < d; ++c) kt[c * kKeyBlock + j] = kr[c];
      }
      for (int j = b.n; j < kKeyBlock; ++j)
        for (int c = 0; c < d; ++c) kt[c * kKeyBlock + j] = 0.0f;
    }
    const bool all_visible_full = kind == HeadKind::Retrieval && b.pos0 + b.n - 1 <= pmin;
    for (int r = 0; r < rows; ++r) {
      alignas(32) float s_one[kKeyBlock];
      float* s = direct ? s_rows[r] : s_one;
      if (!direct) row_scores(qrow[r], kt, d, scale, s);
      float mx = kNegInf;
      if (all_visible_full) {
        for (int j = 0; j < b.n; ++j) mx = std::max(mx, s[j]);
      } else {
        for (int j = 0; j < b.n; ++j) {
          if (!visible(kind, w, pos[r], b.pos0 + j)) s[j] = kNegInf;
          mx = std::max(mx, s[j]);
        }
      }
      if (mx == kNegInf) continue;  // nothing visible to this row in this block
      const float m_new = std::max(st.m[r], mx);
      const float alpha = st.m[r] == kNegInf ? 0.0f : std::exp(st.m[r] - m_new);
      for (int j = 0; j < b.n; ++j) s[j] -= m_new;  // -inf stays -inf, exp gives 0
      exp_inplace(s, b.n);
      float sum = 0.0f;
      for (int j = 0; j < b.n; ++j) sum += s[j];
      st.l[r] = st.l[r] * alpha + sum;
      st.m[r] = m_new;
      row_pv(st.o + r * d, alpha, s, b, d);
    }
  }
}

}  // namespace duo::attn::DUO_ISA_NS
