// The quantized matmul's kernels below the AVX-512 level: decode dots, row unpacking, the
// AVX2 token-group tile and the float tile (matmul.cpp explains the method). A kernel body, not
// an ordinary header: it is compiled twice, by matmul_scalar.cpp (plain loops, the reference
// and fallback) and by matmul_avx2.cpp (AVX2+FMA+F16C, with those target flags on that file
// alone), each into its own namespace (DUO_ISA_NS), and matmul.cpp picks one at run time
// (simd_level.h). DUO_ISA_AVX2 selects the branch; the compiler's own __AVX2__ does not, so a
// -march=native build still has the plain loops in matmul_scalar.cpp.
//
// Everything here has internal linkage (the anonymous namespace) or lives in DUO_ISA_NS, and
// it instantiates no template that other files also instantiate: an inline function compiled
// with -mavx2 here must never be the copy the linker keeps for the generic code (simd_level.h,
// tests/backend/check_simd_objects.py).
#ifndef DUO_ISA_NS
#error "compile this through matmul_scalar.cpp or matmul_avx2.cpp"
#endif
#include <algorithm>
#include <cmath>
#include <cstring>

#include "backend/cpu/matmul_internal.h"
#include "backend/cpu/ops.h"
#include "core/dequant.h"
#include "core/fp16.h"
#include "core/quant_blocks.h"
#include "core/thread_pool.h"

namespace duo::mm::DUO_ISA_NS {

namespace {

constexpr int kTileRows = 6;          // rows per pre-fill register tile
constexpr int kRowBlock = 24;         // rows unpacked together in the pre-fill path (multiple of kTileRows)
constexpr int kTG = kTokenGroup;      // tokens per SIMD vector in the pre-fill kernel
// Activation integers lie in [-kActMax, kActMax]. The pre-fill kernel sums the products of
// a block in one int32 lane: 32 * |q| * 32767 < 2^31 holds for |q| <= 2048 (every type but
// Q6_K, whose scaled values reach 32 * 128 = 4096 and get two partial sums of 16).
constexpr float kActMax = 32767.0f;

void quantize_act_q16(const float* x, int64_t nb, ActQ16* out) {
  for (int64_t b = 0; b < nb; ++b) {
    const float* v = x + b * QK;
#if DUO_ISA_AVX2
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 v0 = _mm256_loadu_ps(v), v1 = _mm256_loadu_ps(v + 8), v2 = _mm256_loadu_ps(v + 16),
           v3 = _mm256_loadu_ps(v + 24);
    __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v0), _mm256_andnot_ps(sign, v1)),
                             _mm256_max_ps(_mm256_andnot_ps(sign, v2), _mm256_andnot_ps(sign, v3)));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float amax = _mm_cvtss_f32(m4);
    const float d = amax / kActMax, id = d > 0.0f ? 1.0f / d : 0.0f;
    const __m256 idv = _mm256_set1_ps(id);
    const __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(v0, idv)), i1 = _mm256_cvtps_epi32(_mm256_mul_ps(v1, idv)),
                  i2 = _mm256_cvtps_epi32(_mm256_mul_ps(v2, idv)), i3 = _mm256_cvtps_epi32(_mm256_mul_ps(v3, idv));
    // packs works per 128-bit lane: fix the order with a 64-bit permute.
    const __m256i p01 = _mm256_permute4x64_epi64(_mm256_packs_epi32(i0, i1), 0xD8);
    const __m256i p23 = _mm256_permute4x64_epi64(_mm256_packs_epi32(i2, i3), 0xD8);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out[b].q), p01);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out[b].q + 16), p23);
    __m256i s = _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
    out[b].d = d;
    out[b].s = d * (float)_mm_cvtsi128_si32(s4);
#else
    float amax = 0.0f;
    for (int j = 0; j < QK; ++j) amax = std::max(amax, std::fabs(v[j]));
    const float d = amax / kActMax, id = d > 0.0f ? 1.0f / d : 0.0f;
    int sum = 0;
    for (int j = 0; j < QK; ++j) {
      const int q = (int)std::nearbyint(v[j] * id);
      out[b].q[j] = (int16_t)q;
      sum += q;
    }
    out[b].d = d;
    out[b].s = d * (float)sum;
#endif
  }
}

#if DUO_ISA_AVX2
inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// q . x over a 32-block as 8 int32 lanes; q given as two halves of 16 int16.
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

// ---------------------------------------------------------------------------------------------
// Direct decode dots for the 32-block types of the default model.
float dot_q4_1(const BlockQ4_1* w, const ActQ16* a, int64_t nb) {
#if DUO_ISA_AVX2
  // (d, m) of the weights and (d, s) of the activations are adjacent pairs: one F16C
  // conversion and one multiply give lane 0 = scale of the block's integer dot, lane 1 = its
  // offset term, accumulated in `offs`.
  __m256 acc = _mm256_setzero_ps();
  __m128 offs = _mm_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    __m256i lo, hi;
    nibbles16(w[b].qs, lo, hi);
    const __m256 p = _mm256_cvtepi32_ps(dot_block16(lo, hi, a[b].q));
    int32_t dm;
    std::memcpy(&dm, &w[b].d, 4);
    const __m128 ds = _mm_mul_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(dm)),
                                 _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(&a[b].d))));
    acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(ds), p, acc);
    offs = _mm_add_ps(offs, ds);
  }
  return hsum256(acc) + _mm_cvtss_f32(_mm_movehdup_ps(offs));
#else
  float sum = 0.0f;
  for (int64_t b = 0; b < nb; ++b) {
    int64_t isum = 0;
    for (int j = 0; j < QK / 2; ++j)
      isum += (w[b].qs[j] & 0xF) * a[b].q[j] + (w[b].qs[j] >> 4) * a[b].q[j + QK / 2];
    sum += h2f(w[b].d) * a[b].d * (float)isum + h2f(w[b].m) * a[b].s;
  }
  return sum;
#endif
}

float dot_q4_0(const BlockQ4_0* w, const ActQ16* a, int64_t nb) {
  // (q - 8) * d: the -8 offset is folded in through the block sum.
#if DUO_ISA_AVX2
  __m256 acc = _mm256_setzero_ps();
  float offs = 0.0f;
  for (int64_t b = 0; b < nb; ++b) {
    __m256i lo, hi;
    nibbles16(w[b].qs, lo, hi);
    const float d = h2f(w[b].d);
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
    sum += h2f(w[b].d) * a[b].d * (float)isum;
  }
  return sum;
#endif
}

float dot_q8_0(const BlockQ8_0* w, const ActQ16* a, int64_t nb) {
#if DUO_ISA_AVX2
  __m256 acc = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const __m256i lo = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w[b].qs)));
    const __m256i hi = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w[b].qs + 16)));
    const __m256 p = _mm256_cvtepi32_ps(dot_block16(lo, hi, a[b].q));
    acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(w[b].d) * a[b].d), p, acc);
  }
  return hsum256(acc);
#else
  float sum = 0.0f;
  for (int64_t b = 0; b < nb; ++b) {
    int64_t isum = 0;
    for (int j = 0; j < QK; ++j) isum += w[b].qs[j] * a[b].q[j];
    sum += h2f(w[b].d) * a[b].d * (float)isum;
  }
  return sum;
#endif
}

// F16 / BF16 row . float activations, converting 8 weights at a time.
float dot_half(GgmlType type, const uint16_t* w, const float* x, int64_t n) {
  int64_t i = 0;
  float r = 0.0f;
#if DUO_ISA_AVX2
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  auto load = [&](int64_t k) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + k));
    if (type == GgmlType::F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  };
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm256_fmadd_ps(load(i), _mm256_loadu_ps(x + i), acc0);
    acc1 = _mm256_fmadd_ps(load(i + 8), _mm256_loadu_ps(x + i + 8), acc1);
  }
  r = hsum256(_mm256_add_ps(acc0, acc1));
#endif
  for (; i < n; ++i) r += (type == GgmlType::F16 ? f16_to_f32(w[i]) : bf16_to_f32(w[i])) * x[i];
  return r;
}

// Q4_K row . activations (as: the activation block sums d * sum(q), token-major).
float dot_q4_k(const BlockQ4_K* w, const ActQ16* a, const float* as, int64_t nsb) {
  float r = 0.0f;
#if DUO_ISA_AVX2
  __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
  __m256 macc = _mm256_setzero_ps();
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  for (int64_t s = 0; s < nsb; ++s, a += 8, as += 8) {
    uint8_t sc[8], mn[8];
    for (int j = 0; j < 8; ++j) kquant_scale_min(j, w[s].scales, sc[j], mn[j]);
    const float d = h2f(w[s].d);
    int64_t m8;
    std::memcpy(&m8, mn, 8);
    const __m256 mf = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(m8)));
    macc = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(h2f(w[s].dmin)), mf), _mm256_loadu_ps(as), macc);
    for (int j = 0; j < 4; ++j) {
      const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[s].qs + 32 * j));
      const __m256i lo = _mm256_and_si256(raw, m4), hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
      const __m256i p0 = dot_block16(_mm256_cvtepu8_epi16(_mm256_castsi256_si128(lo)),
                                     _mm256_cvtepu8_epi16(_mm256_extracti128_si256(lo, 1)), a[2 * j].q);
      const __m256i p1 = dot_block16(_mm256_cvtepu8_epi16(_mm256_castsi256_si128(hi)),
                                     _mm256_cvtepu8_epi16(_mm256_extracti128_si256(hi, 1)), a[2 * j + 1].q);
      acc[0] = _mm256_fmadd_ps(_mm256_set1_ps(d * sc[2 * j] * a[2 * j].d), _mm256_cvtepi32_ps(p0), acc[0]);
      acc[1] = _mm256_fmadd_ps(_mm256_set1_ps(d * sc[2 * j + 1] * a[2 * j + 1].d), _mm256_cvtepi32_ps(p1), acc[1]);
    }
  }
  r = hsum256(_mm256_add_ps(acc[0], acc[1])) - hsum256(macc);
#else
  for (int64_t s = 0; s < nsb; ++s, a += 8, as += 8) {
    const float d = h2f(w[s].d), dmin = h2f(w[s].dmin);
    for (int j = 0; j < 8; ++j) {
      uint8_t sc, mn;
      kquant_scale_min(j, w[s].scales, sc, mn);
      const uint8_t* q = w[s].qs + 32 * (j / 2);
      int64_t isum = 0;
      for (int l = 0; l < 32; ++l) isum += ((j & 1) ? (q[l] >> 4) : (q[l] & 0xF)) * a[j].q[l];
      r += d * sc * a[j].d * (float)isum - dmin * mn * as[j];
    }
  }
#endif
  return r;
}

// Q2_K row . activations. Its 16-element sub-blocks have their own mins, which the panel
// form (one min per 32) cannot hold, so decode dots the blocks directly: per 32-block the
// scaled values sc * q (0..45) and the per-element mins (0..15) each meet the activation
// integers in one multiply-add pass, w . x = xd * (d * (sc q . xq) - dmin * (m . xq)).
float dot_q2_k(const BlockQ2_K* w, const ActQ16* a, int64_t nsb) {
#if DUO_ISA_AVX2
  __m256 accw = _mm256_setzero_ps(), accm = _mm256_setzero_ps();
  const __m256i m3 = _mm256_set1_epi8(3);
  for (int64_t s = 0; s < nsb; ++s, a += 8) {
    const float d = h2f(w[s].d), dmin = h2f(w[s].dmin);
    for (int g = 0; g < 8; ++g) {
      const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[s].qs + 32 * (g / 4)));
      const __m256i v = _mm256_and_si256(_mm256_srl_epi16(raw, _mm_cvtsi32_si128(2 * (g % 4))), m3);
      const uint8_t s0 = w[s].scales[2 * g], s1 = w[s].scales[2 * g + 1];
      const __m256i lo = _mm256_mullo_epi16(_mm256_cvtepu8_epi16(_mm256_castsi256_si128(v)), _mm256_set1_epi16(s0 & 0xF));
      const __m256i hi =
          _mm256_mullo_epi16(_mm256_cvtepu8_epi16(_mm256_extracti128_si256(v, 1)), _mm256_set1_epi16(s1 & 0xF));
      const __m256i pw = dot_block16(lo, hi, a[g].q);
      const __m256i pm = dot_block16(_mm256_set1_epi16(s0 >> 4), _mm256_set1_epi16(s1 >> 4), a[g].q);
      accw = _mm256_fmadd_ps(_mm256_set1_ps(d * a[g].d), _mm256_cvtepi32_ps(pw), accw);
      accm = _mm256_fmadd_ps(_mm256_set1_ps(dmin * a[g].d), _mm256_cvtepi32_ps(pm), accm);
    }
  }
  return hsum256(accw) - hsum256(accm);
#else
  float r = 0.0f;
  for (int64_t s = 0; s < nsb; ++s, a += 8) {
    const float d = h2f(w[s].d), dmin = h2f(w[s].dmin);
    for (int g = 0; g < 8; ++g) {
      const uint8_t* q = w[s].qs + 32 * (g / 4);
      int64_t iw = 0, im = 0;
      for (int l = 0; l < 32; ++l) {
        const uint8_t sc = w[s].scales[2 * g + l / 16];
        iw += (sc & 0xF) * ((q[l] >> (2 * (g % 4))) & 3) * a[g].q[l];
        im += (sc >> 4) * a[g].q[l];
      }
      r += a[g].d * (d * (float)iw - dmin * (float)im);
    }
  }
  return r;
#endif
}

// Q4 nibbles of 32 bytes to q[0..31] (low) and q[32..63] (high) -- the k-quant order; for the
// 32-element formats 16 bytes give q[0..15] and q[16..31].
inline void nib_split(const uint8_t* qs, int nbytes, int16_t* lo, int16_t* hi, int off) {
#if DUO_ISA_AVX2
  if (nbytes == 16) {
    __m256i l16, h16;
    nibbles16(qs, l16, h16);
    const __m256i o = _mm256_set1_epi16((int16_t)off);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(lo), _mm256_add_epi16(l16, o));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(hi), _mm256_add_epi16(h16, o));
    return;
  }
#endif
  for (int l = 0; l < nbytes; ++l) {
    lo[l] = (int16_t)((qs[l] & 0xF) + off);
    hi[l] = (int16_t)((qs[l] >> 4) + off);
  }
}

// 16 bytes of IQ4 nibbles to their grid values: q[0..15] (low), q[16..31] (high).
inline void iq4_grid(const uint8_t* qs, int16_t* q) {
#if DUO_ISA_AVX2
  const __m128i tbl = _mm_loadu_si128(reinterpret_cast<const __m128i*>(kIq4nlValues));
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs)), m4 = _mm_set1_epi8(0x0F);
  const __m128i lo = _mm_shuffle_epi8(tbl, _mm_and_si128(raw, m4));
  const __m128i hi = _mm_shuffle_epi8(tbl, _mm_and_si128(_mm_srli_epi16(raw, 4), m4));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(q), _mm256_cvtepi8_epi16(lo));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + 16), _mm256_cvtepi8_epi16(hi));
#else
  for (int j = 0; j < 16; ++j) {
    q[j] = kIq4nlValues[qs[j] & 0xF];
    q[j + 16] = kIq4nlValues[qs[j] >> 4];
  }
#endif
}

void unpack_row(GgmlType type, const uint8_t* src, int64_t nb, PanelRow p) {
  switch (type) {
    case GgmlType::Q4_0: {
      const auto* b = reinterpret_cast<const BlockQ4_0*>(src);
      for (int64_t i = 0; i < nb; ++i) {
        nib_split(b[i].qs, 16, p.q + i * QK, p.q + i * QK + 16, -8);
        p.dw[i] = h2f(b[i].d);
        p.mw[i] = 0.0f;
      }
      return;
    }
    case GgmlType::Q4_1: {
      const auto* b = reinterpret_cast<const BlockQ4_1*>(src);
      for (int64_t i = 0; i < nb; ++i) {
        nib_split(b[i].qs, 16, p.q + i * QK, p.q + i * QK + 16, 0);
        p.dw[i] = h2f(b[i].d);
        p.mw[i] = h2f(b[i].m);
      }
      return;
    }
    case GgmlType::Q5_0:
    case GgmlType::Q5_1: {
      const bool one = type == GgmlType::Q5_1;
      const size_t bs = one ? sizeof(BlockQ5_1) : sizeof(BlockQ5_0);
      for (int64_t i = 0; i < nb; ++i) {
        const uint8_t* blk = src + i * bs;
        const uint8_t* qh = blk + (one ? 4 : 2);
        const uint8_t* qs = qh + 4;
        uint32_t h;
        std::memcpy(&h, qh, 4);
        int16_t* q = p.q + i * QK;
        const int off = one ? 0 : -16;
        for (int j = 0; j < 16; ++j) {
          q[j] = (int16_t)(((qs[j] & 0xF) | (((h >> j) & 1) << 4)) + off);
          q[j + 16] = (int16_t)(((qs[j] >> 4) | (((h >> (j + 16)) & 1) << 4)) + off);
        }
        uint16_t d, m = 0;
        std::memcpy(&d, blk, 2);
        if (one) std::memcpy(&m, blk + 2, 2);
        p.dw[i] = h2f(d);
        p.mw[i] = one ? h2f(m) : 0.0f;
      }
      return;
    }
    case GgmlType::Q8_0: {
      const auto* b = reinterpret_cast<const BlockQ8_0*>(src);
      for (int64_t i = 0; i < nb; ++i) {
        for (int j = 0; j < QK; ++j) p.q[i * QK + j] = b[i].qs[j];
        p.dw[i] = h2f(b[i].d);
        p.mw[i] = 0.0f;
      }
      return;
    }
    case GgmlType::Q4_K:
    case GgmlType::Q5_K: {
      const bool five = type == GgmlType::Q5_K;
      const size_t bs = five ? sizeof(BlockQ5_K) : sizeof(BlockQ4_K);
      for (int64_t s = 0; s < nb / 8; ++s) {
        const uint8_t* blk = src + s * bs;
        uint16_t dh, mh;
        std::memcpy(&dh, blk, 2);
        std::memcpy(&mh, blk + 2, 2);
        const float d = h2f(dh), dmin = h2f(mh);
        const uint8_t* scales = blk + 4;
        const uint8_t* qh = blk + 16;
        const uint8_t* ql = five ? blk + 48 : blk + 16;
        int16_t* q = p.q + s * QK_K;
        for (int j = 0; j < 4; ++j, ql += 32, q += 64) {
#if DUO_ISA_AVX2
          const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ql));
          const __m256i m4 = _mm256_set1_epi8(0x0F);
          const __m256i lo = _mm256_and_si256(raw, m4), hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(q), _mm256_cvtepu8_epi16(_mm256_castsi256_si128(lo)));
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + 16), _mm256_cvtepu8_epi16(_mm256_extracti128_si256(lo, 1)));
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + 32), _mm256_cvtepu8_epi16(_mm256_castsi256_si128(hi)));
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + 48), _mm256_cvtepu8_epi16(_mm256_extracti128_si256(hi, 1)));
#else
          nib_split(ql, 32, q, q + 32, 0);
#endif
          if (five) {
            const uint8_t u0 = (uint8_t)(1u << (2 * j)), u1 = (uint8_t)(2u << (2 * j));
            for (int l = 0; l < 32; ++l) {
              q[l] = (int16_t)(q[l] + ((qh[l] & u0) ? 16 : 0));
              q[32 + l] = (int16_t)(q[32 + l] + ((qh[l] & u1) ? 16 : 0));
            }
          }
        }
        for (int j = 0; j < 8; ++j) {
          uint8_t sc, m;
          kquant_scale_min(j, scales, sc, m);
          p.dw[s * 8 + j] = d * sc;
          p.mw[s * 8 + j] = -dmin * m;
        }
      }
      return;
    }
    case GgmlType::Q6_K: {
      const auto* b = reinterpret_cast<const BlockQ6_K*>(src);
      for (int64_t s = 0; s < nb / 8; ++s) {
        const uint8_t* ql = b[s].ql;
        const uint8_t* qh = b[s].qh;
        const int8_t* sc = b[s].scales;
        int16_t* q = p.q + s * QK_K;
        for (int n = 0; n < QK_K; n += 128, ql += 64, qh += 32, sc += 8, q += 128) {
#if DUO_ISA_AVX2
          // Four 32-element groups of 6-bit values (0..63) as bytes, then (v - 32) * scale
          // per 16 elements in int16 (|.| <= 4096).
          const __m256i l0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ql));
          const __m256i l1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ql + 32));
          const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qh));
          const __m256i m4 = _mm256_set1_epi8(0x0F), m30 = _mm256_set1_epi8(0x30);
          const __m256i v[4] = {
              _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_and_si256(_mm256_slli_epi16(h, 4), m30)),
              _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_and_si256(_mm256_slli_epi16(h, 2), m30)),
              _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_and_si256(h, m30)),
              _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                              _mm256_and_si256(_mm256_srli_epi16(h, 2), m30))};
          const __m256i off = _mm256_set1_epi16(32);
          for (int g = 0; g < 4; ++g) {
            const __m256i a = _mm256_sub_epi16(_mm256_cvtepu8_epi16(_mm256_castsi256_si128(v[g])), off);
            const __m256i b2 = _mm256_sub_epi16(_mm256_cvtepu8_epi16(_mm256_extracti128_si256(v[g], 1)), off);
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + 32 * g),
                                _mm256_mullo_epi16(a, _mm256_set1_epi16(sc[2 * g])));
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + 32 * g + 16),
                                _mm256_mullo_epi16(b2, _mm256_set1_epi16(sc[2 * g + 1])));
          }
          continue;
#endif
          for (int l = 0; l < 32; ++l) {
            const int is = l / 16;
            q[l] = (int16_t)(((int)((ql[l] & 0xF) | ((qh[l] & 3) << 4)) - 32) * sc[is]);
            q[l + 32] = (int16_t)(((int)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32) * sc[is + 2]);
            q[l + 64] = (int16_t)(((int)((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32) * sc[is + 4]);
            q[l + 96] = (int16_t)(((int)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32) * sc[is + 6]);
          }
        }
        const float d = h2f(b[s].d);
        for (int j = 0; j < 8; ++j) {
          p.dw[s * 8 + j] = d;
          p.mw[s * 8 + j] = 0.0f;
        }
      }
      return;
    }
    case GgmlType::Q3_K: {
      // (sc - 32) * q with q in -4..3: |.| <= 128. Element e of 32-block g: bits 2 (g % 4)
      // of qs[32 (g / 4) + e], high bit g of hmask[e].
      const auto* b = reinterpret_cast<const BlockQ3_K*>(src);
      for (int64_t s = 0; s < nb / 8; ++s) {
        int8_t sc[16];
        q3k_scales(b[s].scales, sc);
        int16_t* q = p.q + s * QK_K;
        for (int g = 0; g < 8; ++g, q += 32) {
          const uint8_t* qs = b[s].qs + 32 * (g / 4);
          const int shift = 2 * (g % 4);
          for (int e = 0; e < 32; ++e) {
            const int v = ((qs[e] >> shift) & 3) - (((b[s].hmask[e] >> g) & 1) ? 0 : 4);
            q[e] = (int16_t)(v * sc[2 * g + e / 16]);
          }
        }
        const float d = h2f(b[s].d);
        for (int j = 0; j < 8; ++j) {
          p.dw[s * 8 + j] = d;
          p.mw[s * 8 + j] = 0.0f;
        }
      }
      return;
    }
    case GgmlType::IQ4_NL: {
      const auto* b = reinterpret_cast<const BlockIQ4_NL*>(src);
      for (int64_t i = 0; i < nb; ++i) {
        iq4_grid(b[i].qs, p.q + i * QK);
        p.dw[i] = h2f(b[i].d);
        p.mw[i] = 0.0f;
      }
      return;
    }
    case GgmlType::IQ4_XS: {
      const auto* b = reinterpret_cast<const BlockIQ4_XS*>(src);
      for (int64_t s = 0; s < nb / 8; ++s) {
        const float d = h2f(b[s].d);
        for (int ib = 0; ib < 8; ++ib) {
          iq4_grid(b[s].qs + 16 * ib, p.q + s * QK_K + 32 * ib);
          p.dw[s * 8 + ib] = d * (float)iq4xs_scale(b[s].scales_h, b[s].scales_l, ib);
          p.mw[s * 8 + ib] = 0.0f;
        }
      }
      return;
    }
    default: fail_no_integer_path(type);
  }
}

// One row panel . one token: sum_b dw xd isum + mw xs.
float dot_panel(const PanelRow& p, const ActQ16* a, const float* as, int64_t nb, bool mins) {
  float r = 0.0f;
#if DUO_ISA_AVX2
  __m256 acc = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.q + b * QK));
    const __m256i hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.q + b * QK + 16));
    acc = _mm256_fmadd_ps(_mm256_set1_ps(p.dw[b] * a[b].d), _mm256_cvtepi32_ps(dot_block16(lo, hi, a[b].q)), acc);
  }
  r = hsum256(acc);
#else
  for (int64_t b = 0; b < nb; ++b) {
    int64_t isum = 0;
    for (int j = 0; j < QK; ++j) isum += p.q[b * QK + j] * a[b].q[j];
    r += p.dw[b] * a[b].d * (float)isum;
  }
#endif
  if (mins) r += dot_f32(p.mw, as, (int)nb);
  return r;
}

float* thread_buffer(size_t n) {
  static thread_local std::vector<float> buf;
  return scratch(buf, n);
}
struct PanelBuf {
  std::vector<int16_t> q;
  std::vector<float> f;
};
PanelBuf& thread_panel() {
  static thread_local PanelBuf p;
  return p;
}

void quantize_acts(const float* x, int64_t n, int64_t cols, ActBuf& a, ThreadPool& pool) {
  const int64_t nb = cols / QK;
  ActQ16* q = scratch(a.q, (size_t)(n * nb));
  float* s = scratch(a.s, (size_t)(n * nb));
  auto body = [&](int64_t t0, int64_t t1, int) {
    for (int64_t t = t0; t < t1; ++t) {
      quantize_act_q16(x + t * cols, nb, q + t * nb);
      for (int64_t b = 0; b < nb; ++b) s[t * nb + b] = q[t * nb + b].s;
    }
  };
  // ~16K values (a batched step's 32 tokens of a 576-wide model) take ~10 us alone, a few
  // times what a parallel region costs; smaller inputs (one-token decode) stay on this thread.
  if (n * cols >= 16384)
    pool.parallel_for(n, body);
  else
    body(0, n, 0);
}

// ---------------------------------------------------------------------------------------------
// Few tokens: one pass over each weight row. Rows [r0, r1) of w for n tokens (a, as: their
// quantized activations when w is quantized).
void rows_range(const MatmulWeight& w, const float* x, const ActQ16* a, const float* as, int64_t n, float* y,
                int64_t r0, int64_t r1) {
  const int64_t nb = w.cols / QK;
  const bool flt = is_float_type(w.type);
  const bool mins = has_min(w.type);
  PanelRow p{};
  float* row = nullptr;
  if (flt) {
    row = thread_buffer((size_t)w.cols);
  } else if (w.type != GgmlType::Q4_1 && w.type != GgmlType::Q4_0 && w.type != GgmlType::Q8_0 &&
             w.type != GgmlType::Q4_K && w.type != GgmlType::Q2_K) {
    PanelBuf& pb = thread_panel();
    p.q = scratch(pb.q, (size_t)w.cols);
    p.dw = scratch(pb.f, (size_t)(2 * nb));
    p.mw = p.dw + nb;
  }
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* wr = w.data + r * w.row_stride;
    switch (w.type) {
      case GgmlType::Q4_1:
        for (int64_t t = 0; t < n; ++t) y[t * w.rows + r] = dot_q4_1(reinterpret_cast<const BlockQ4_1*>(wr), a + t * nb, nb);
        break;
      case GgmlType::Q4_0:
        for (int64_t t = 0; t < n; ++t) y[t * w.rows + r] = dot_q4_0(reinterpret_cast<const BlockQ4_0*>(wr), a + t * nb, nb);
        break;
      case GgmlType::Q4_K:
        for (int64_t t = 0; t < n; ++t)
          y[t * w.rows + r] = dot_q4_k(reinterpret_cast<const BlockQ4_K*>(wr), a + t * nb, as + t * nb, nb / 8);
        break;
      case GgmlType::Q8_0:
        for (int64_t t = 0; t < n; ++t) y[t * w.rows + r] = dot_q8_0(reinterpret_cast<const BlockQ8_0*>(wr), a + t * nb, nb);
        break;
      case GgmlType::Q2_K:
        for (int64_t t = 0; t < n; ++t) y[t * w.rows + r] = dot_q2_k(reinterpret_cast<const BlockQ2_K*>(wr), a + t * nb, nb / 8);
        break;
      default:
        if (flt && w.type != GgmlType::F32 && n == 1) {
          y[r] = dot_half(w.type, reinterpret_cast<const uint16_t*>(wr), x, w.cols);
        } else if (flt) {
          const float* wf = reinterpret_cast<const float*>(wr);
          if (w.type != GgmlType::F32) {
            dequantize_row(w.type, wr, row, w.cols);
            wf = row;
          }
          for (int64_t t = 0; t < n; ++t) y[t * w.rows + r] = dot_f32(wf, x + t * w.cols, (int)w.cols);
        } else {
          unpack_row(w.type, wr, nb, p);
          for (int64_t t = 0; t < n; ++t) y[t * w.rows + r] = dot_panel(p, a + t * nb, as + t * nb, nb, mins);
        }
    }
  }
}

// The rows of every matrix in one parallel region (sharing x's quantization).
void matmul_rows(const MatmulOut* outs, int count, const float* x, int64_t n, ThreadPool& pool) {
  bool any_quant = false;
  int64_t total = 0;
  for (int i = 0; i < count; ++i) any_quant |= !is_float_type(outs[i].w.type), total += outs[i].w.rows;
  ActBuf& ab = act_buffer();
  if (any_quant) quantize_acts(x, n, outs[0].w.cols, ab, pool);
  const ActQ16* a = ab.q.data();
  const float* as = ab.s.data();
  pool.parallel_for(total, [&](int64_t r0, int64_t r1, int) {
    int64_t off = 0;
    for (int i = 0; i < count; ++i) {
      const MatmulWeight& w = outs[i].w;
      const int64_t b = std::max(r0, off), e = std::min(r1, off + w.rows);
      if (b < e) rows_range(w, x, a, as, n, outs[i].y, b - off, e - off);
      off += w.rows;
    }
  }, 16);
}

// ---------------------------------------------------------------------------------------------
// Many tokens, quantized weights. Activations are regrouped so that 8 tokens share a vector:
// for token group g and block b, lane k of pair vector j holds elements (2j, 2j+1) of token
// 8g+k as two int16. A weight pair broadcast to all lanes and _mm256_madd_epi16 then gives
// that pair's products for 8 tokens at once, so the per-block float work (convert, scale,
// min term) is shared by 8 tokens. Rows are unpacked to int16 panels a block of rows at a time.
struct ActGroupBuf {
  std::vector<ActGroupBlock> blocks;
};
ActGroupBuf& act_group_buffer() {
  static thread_local ActGroupBuf a;
  return a;
}

// R panel rows x 8 tokens of group `g` (nb blocks). Lane k of out[r] = row r . token k.
template <int R, bool kSplit>
inline void tile_group(const PanelRow* rows, const ActGroupBlock* g, int64_t nb, bool mins, float out[R][kTG]) {
#if DUO_ISA_AVX2
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const ActGroupBlock& ab = g[b];
    __m256i isum[R];
    for (int r = 0; r < R; ++r) isum[r] = _mm256_setzero_si256();
    const int16_t* wq[R];
    for (int r = 0; r < R; ++r) wq[r] = rows[r].q + b * QK;
    const __m256 xd = _mm256_loadu_ps(ab.d);
    __m256 sc[R];
    for (int r = 0; r < R; ++r) sc[r] = _mm256_mul_ps(_mm256_broadcast_ss(rows[r].dw + b), xd);
    for (int j = 0; j < QK / 2; ++j) {
      const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ab.q[j]));
      for (int r = 0; r < R; ++r) {
        int32_t pair;
        std::memcpy(&pair, wq[r] + 2 * j, 4);
        isum[r] = _mm256_add_epi32(isum[r], _mm256_madd_epi16(_mm256_set1_epi32(pair), x));
      }
      if (kSplit && j == QK / 4 - 1) {
        for (int r = 0; r < R; ++r) {
          acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r]), sc[r], acc[r]);
          isum[r] = _mm256_setzero_si256();
        }
      }
    }
    for (int r = 0; r < R; ++r) acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r]), sc[r], acc[r]);
    if (mins) {
      const __m256 xs = _mm256_loadu_ps(ab.s);
      for (int r = 0; r < R; ++r) acc[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(rows[r].mw + b), xs, acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) _mm256_storeu_ps(out[r], acc[r]);
#else
  for (int r = 0; r < R; ++r)
    for (int k = 0; k < kTG; ++k) {
      float sum = 0.0f;
      for (int64_t b = 0; b < nb; ++b) {
        int64_t isum = 0;
        for (int j = 0; j < QK / 2; ++j) {
          const int32_t v = g[b].q[j][k];
          isum += rows[r].q[b * QK + 2 * j] * (int16_t)(v & 0xFFFF) + rows[r].q[b * QK + 2 * j + 1] * (int16_t)(v >> 16);
        }
        sum += rows[r].dw[b] * g[b].d[k] * (float)isum + (mins ? rows[r].mw[b] * g[b].s[k] : 0.0f);
      }
      out[r][k] = sum;
    }
#endif
}

template <bool kSplit>
inline void tile_rows(int rr, const PanelRow* rows, const ActGroupBlock* g, int64_t nb, bool mins,
                      float out[kTileRows][kTG]) {
  switch (rr) {
    case 6: tile_group<6, kSplit>(rows, g, nb, mins, out); break;
    case 5: tile_group<5, kSplit>(rows, g, nb, mins, out); break;
    case 4: tile_group<4, kSplit>(rows, g, nb, mins, out); break;
    case 3: tile_group<3, kSplit>(rows, g, nb, mins, out); break;
    case 2: tile_group<2, kSplit>(rows, g, nb, mins, out); break;
    default: tile_group<1, kSplit>(rows, g, nb, mins, out); break;
  }
}

void matmul_tiled_int(const MatmulWeight& w, const float* x, int64_t n, float* y, ThreadPool& pool) {
  const int64_t nb = w.cols / QK;
  const int64_t ng = (n + kTG - 1) / kTG;
  ActGroupBlock* act = scratch(act_group_buffer().blocks, (size_t)(ng * nb));
  // Quantize and regroup the activations, a token group per task.
  pool.parallel_for(ng, [&](int64_t g0, int64_t g1, int) {
    ActQ16 tmp[64];
    for (int64_t g = g0; g < g1; ++g) {
      ActGroupBlock* gb = act + g * nb;
      for (int k = 0; k < kTG; ++k) {
        const int64_t t = g * kTG + k;
        for (int64_t b0 = 0; b0 < nb; b0 += 64) {
          const int64_t cnt = std::min<int64_t>(64, nb - b0);
          if (t < n) {
            quantize_act_q16(x + t * w.cols + b0 * QK, cnt, tmp);
          } else {
            std::memset(static_cast<void*>(tmp), 0, sizeof(ActQ16) * cnt);
          }
          for (int64_t b = 0; b < cnt; ++b) {
            ActGroupBlock& dst = gb[b0 + b];
            int32_t pairs[QK / 2];
            std::memcpy(pairs, tmp[b].q, sizeof(pairs));
            for (int j = 0; j < QK / 2; ++j) dst.q[j][k] = pairs[j];
            dst.d[k] = tmp[b].d;
            dst.s[k] = tmp[b].s;
          }
        }
      }
    }
  });
  const bool mins = has_min(w.type), split = w.type == GgmlType::Q6_K;
  // Tasks are (row block, token-group chunk): token chunks only split the work when there are
  // too few row blocks to keep every thread busy.
  const int64_t blocks = (w.rows + kRowBlock - 1) / kRowBlock;
  const int64_t tchunks = std::min<int64_t>(ng, std::max<int64_t>(1, (2 * pool.size() + blocks - 1) / blocks));
  const int64_t gper = (ng + tchunks - 1) / tchunks;
  pool.parallel_for_dynamic(blocks * tchunks, 1, [&](int64_t task0, int64_t task1, int) {
    PanelBuf& pb = thread_panel();
    int16_t* pq = scratch(pb.q, (size_t)(kRowBlock * w.cols));
    float* pf = scratch(pb.f, (size_t)(kRowBlock * 2 * nb));
    PanelRow rows[kRowBlock];
    for (int i = 0; i < kRowBlock; ++i) rows[i] = {pq + i * w.cols, pf + 2 * i * nb, pf + (2 * i + 1) * nb};
    alignas(32) float out[kTileRows][kTG];
    for (int64_t task = task0; task < task1; ++task) {
      const int64_t blk = task / tchunks, g_begin = (task % tchunks) * gper, g_end = std::min(ng, g_begin + gper);
      const int64_t r0 = blk * kRowBlock;
      const int nr = (int)std::min<int64_t>(kRowBlock, w.rows - r0);
      for (int i = 0; i < nr; ++i) unpack_row(w.type, w.data + (r0 + i) * w.row_stride, nb, rows[i]);
      for (int64_t g = g_begin; g < g_end; ++g) {
        const int nt = (int)std::min<int64_t>(kTG, n - g * kTG);
        for (int i = 0; i < nr; i += kTileRows) {
          const int rr = std::min(kTileRows, nr - i);
          const ActGroupBlock* ag = act + g * nb;
          if (split)
            tile_rows<true>(rr, rows + i, ag, nb, mins, out);
          else
            tile_rows<false>(rr, rows + i, ag, nb, mins, out);
          for (int r = 0; r < rr; ++r)
            for (int k = 0; k < nt; ++k) y[(g * kTG + k) * w.rows + r0 + i + r] = out[r][k];
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Many tokens, float weights: rows x tokens tiles over dequantized row blocks.

// y[t][r0 + i] for i < 3, t < 4: dot products of 3 rows (wr, stride ld) with 4 tokens.
inline void tile_3x4(const float* wr, int64_t ld, const float* x0, int64_t ldx, int64_t cols, float* y, int64_t ldy,
                     int nr, int nt) {
#if DUO_ISA_AVX2
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

void matmul_tiled(const MatmulWeight& w, const float* x, int64_t n, float* y, ThreadPool& pool) {
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

}  // namespace

extern const MatmulKernels kernels = {quantize_acts, matmul_rows, matmul_tiled_int, matmul_tiled, unpack_row};

}  // namespace duo::mm::DUO_ISA_NS
