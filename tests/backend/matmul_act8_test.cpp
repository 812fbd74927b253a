// The 8-bit activation mode of the quantized matmul (MatmulWeight::act_bits == 8): its activation
// quantization, its AVX-512 VNNI kernel against a plain reference that quantizes the same way
// (exact integer block sums, so only float rounding separates them), against the float
// product within the bound that 8-bit activations allow, and its fallbacks.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "backend/cpu/matmul.h"
#include "backend/cpu/matmul_internal.h"
#include "core/dequant.h"
#include "core/fp16.h"
#include "core/thread_pool.h"
#include "simd_levels.h"

namespace duo {
namespace {

// Random Q4_0/Q4_1/Q5_0/Q8_0 rows: random nibbles/bytes, f16 scale (and min) ~ N(0, 0.05).
std::vector<uint8_t> random_q(GgmlType type, int64_t rows, int64_t cols, std::mt19937& rng) {
  std::vector<uint8_t> data(row_bytes(type, cols) * rows);
  std::uniform_int_distribution<int> byte(0, 255);
  for (auto& b : data) b = (uint8_t)byte(rng);
  std::normal_distribution<float> nd(0.0f, 0.05f);
  const size_t bs = type_traits(type).block_bytes;
  for (size_t off = 0; off < data.size(); off += bs) {
    for (int k = 0; k < (type == GgmlType::Q4_1 ? 2 : 1); ++k) {
      const uint16_t h = f32_to_f16(nd(rng));
      std::memcpy(data.data() + off + 2 * k, &h, 2);
    }
  }
  return data;
}

bool have_act8() { return simd_compiled() >= SimdLevel::Avx512; }

TEST(MatmulAct8, QuantizesBlocksToInt8) {
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 2.0f);
  std::vector<float> x(4 * QK);
  for (auto& v : x) v = nd(rng);
  for (int j = 0; j < QK; ++j) x[2 * QK + j] = 0.0f;  // an all-zero block
  x[3 * QK + 5] = -40.0f;                             // a block whose extreme is negative
  mm::ActQ8 a[4];
  mm::quantize_act_q8(x.data(), 4, a);
  for (int b = 0; b < 4; ++b) {
    float amax = 0.0f;
    for (int j = 0; j < QK; ++j) amax = std::max(amax, std::fabs(x[b * QK + j]));
    EXPECT_FLOAT_EQ(a[b].d, amax / 127.0f);
    int sum = 0, qmax = 0;
    for (int j = 0; j < QK; ++j) {
      EXPECT_LE(std::fabs(x[b * QK + j] - a[b].d * a[b].q[j]), a[b].d * 0.5f * 1.0001f) << b << " " << j;
      sum += a[b].q[j];
      qmax = std::max(qmax, std::abs((int)a[b].q[j]));
    }
    EXPECT_FLOAT_EQ(a[b].s, a[b].d * (float)sum);
    EXPECT_EQ(qmax, b == 2 ? 0 : 127) << b;
  }
  EXPECT_EQ(a[3].q[5], -127);
}

// For every output: sum_c |w_c x_c| (scale of float rounding) and the bound on what 8-bit
// activations can move it, sum_b (amax_b / 254) * sum_{c in b} |w_c|.
void float_bounds(const MatmulWeight& w, const float* x, int64_t n, std::vector<double>& mag, std::vector<double>& qerr) {
  mag.assign((size_t)(n * w.rows), 0.0);
  qerr.assign((size_t)(n * w.rows), 0.0);
  std::vector<float> row((size_t)w.cols);
  for (int64_t r = 0; r < w.rows; ++r) {
    dequantize_row(w.type, w.data + r * w.row_stride, row.data(), w.cols);
    for (int64_t t = 0; t < n; ++t)
      for (int64_t b = 0; b < w.cols / QK; ++b) {
        double amax = 0, wsum = 0;
        for (int j = 0; j < QK; ++j) {
          const int64_t c = b * QK + j;
          amax = std::max(amax, (double)std::fabs(x[t * w.cols + c]));
          wsum += std::fabs(row[c]);
          mag[t * w.rows + r] += std::fabs((double)row[c] * x[t * w.cols + c]);
        }
        qerr[t * w.rows + r] += amax / 254.0 * wsum;
      }
  }
}

// The kernel (packed and unpacked panels, 1 and 3 threads) equals the 8-bit reference up to
// float rounding, equals itself packed or not bit for bit, and is within the 8-bit bound of
// the float product. Odd shapes: partial 48-row panels, one block, token tails of 1-3.
TEST(MatmulAct8, KernelMatchesReferences) {
  if (!have_act8()) GTEST_SKIP() << "no AVX-512 VNNI kernels in this build";
  test::ScopedSimdLevel scoped(SimdLevel::Avx512);
  std::mt19937 rng(41);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  struct Shape {
    GgmlType type;
    int64_t rows, cols;
  };
  double worst_rel = 0;
  for (const Shape& s : {Shape{GgmlType::Q4_1, 101, 576}, Shape{GgmlType::Q4_1, 13, 32}, Shape{GgmlType::Q4_1, 48, 96},
                         Shape{GgmlType::Q4_0, 49, 64}, Shape{GgmlType::Q4_0, 200, 1536},
                         Shape{GgmlType::Q8_0, 77, 576}, Shape{GgmlType::Q8_0, 5, 32}}) {
    auto data = random_q(s.type, s.rows, s.cols, rng);
    MatmulWeight w{s.type, data.data(), s.rows, s.cols, row_bytes(s.type, s.cols)};
    w.act_bits = 8;
    ASSERT_TRUE(matmul_uses_act8(w));
    ThreadPool pack_pool(2);
    auto packed = pack_weight(w, pack_pool);
    ASSERT_NE(packed, nullptr);
    EXPECT_EQ(packed->act_bits, 8);
    EXPECT_LT(packed_bytes(*packed), (size_t)(s.rows + 47) / 48 * 48 * s.cols * 2);  // 1 byte a weight + scales
    MatmulWeight wp = w;
    wp.packed = packed.get();
    for (int64_t n : {5, 6, 7, 8, 33}) {
      std::vector<float> x(n * s.cols), ref8(n * s.rows), ref(n * s.rows), y(n * s.rows), yp(n * s.rows);
      for (auto& v : x) v = nd(rng);
      matmul_act8_ref(w, x.data(), n, ref8.data());
      matmul_ref(w, x.data(), n, ref.data());
      std::vector<double> mag, qerr;
      float_bounds(w, x.data(), n, mag, qerr);
      for (int threads : {1, 3}) {
        ThreadPool pool(threads);
        matmul(w, x.data(), n, y.data(), pool);
        matmul(wp, x.data(), n, yp.data(), pool);
        ASSERT_EQ(yp, y) << type_name(s.type) << " n " << n << " threads " << threads;
        for (size_t i = 0; i < y.size(); ++i) {
          ASSERT_NEAR(y[i], ref8[i], 2e-6 * mag[i] + 1e-7) << type_name(s.type) << " n " << n << " i " << i;
          ASSERT_NEAR(y[i], ref[i], qerr[i] + 2e-6 * mag[i] + 1e-7) << type_name(s.type) << " n " << n << " i " << i;
          worst_rel = std::max(worst_rel, std::fabs(y[i] - ref[i]) / mag[i]);
        }
      }
    }
  }
  // Typical size of the 8-bit error, for the record (the bound above is what is asserted).
  std::printf("act8 worst |y - float| / sum|w x|: %.2e\n", worst_rel);
  EXPECT_GT(worst_rel, 0.0);  // 8-bit activations do round: a zero here means the 16-bit path ran
}

// The largest block sums each type can make (Q8_0: -128 weights against +127 activations, the
// unsigned side at 255; Q4: nibbles 15) stay exact: no int32 overflow, no lost sign.
TEST(MatmulAct8, ExtremeBlocksStayExact) {
  if (!have_act8()) GTEST_SKIP() << "no AVX-512 VNNI kernels in this build";
  test::ScopedSimdLevel scoped(SimdLevel::Avx512);
  const int64_t rows = 20, cols = 256, n = 6;
  for (GgmlType type : {GgmlType::Q8_0, GgmlType::Q4_1, GgmlType::Q4_0}) {
    std::mt19937 rng(53);
    auto data = random_q(type, rows, cols, rng);
    const size_t bs = type_traits(type).block_bytes, head = type == GgmlType::Q4_1 ? 4 : 2;
    for (size_t off = 0, k = 0; off < data.size(); off += bs, ++k)  // alternate blocks: all min / all max
      std::memset(data.data() + off + head, k % 2 ? 0x7F : (type == GgmlType::Q8_0 ? 0x80 : 0xFF), bs - head);
    MatmulWeight w{type, data.data(), rows, cols, row_bytes(type, cols)};
    w.act_bits = 8;
    std::vector<float> x(n * cols), y(n * rows), ref8(n * rows);
    for (int64_t i = 0; i < n * cols; ++i) x[i] = (i / QK) % 3 == 0 ? -3.0f : 3.0f;  // whole blocks at +-amax
    ThreadPool pool(2);
    matmul(w, x.data(), n, y.data(), pool);
    matmul_act8_ref(w, x.data(), n, ref8.data());
    for (size_t i = 0; i < y.size(); ++i) ASSERT_NEAR(y[i], ref8[i], 1e-5 * std::fabs(ref8[i]) + 1e-6) << type_name(type);
  }
}

// Where the 8-bit kernel does not apply, act_bits 8 changes nothing: other weight types, the
// AVX2 level, the few-token path. Mixed matmul_multi calls give each matrix its own result.
TEST(MatmulAct8, FallsBackTo16BitsElsewhere) {
  std::mt19937 rng(43);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  auto q41 = random_q(GgmlType::Q4_1, 50, 64, rng), q50 = random_q(GgmlType::Q5_0, 30, 64, rng);
  MatmulWeight a16{GgmlType::Q4_1, q41.data(), 50, 64, row_bytes(GgmlType::Q4_1, 64)};
  MatmulWeight b16{GgmlType::Q5_0, q50.data(), 30, 64, row_bytes(GgmlType::Q5_0, 64)};
  MatmulWeight a8 = a16, b8 = b16;
  a8.act_bits = b8.act_bits = 8;
  EXPECT_FALSE(matmul_uses_act8(b8));
  ThreadPool pool(2);
  for (SimdLevel level : test::simd_levels()) {
    test::ScopedSimdLevel scoped(level);
    auto pa = pack_weight(a8, pool), pb = pack_weight(b8, pool);
    MatmulWeight a8p = a8, b8p = b8;
    a8p.packed = pa.get(), b8p.packed = pb.get();
    EXPECT_EQ(matmul_uses_act8(a8), level == SimdLevel::Avx512);
    for (int64_t n : {1, 4, 9}) {
      std::vector<float> x(n * 64), ya16(n * 50), ya8(n * 50), yb16(n * 30), yb8(n * 30), ya_multi(n * 50),
          yb_multi(n * 30);
      for (auto& v : x) v = nd(rng);
      matmul(a16, x.data(), n, ya16.data(), pool);
      matmul(a8p, x.data(), n, ya8.data(), pool);
      matmul(b16, x.data(), n, yb16.data(), pool);
      matmul(b8p, x.data(), n, yb8.data(), pool);
      EXPECT_EQ(yb8, yb16) << "Q5_0 n " << n << " " << simd_name(level);
      if (!matmul_uses_act8(a8) || n <= kMatmulFewTokens)
        EXPECT_EQ(ya8, ya16) << "Q4_1 n " << n << " " << simd_name(level);
      else
        EXPECT_NE(ya8, ya16) << "Q4_1 n " << n << ": the 8-bit kernel should round differently";
      matmul_multi({{a8p, ya_multi.data()}, {b8p, yb_multi.data()}}, x.data(), n, pool);
      EXPECT_EQ(ya_multi, ya8) << n << " " << simd_name(level);
      EXPECT_EQ(yb_multi, yb8) << n << " " << simd_name(level);
    }
  }
}

TEST(MatmulAct8, RejectsBadModesAndMismatchedPanels) {
  std::mt19937 rng(47);
  auto q = random_q(GgmlType::Q4_1, 48, 64, rng);
  MatmulWeight w{GgmlType::Q4_1, q.data(), 48, 64, row_bytes(GgmlType::Q4_1, 64)};
  std::vector<float> x(8 * 64, 1.0f), y(8 * 48);
  ThreadPool pool(1);
  MatmulWeight bad = w;
  bad.act_bits = 12;
  EXPECT_THROW(matmul(bad, x.data(), 8, y.data(), pool), std::runtime_error);
  EXPECT_THROW(pack_weight(bad, pool), std::runtime_error);
  if (!have_act8()) return;
  test::ScopedSimdLevel scoped(SimdLevel::Avx512);
  // u8 panels read as 16-bit ones (or the reverse) would be garbage: refused.
  MatmulWeight w8 = w;
  w8.act_bits = 8;
  auto p8 = pack_weight(w8, pool), p16 = pack_weight(w, pool);
  MatmulWeight w16_with_p8 = w, w8_with_p16 = w8;
  w16_with_p8.packed = p8.get();
  w8_with_p16.packed = p16.get();
  EXPECT_THROW(matmul(w16_with_p8, x.data(), 8, y.data(), pool), std::runtime_error);
  EXPECT_THROW(matmul(w8_with_p16, x.data(), 8, y.data(), pool), std::runtime_error);
  EXPECT_THROW(matmul_act8_ref(MatmulWeight{GgmlType::Q5_0, q.data(), 1, 32, 22}, x.data(), 1, y.data()),
               std::runtime_error);
}

}  // namespace
}  // namespace duo
