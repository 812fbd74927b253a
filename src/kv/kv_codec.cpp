#include "kv/kv_codec.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#if defined(__F16C__)
#include <immintrin.h>
#endif

#include "core/error.h"
#include "core/fp16.h"
#include "kv/kv_quant.h"

namespace duo {

void encode_rows(KvType type, const float* src, int64_t src_stride, int64_t n, int d, void* dst) {
  for (int64_t r = 0; r < n; ++r) {
    const float* s = src + r * src_stride;
    switch (type) {
      case KvType::F32: std::memcpy(static_cast<float*>(dst) + r * d, s, sizeof(float) * d); break;
      case KvType::BF16: {
        uint16_t* o = static_cast<uint16_t*>(dst) + r * d;
        for (int c = 0; c < d; ++c) o[c] = f32_to_bf16(s[c]);
        break;
      }
      case KvType::F16: {
        uint16_t* o = static_cast<uint16_t*>(dst) + r * d;
        int c = 0;
#if defined(__F16C__)
        // vcvtps2ph rounds to nearest even like f32_to_f16 (same bits but for NaN payloads):
        // every cache append of every token goes through here.
        for (; c + 8 <= d; c += 8)
          _mm_storeu_si128(reinterpret_cast<__m128i*>(o + c),
                           _mm256_cvtps_ph(_mm256_loadu_ps(s + c), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#endif
        for (; c < d; ++c) o[c] = f32_to_f16(s[c]);
        break;
      }
      default: fail("encode_rows: {} is not a row format", to_string(type));
    }
  }
}

void decode_rows(KvType type, const void* src, int64_t stride, int64_t n, int d, float* dst) {
  for (int64_t r = 0; r < n; ++r) {
    float* o = dst + r * d;
    switch (type) {
      case KvType::F32: std::memcpy(o, static_cast<const float*>(src) + r * stride, sizeof(float) * d); break;
      case KvType::BF16: {
        const uint16_t* s = static_cast<const uint16_t*>(src) + r * stride;
        for (int c = 0; c < d; ++c) o[c] = bf16_to_f32(s[c]);
        break;
      }
      case KvType::F16: {
        const uint16_t* s = static_cast<const uint16_t*>(src) + r * stride;
        for (int c = 0; c < d; ++c) o[c] = f16_to_f32(s[c]);
        break;
      }
      default: fail("decode_rows: {} is not a row format", to_string(type));
    }
  }
}

namespace {
// Packs codes of one row (d values) into rb bytes.
void pack_codes(const int* q, int d, int bits, uint8_t* out) {
  if (bits == 8) {
    for (int c = 0; c < d; ++c) out[c] = (uint8_t)q[c];
  } else {
    for (int c = 0; c < d; c += 2) out[c / 2] = (uint8_t)(q[c] | (q[c + 1] << 4));
  }
}
}  // namespace

void quantize_group(const float* k, const float* v, int d, int bits, int gi, uint8_t* kpage, uint8_t* vpage) {
  constexpr int G = kvq::kGroup;
  DUO_CHECK(d % G == 0 && (bits == 8 || bits == 4) && gi >= 0 && gi < kvq::kGroupsPerPage,
            "quantize_group: unsupported shape (head dim {}, {} bits, group {})", d, bits, gi);
  DUO_CHECK(d <= 512, "quantize_group: head dim {} too large", d);
  const kvq::QuantLayout L{d, bits};
  int q[512];
  // Keys: one (scale, min) per channel over the group's positions.
  float ks[512], km[512];
  for (int c = 0; c < d; ++c) {
    float lo = INFINITY, hi = -INFINITY;
    for (int t = 0; t < G; ++t) lo = fminf(lo, k[t * d + c]), hi = fmaxf(hi, k[t * d + c]);
    const uint32_t w = kvq::make_params(lo, hi, bits);
    std::memcpy(kpage + L.k_params(gi, c), &w, 4);
    ks[c] = kvq::params_scale(w), km[c] = kvq::params_min(w);
  }
  for (int t = 0; t < G; ++t) {
    for (int c = 0; c < d; ++c) q[c] = kvq::encode(k[t * d + c], ks[c], km[c], bits);
    pack_codes(q, d, bits, kpage + L.codes(gi * G + t));
  }
  // Values: one (scale, min) per position per group of 64 channels.
  for (int t = 0; t < G; ++t) {
    const float* row = v + t * d;
    for (int cg = 0; cg < d / G; ++cg) {
      float lo = INFINITY, hi = -INFINITY;
      for (int c = cg * G; c < (cg + 1) * G; ++c) lo = fminf(lo, row[c]), hi = fmaxf(hi, row[c]);
      const uint32_t w = kvq::make_params(lo, hi, bits);
      std::memcpy(vpage + L.v_params(gi * G + t, cg), &w, 4);
      const float s = kvq::params_scale(w), m = kvq::params_min(w);
      for (int c = cg * G; c < (cg + 1) * G; ++c) q[c] = kvq::encode(row[c], s, m, bits);
    }
    pack_codes(q, d, bits, vpage + L.codes(gi * G + t));
  }
}

void dequantize_group(const uint8_t* kpage, const uint8_t* vpage, int d, int bits, int gi, int r0, int n, float* k,
                      float* v) {
  constexpr int G = kvq::kGroup;
  const kvq::QuantLayout L{d, bits};
  DUO_CHECK(d % G == 0 && d <= 512 && (bits == 8 || bits == 4) && gi >= 0 && gi < kvq::kGroupsPerPage && r0 >= 0 &&
                r0 + n <= G,
            "dequantize_group: unsupported shape (head dim {}, {} bits, group {}, rows [{}, {}))", d, bits, gi, r0,
            r0 + n);
  float ks[512], km[512];
  for (int c = 0; c < d; ++c) {
    uint32_t w;
    std::memcpy(&w, kpage + L.k_params(gi, c), 4);
    ks[c] = kvq::params_scale(w), km[c] = kvq::params_min(w);
  }
  for (int r = 0; r < n; ++r) {
    const int t = gi * G + r0 + r;
    const uint8_t* kc = kpage + L.codes(t);
    const uint8_t* vc = vpage + L.codes(t);
    for (int c = 0; c < d; ++c) k[r * d + c] = kvq::decode(kvq::code_at(kc, c, bits), ks[c], km[c]);
    for (int cg = 0; cg < d / G; ++cg) {
      uint32_t w;
      std::memcpy(&w, vpage + L.v_params(t, cg), 4);
      const float s = kvq::params_scale(w), m = kvq::params_min(w);
      for (int c = cg * G; c < (cg + 1) * G; ++c) v[r * d + c] = kvq::decode(kvq::code_at(vc, c, bits), s, m);
    }
  }
}

}  // namespace duo
