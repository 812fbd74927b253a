// KIVI-style KV quantization (kv/kv_quant.h, kv/kv_codec.*) and the quantized CPU cache layout.
// Round trip: every element comes back within half of its group's stored scale, and the stored
// scale is close to the best possible one for the group's range (so the bound is not vacuous).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>

#include "core/fp16.h"
#include "backend/cpu/kv_cache.h"
#include "kv/kv_codec.h"
#include "kv/kv_quant.h"

namespace duo {
namespace {

constexpr int G = kvq::kGroup;

float ulp_half(float x) {  // spacing of halves around x
  const float a = std::max(std::fabs(x), 6.1035156e-05f);  // smallest normal half
  return std::ldexp(1.0f, std::ilogb(a) - 10);
}

TEST(KvQuant, HalfDirectedRounding) {
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> xs = {0.0f, -0.0f, 1.0f, -1.0f, 65504.0f, -65504.0f, 1e-7f, -1e-7f, 6e-8f, 3.0e-8f, 0.1f, -0.1f};
  for (int i = 0; i < 20000; ++i) xs.push_back(u(rng) * std::pow(10.0f, (float)(i % 12) - 7.0f));
  for (float x : xs) {
    const uint16_t d = kvq::half_round_down(x), up = kvq::half_round_up(x);
    ASSERT_LE(f16_to_f32(d), x) << x;
    ASSERT_GE(f16_to_f32(up), x) << x;
    // Tight: the next half beyond each is on the other side of x.
    ASSERT_GT(f16_to_f32(kvq::half_next_up(d)), x) << x;
    ASSERT_LT(f16_to_f32(kvq::half_next_down(up)), x) << x;
    if (f16_to_f32(f32_to_f16(x)) == x) {
      EXPECT_EQ(f16_to_f32(d), x);
      EXPECT_EQ(f16_to_f32(up), x);
    }
  }
}

// encode_rows to f16 (vectorized with F16C where the build has it) gives f32_to_f16's bits for
// every value but NaN: ties, subnormals, the overflow edge, infinities, signed zeros, random
// magnitudes; rows of a length that is not a multiple of 8 take the scalar tail.
TEST(KvQuant, EncodeRowsF16EqualsScalar) {
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> xs = {0.0f,     -0.0f,     1.0f,      65504.0f, 65519.99f, 65520.0f, -65520.0f, 1e-8f,
                           2.98e-8f, 2.99e-8f,  5.96e-8f,  6.1e-5f,  -6.1e-5f,  1e30f,    INFINITY,  -INFINITY,
                           1.00048828125f /* halfway between two halves: to even */, 1.00146484375f, 3.0e-5f};
  for (int i = 0; i < 40000; ++i) xs.push_back(u(rng) * std::pow(10.0f, (float)(i % 14) - 9.0f));
  for (int d : {64, 13}) {
    const int64_t n = (int64_t)xs.size() / d;
    std::vector<uint16_t> out((size_t)(n * d));
    encode_rows(KvType::F16, xs.data(), d, n, d, out.data());
    for (int64_t i = 0; i < n * d; ++i) ASSERT_EQ(out[(size_t)i], f32_to_f16(xs[(size_t)i])) << xs[(size_t)i];
  }
}

TEST(KvQuant, PageLayoutBytes) {
  EXPECT_EQ((kvq::QuantLayout{128, 4}.page_bytes()), 256 * 64 + 4 * 128 * 4);  // 18432
  EXPECT_EQ((kvq::QuantLayout{128, 8}.page_bytes()), 256 * 128 + 4 * 128 * 4);  // 34816
  EXPECT_EQ((kvq::QuantLayout{64, 4}.page_bytes()), 256 * 32 + 4 * 64 * 4);
  // K params of the 4 groups and V params of the 256 positions fill the same tail.
  const kvq::QuantLayout L{128, 4};
  EXPECT_EQ(L.k_params(3, 127) + 4, L.page_bytes());
  EXPECT_EQ(L.v_params(255, 1) + 4, L.page_bytes());
  EXPECT_EQ(kvq::sink16(0), 0);
  EXPECT_EQ(kvq::sink16(1), 64);
  EXPECT_EQ(kvq::sink16(64), 64);
  EXPECT_EQ(kvq::sink16(65), 128);
}

// A group with channels of very different character: outliers, constant channels, big offsets
// with a tiny spread, zeros, mixed signs.
void make_group(std::mt19937& rng, int d, std::vector<float>& k, std::vector<float>& v) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  k.assign((size_t)G * d, 0.0f), v.assign((size_t)G * d, 0.0f);
  for (int c = 0; c < d; ++c) {
    const int kind = c % 6;
    for (int t = 0; t < G; ++t) {
      float x = nd(rng);
      if (kind == 1) x = 40.0f * x;               // outlier channel
      if (kind == 2) x = 3.25f;                   // constant
      if (kind == 3) x = 100.0f + 0.01f * x;      // offset, tiny spread
      if (kind == 4) x = 0.0f;
      if (kind == 5) x = -7.0f + 0.5f * x;
      k[(size_t)t * d + c] = bf16_to_f32(f32_to_bf16(x));
    }
  }
  for (int t = 0; t < G; ++t)
    for (int c = 0; c < d; ++c) {
      float x = nd(rng) * (t % 3 == 0 ? 10.0f : 1.0f) + (t % 5 == 0 ? 50.0f : 0.0f);
      if (t == 7) x = 0.0f;  // an all-zero token
      v[(size_t)t * d + c] = bf16_to_f32(f32_to_bf16(x));
    }
}

void check_round_trip(int d, int bits, uint32_t seed) {
  std::mt19937 rng(seed);
  const kvq::QuantLayout L{d, bits};
  std::vector<uint8_t> kp((size_t)L.page_bytes(), 0xAB), vp((size_t)L.page_bytes(), 0xAB);
  for (int gi = 0; gi < kvq::kGroupsPerPage; ++gi) {
    std::vector<float> k, v, kd((size_t)G * d), vd((size_t)G * d);
    make_group(rng, d, k, v);
    quantize_group(k.data(), v.data(), d, bits, gi, kp.data(), vp.data());
    dequantize_group(kp.data(), vp.data(), d, bits, gi, 0, G, kd.data(), vd.data());
    const float lv = (float)kvq::levels(bits);
    for (int c = 0; c < d; ++c) {
      uint32_t w;
      std::memcpy(&w, kp.data() + L.k_params(gi, c), 4);
      const float s = kvq::params_scale(w), m = kvq::params_min(w);
      float lo = INFINITY, hi = -INFINITY;
      for (int t = 0; t < G; ++t) lo = std::min(lo, k[(size_t)t * d + c]), hi = std::max(hi, k[(size_t)t * d + c]);
      ASSERT_LE(m, lo);
      // Near-optimal scale: the range plus the min's rounding, rounded up once more to a half.
      const float best = (hi - lo + ulp_half(lo)) / lv;
      ASSERT_LE(s, best * (1.0f + 1.0f / 512) + 6e-8f) << "channel " << c << " range [" << lo << ", " << hi << "]";
      for (int t = 0; t < G; ++t) {
        const float x = k[(size_t)t * d + c], xh = kd[(size_t)t * d + c];
        ASSERT_LE(std::fabs(x - xh), s / 2 * (1 + 1e-5f) + 1e-6f * std::fabs(x))
            << "K group " << gi << " token " << t << " channel " << c << " scale " << s;
      }
    }
    for (int t = 0; t < G; ++t)
      for (int cg = 0; cg < d / G; ++cg) {
        uint32_t w;
        std::memcpy(&w, vp.data() + L.v_params(gi * G + t, cg), 4);
        const float s = kvq::params_scale(w);
        float lo = INFINITY, hi = -INFINITY;
        for (int c = cg * G; c < (cg + 1) * G; ++c)
          lo = std::min(lo, v[(size_t)t * d + c]), hi = std::max(hi, v[(size_t)t * d + c]);
        ASSERT_LE(s, (hi - lo + ulp_half(lo)) / lv * (1.0f + 1.0f / 512) + 6e-8f);
        for (int c = cg * G; c < (cg + 1) * G; ++c) {
          const float x = v[(size_t)t * d + c], xh = vd[(size_t)t * d + c];
          ASSERT_LE(std::fabs(x - xh), s / 2 * (1 + 1e-5f) + 1e-6f * std::fabs(x))
              << "V group " << gi << " token " << t << " channel " << c << " scale " << s;
        }
      }
    // Partial reads return the same rows.
    std::vector<float> k5((size_t)5 * d), v5((size_t)5 * d);
    dequantize_group(kp.data(), vp.data(), d, bits, gi, 17, 5, k5.data(), v5.data());
    for (int i = 0; i < 5 * d; ++i) {
      ASSERT_EQ(k5[i], kd[(size_t)17 * d + i]);
      ASSERT_EQ(v5[i], vd[(size_t)17 * d + i]);
    }
  }
}

TEST(KvQuant, RoundTripWithinHalfScaleQ8) { check_round_trip(128, 8, 1); }
TEST(KvQuant, RoundTripWithinHalfScaleQ4) { check_round_trip(128, 4, 2); }
TEST(KvQuant, RoundTripD64) {
  check_round_trip(64, 4, 3);
  check_round_trip(64, 8, 4);
}

TEST(KvQuant, ConstantAndHugeValues) {
  // A constant group comes back exactly when the constant is a half; values beyond the half
  // range saturate at +-65504 instead of turning into inf or NaN.
  const int d = 64;
  std::vector<float> k((size_t)G * d, 1.5f), v((size_t)G * d, -2.0f), kd((size_t)G * d), vd((size_t)G * d);
  k[5] = 1e6f, v[9] = -1e6f;
  const kvq::QuantLayout L{d, 4};
  std::vector<uint8_t> kp((size_t)L.page_bytes()), vp((size_t)L.page_bytes());
  quantize_group(k.data(), v.data(), d, 4, 2, kp.data(), vp.data());
  dequantize_group(kp.data(), vp.data(), d, 4, 2, 0, G, kd.data(), vd.data());
  for (int i = 0; i < G * d; ++i) {
    ASSERT_TRUE(std::isfinite(kd[i]) && std::isfinite(vd[i])) << i;
    if (i % d != 5) {
      ASSERT_EQ(kd[i], 1.5f) << i;  // channel 5 shares the outlier's range
    }
    if (i / d != 0) {
      ASSERT_EQ(vd[i], -2.0f) << i;  // token 0 shares it
    }
  }
  EXPECT_NEAR(kd[5], 65504.0f, 65504.0f / 15);
  EXPECT_NEAR(vd[9], -65504.0f, 65504.0f / 15);
}

// A quantized retrieval head: bf16 sink rows, quantized complete groups, bf16 residual; every
// position comes back (in order) within its bound, across chunked appends.
TEST(KvQuant, RetrievalHeadSegmentsCoverEveryPosition) {
  const int d = 64;
  for (KvType type : {KvType::Q8, KvType::Q4})
    for (int sink : {0, 4, 64, 100}) {
      HeadCache h(HeadKind::Retrieval, d, {sink, 256}, type);
      std::mt19937 rng(7);
      std::normal_distribution<float> nd(0.0f, 1.0f);
      std::vector<float> all;
      int64_t n_past = 0;
      for (int64_t chunk : {1, 62, 1, 1, 200, 64, 3, 300, 1}) {
        std::vector<float> rows((size_t)chunk * d);
        for (auto& x : rows) x = nd(rng);
        h.append(rows.data(), rows.data(), chunk, d, n_past);  // K = V: one set of expectations
        all.insert(all.end(), rows.begin(), rows.end());
        n_past += chunk;
        std::vector<KvSegment> segs;
        h.segments(n_past, segs);
        int64_t next = 0;
        const int s16 = kvq::sink16(sink);
        for (const KvSegment& s : segs) {
          ASSERT_EQ(s.pos0, next) << "segments must be consecutive";
          std::vector<float> k((size_t)s.n * d), v((size_t)s.n * d);
          segment_rows(s, 0, s.n, d, k.data(), v.data());
          const bool quant = is_quantized(s.type);
          EXPECT_EQ(quant, s.pos0 >= s16 && s.pos0 + G <= n_past / G * G) << "position " << s.pos0;
          if (quant) {
            EXPECT_EQ(s.n, G);
          }
          for (int64_t r = 0; r < s.n; ++r)
            for (int c = 0; c < d; ++c) {
              const float want = bf16_to_f32(f32_to_bf16(all[(size_t)(s.pos0 + r) * d + c]));
              const float got = k[(size_t)r * d + c];
              const float vgot = v[(size_t)r * d + c];
              if (quant) {  // half a scale: (range of ~64 normals) / levels / 2
                const float tol = type == KvType::Q8 ? 0.05f : 0.4f;
                ASSERT_NEAR(got, want, tol) << "K, position " << s.pos0 + r;
                ASSERT_NEAR(vgot, want, tol) << "V, position " << s.pos0 + r;
              } else {
                ASSERT_EQ(got, want) << "bf16 row, position " << s.pos0 + r;
                ASSERT_EQ(vgot, want) << "bf16 row, position " << s.pos0 + r;
              }
            }
          next += s.n;
        }
        ASSERT_EQ(next, n_past);
        EXPECT_EQ(h.bytes(), HeadCache::bytes_for(HeadKind::Retrieval, d, {sink, 256}, n_past, type));
      }
    }
}

TEST(KvQuant, BytesByTypeAreExact) {
  const int d = 128;
  const StreamingWindow w{64, 256};
  const size_t pages = 3;  // 600 positions
  EXPECT_EQ(HeadCache::bytes_for(HeadKind::Retrieval, d, w, 600, KvType::F32), pages * 2 * 256 * d * 4);
  EXPECT_EQ(HeadCache::bytes_for(HeadKind::Retrieval, d, w, 600, KvType::BF16), pages * 2 * 256 * d * 2);
  EXPECT_EQ(HeadCache::bytes_for(HeadKind::Retrieval, d, w, 600, KvType::F16), pages * 2 * 256 * d * 2);
  const size_t bf16_rows = 2 * 2 * (size_t)d * (64 + 64);  // K and V sink + residual rows
  EXPECT_EQ(HeadCache::bytes_for(HeadKind::Retrieval, d, w, 600, KvType::Q8), pages * 2 * 34816 + bf16_rows);
  EXPECT_EQ(HeadCache::bytes_for(HeadKind::Retrieval, d, w, 600, KvType::Q4), pages * 2 * 18432 + bf16_rows);
  EXPECT_EQ(HeadCache::bytes_for(HeadKind::Streaming, d, w, 600, KvType::Q4), 2 * 2 * (size_t)d * 320);
  EXPECT_EQ(HeadCache::bytes_for(HeadKind::Streaming, d, w, 600, KvType::F32), 2 * 4 * (size_t)d * 320);
  // A cache reports what the formula says, by kind.
  HeadPlan plan = HeadPlan::uniform(2, 2, HeadKind::Retrieval, w);
  plan.kinds[1][1] = HeadKind::Streaming;
  plan.kv_type = KvType::Q4;
  KvCache cache(2, 2, d, plan);
  std::vector<float> rows((size_t)600 * d, 0.5f);
  for (int l = 0; l < 2; ++l)
    for (int h = 0; h < 2; ++h) cache.head(l, h).append(rows.data(), rows.data(), 600, d, 0);
  cache.advance(600);
  EXPECT_EQ(cache.bytes(HeadKind::Retrieval), KvCache::bytes_for(plan, d, 600, HeadKind::Retrieval));
  EXPECT_EQ(cache.bytes(HeadKind::Streaming), KvCache::bytes_for(plan, d, 600, HeadKind::Streaming));
  EXPECT_EQ(cache.bytes(HeadKind::Retrieval), 3 * (pages * 2 * 18432 + bf16_rows));
}

TEST(KvQuant, RejectsUnsupportedHeadDim) {
  EXPECT_THROW(HeadCache(HeadKind::Retrieval, 96, {}, KvType::Q4), std::runtime_error);
  EXPECT_NO_THROW(HeadCache(HeadKind::Retrieval, 96, {}, KvType::BF16));
  EXPECT_THROW(parse_kv_type("q3"), std::runtime_error);
  EXPECT_EQ(parse_kv_type("q4"), KvType::Q4);
}

}  // namespace
}  // namespace duo
