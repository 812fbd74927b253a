// Quantized weight x float activation products.
//
// Two regimes:
//  - few tokens (decode): memory and latency bound. Each weight row is read once and dotted
//    with the activations. For the 32-element block types activations are quantized to 16-bit
//    blocks and dotted with integer SIMD (_mm256_madd_epi16): as fast as 8-bit activations on
//    AVX2, but with errors ~1e-5 relative, so greedy decoding agrees with float references
//    even at near-ties. K-quant rows are dequantized into an L1-resident buffer (float FMA).
//  - many tokens (pre-fill): compute bound. A thread dequantizes a block of rows once into a
//    small buffer (never the whole matrix) and multiplies it with all tokens through a 3x4
//    register-tiled float kernel, so each dequantized weight is reused by every token.
#include "backend/cpu/matmul.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "backend/cpu/ops.h"
#include "core/dequant.h"
#include "core/error.h"
#include "core/fp16.h"
#include "core/quant_blocks.h"
#include "core/thread_pool.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define DUO_MM_AVX2 1
#endif

namespace duo {

namespace {

constexpr int64_t kDecodeTokens = 4;  // up to this many tokens use the per-row dot path
constexpr int kRowBlock = 12;         // rows dequantized together in the pre-fill path (multiple of 3)

// ---------------------------------------------------------------------------------------------
// 16-bit activation blocks: 32 values, scale d, and d * sum(q) for the offset term of the
// formats with a minimum (Q4_1, Q5_1).
struct ActQ16 {
  float d;
  float s;
  int16_t q[QK];
};

void quantize_act_q16(const float* x, int64_t n, ActQ16* out) {
  for (int64_t b = 0; b < n / QK; ++b) {
    const float* v = x + b * QK;
    float amax = 0.0f;
    for (int j = 0; j < QK; ++j) amax = std::max(amax, std::fabs(v[j]));
    const float d = amax / 32767.0f, id = d > 0.0f ? 1.0f / d : 0.0f;
    int sum = 0;
    for (int j = 0; j < QK; ++j) {
      const int q = (int)std::nearbyint(v[j] * id);
      out[b].q[j] = (int16_t)q;
      sum += q;
    }
    out[b].d = d;
    out[b].s = d * (float)sum;
  }
}

#ifdef DUO_MM_AVX2
inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// sum(w[j] * x[j]) over a 32-block as 8 int32 lanes; w given as two halves of 16 int16.
inline __m256i dot_block16(__m256i w_lo, __m256i w_hi, const int16_t* x) {
  const __m256i x_lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
  const __m256i x_hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + 16));
  return _mm256_add_epi32(_mm256_madd_epi16(w_lo, x_lo), _mm256_madd_epi16(w_hi, x_hi));
}

// Elements 0..15 (low nibbles) and 16..31 (high nibbles) of a Q4 block as int16.
inline void nibbles16(const uint8_t* qs, __m256i& lo, __m256i& hi) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m128i m = _mm_set1_epi8(0x0F);
  lo = _mm256_cvtepu8_epi16(_mm_and_si128(raw, m));
  hi = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(raw, 4), m));
}
#endif

float dot_q4_1(const BlockQ4_1* w, const ActQ16* a, int64_t nb) {
#ifdef DUO_MM_AVX2
  __m256 acc = _mm256_setzero_ps();
  float offs = 0.0f;
  for (int64_t b = 0; b < nb; ++b) {
    __m256i lo, hi;
    nibbles16(w[b].qs, lo, hi);
    const __m256 p = _mm256_cvtepi32_ps(dot_block16(lo, hi, a[b].q));
    acc = _mm256_fmadd_ps(_mm256_set1_ps(f16_to_f32(w[b].d) * a[b].d), p, acc);
    offs += f16_to_f32(w[b].m) * a[b].s;
  }
  return hsum256(acc) + offs;
#else
  float sum = 0.0f;
  for (int64_t b = 0; b < nb; ++b) {
    int64_t isum = 0;
    for (int j = 0; j < QK / 2; ++j)
      isum += (w[b].qs[j] & 0xF) * a[b].q[j] + (w[b].qs[j] >> 4) * a[b].q[j + QK / 2];
    sum += f16_to_f32(w[b].d) * a[b].d * (float)isum + f16_to_f32(w[b].m) * a[b].s;
  }
  return sum;
#endif
}

float dot_q4_0(const BlockQ4_0* w, const ActQ16* a, int64_t nb) {
  // (q - 8) * d: the -8 offset is folded in through the block sum.
#ifdef DUO_MM_AVX2
  __m256 acc = _mm256_setzero_ps();
  float offs = 0.0f;
  for (int64_t b = 0; b < nb; ++b) {
    __m256i lo, hi;
    nibbles16(w[b].qs, lo, hi);
    const float d = f16_to_f32(w[b].d);
    acc = _mm256_fmadd_ps(_mm256_set1_ps(d * a[b].d), _mm256_cvtepi32_ps(dot_block16(lo, hi, a[b].q)), acc);
    offs -= 8.0f * d * a[b].s;
  }
  return hsum256(acc) + offs;
#else
  float sum = 0.0f;
  for (int64_t b = 0; b < nb; ++b) {
    int64_t isum = 0;
    for (int j = 0; j < QK / 2; ++j)
      isum += ((w[b].qs[j] & 0xF) - 8) * a[b].q[j] + ((w[b].qs[j] >> 4) - 8) * a[b].q[j + QK / 2];
    sum += f16_to_f32(w[b].d) * a[b].d * (float)isum;
  }
  return sum;
#endif
}

float dot_q8_0(const BlockQ8_0* w, const ActQ16* a, int64_t nb) {
#ifdef DUO_MM_AVX2
  __m256 acc = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const __m256i lo = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w[b].qs)));
    const __m256i hi = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w[b].qs + 16)));
    const __m256 p = _mm256_cvtepi32_ps(dot_block16(lo, hi, a[b].q));
    acc = _mm256_fmadd_ps(_mm256_set1_ps(f16_to_f32(w[b].d) * a[b].d), p, acc);
  }
  return hsum256(acc);
#else
  float sum = 0.0f;
  for (int64_t b = 0; b < nb; ++b) {
    int64_t isum = 0;
    for (int j = 0; j < QK; ++j) isum += w[b].qs[j] * a[b].q[j];
    sum += f16_to_f32(w[b].d) * a[b].d * (float)isum;
  }
  return sum;
#endif
}

bool has_int_path(GgmlType t) { return t == GgmlType::Q4_0 || t == GgmlType::Q4_1 || t == GgmlType::Q8_0; }

// Grow-only per-thread scratch.
float* thread_buffer(size_t n) {
  static thread_local std::vector<float> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

// ---------------------------------------------------------------------------------------------
// Few tokens: one pass over each weight row.
void matmul_rows(const WeightView& w, const float* x, int64_t n, float* y, ThreadPool& pool) {
  const int64_t nb = w.cols / QK;
  static thread_local std::vector<ActQ16> act;  // caller's buffer, shared with workers below
  std::vector<ActQ16>& a = act;
  const bool int_path = has_int_path(w.type);
  if (int_path) {
    if (a.size() < (size_t)(n * nb)) a.resize((size_t)(n * nb));
    for (int64_t t = 0; t < n; ++t) quantize_act_q16(x + t * w.cols, w.cols, a.data() + t * nb);
  }
  // Rows in chunks of 16 so that threads take whole cache lines of output.
  pool.parallel_for(w.rows, [&](int64_t r0, int64_t r1, int) {
    float* row = int_path ? nullptr : thread_buffer((size_t)w.cols);
    for (int64_t r = r0; r < r1; ++r) {
      const uint8_t* wr = w.data + r * w.row_stride;
      if (w.type == GgmlType::Q4_1) {
        for (int64_t t = 0; t < n; ++t)
          y[t * w.rows + r] = dot_q4_1(reinterpret_cast<const BlockQ4_1*>(wr), a.data() + t * nb, nb);
      } else if (w.type == GgmlType::Q4_0) {
        for (int64_t t = 0; t < n; ++t)
          y[t * w.rows + r] = dot_q4_0(reinterpret_cast<const BlockQ4_0*>(wr), a.data() + t * nb, nb);
      } else if (w.type == GgmlType::Q8_0) {
        for (int64_t t = 0; t < n; ++t)
          y[t * w.rows + r] = dot_q8_0(reinterpret_cast<const BlockQ8_0*>(wr), a.data() + t * nb, nb);
      } else {
        const float* wf = reinterpret_cast<const float*>(wr);
        if (w.type != GgmlType::F32) {
          dequantize_row(w.type, wr, row, w.cols);
          wf = row;
        }
        for (int64_t t = 0; t < n; ++t) y[t * w.rows + r] = dot_f32(wf, x + t * w.cols, (int)w.cols);
      }
    }
  }, 16);
}

// ---------------------------------------------------------------------------------------------
// Many tokens: rows x tokens tiles over dequantized row blocks.

// y[t][r0 + i] for i < 3, t < 4: dot products of 3 rows (wr, stride ld) with 4 tokens.
inline void tile_3x4(const float* wr, int64_t ld, const float* x0, int64_t ldx, int64_t cols, float* y, int64_t ldy,
                     int nr, int nt) {
#ifdef DUO_MM_AVX2
  if (nr == 3 && nt == 4 && cols % 8 == 0) {
    __m256 acc[3][4];
    for (auto& r : acc)
      for (auto& v : r) v = _mm256_setzero_ps();
    for (int64_t c = 0; c < cols; c += 8) {
      const __m256 w0 = _mm256_loadu_ps(wr + c), w1 = _mm256_loadu_ps(wr + ld + c), w2 = _mm256_loadu_ps(wr + 2 * ld + c);
      for (int t = 0; t < 4; ++t) {
        const __m256 xv = _mm256_loadu_ps(x0 + t * ldx + c);
        acc[0][t] = _mm256_fmadd_ps(w0, xv, acc[0][t]);
        acc[1][t] = _mm256_fmadd_ps(w1, xv, acc[1][t]);
        acc[2][t] = _mm256_fmadd_ps(w2, xv, acc[2][t]);
      }
    }
    for (int r = 0; r < 3; ++r)
      for (int t = 0; t < 4; ++t) y[t * ldy + r] = hsum256(acc[r][t]);
    return;
  }
#endif
  for (int r = 0; r < nr; ++r)
    for (int t = 0; t < nt; ++t) y[t * ldy + r] = dot_f32(wr + r * ld, x0 + t * ldx, (int)cols);
}

void matmul_tiled(const WeightView& w, const float* x, int64_t n, float* y, ThreadPool& pool) {
  const int64_t blocks = (w.rows + kRowBlock - 1) / kRowBlock;
  pool.parallel_for_dynamic(blocks, 1, [&](int64_t b0, int64_t b1, int) {
    float* buf = thread_buffer((size_t)kRowBlock * w.cols);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * kRowBlock, nr = std::min<int64_t>(kRowBlock, w.rows - r0);
      const float* rows;
      int64_t ld;
      if (w.type == GgmlType::F32) {
        rows = reinterpret_cast<const float*>(w.data + r0 * w.row_stride);
        ld = (int64_t)(w.row_stride / sizeof(float));
      } else {
        for (int64_t i = 0; i < nr; ++i) dequantize_row(w.type, w.data + (r0 + i) * w.row_stride, buf + i * w.cols, w.cols);
        rows = buf;
        ld = w.cols;
      }
      for (int64_t t = 0; t < n; t += 4) {
        const int nt = (int)std::min<int64_t>(4, n - t);
        for (int64_t i = 0; i < nr; i += 3)
          tile_3x4(rows + i * ld, ld, x + t * w.cols, w.cols, w.cols, y + t * w.rows + r0 + i, w.rows,
                   (int)std::min<int64_t>(3, nr - i), nt);
      }
    }
  });
}

void check(const WeightView& w) {
  DUO_CHECK(w.data != nullptr && w.rows > 0 && w.cols > 0, "matmul: empty weight");
  DUO_CHECK(type_traits(w.type).can_dequantize, "matmul: weights of type {} are not supported", type_name(w.type));
  DUO_CHECK(w.cols % type_traits(w.type).block_elems == 0, "matmul: {} columns is not a whole number of {} blocks",
            w.cols, type_name(w.type));
}

}  // namespace

void matmul_ref(const WeightView& w, const float* x, int64_t n, float* y) {
  check(w);
  std::vector<float> row((size_t)w.cols);
  for (int64_t r = 0; r < w.rows; ++r) {
    dequantize_row(w.type, w.data + r * w.row_stride, row.data(), w.cols);
    for (int64_t t = 0; t < n; ++t) {
      double s = 0.0;
      for (int64_t c = 0; c < w.cols; ++c) s += (double)row[c] * x[t * w.cols + c];
      y[t * w.rows + r] = (float)s;
    }
  }
}

void matmul(const WeightView& w, const float* x, int64_t n, float* y, ThreadPool& pool) {
  check(w);
  if (n <= kDecodeTokens)
    matmul_rows(w, x, n, y, pool);
  else
    matmul_tiled(w, x, n, y, pool);
}

}  // namespace duo
