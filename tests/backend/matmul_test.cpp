// The optimized quantized matmul against matmul_ref (row dequantization + double sums), for
// every weight type, token counts on both sides of the decode/pre-fill switch, and pools of
// 1-3 threads.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "backend/cpu/matmul.h"
#include "core/dequant.h"
#include "core/fp16.h"
#include "core/thread_pool.h"
#include "simd_levels.h"

namespace duo {
namespace {

// Random but valid blocks: random bytes with the f16 scale fields set to small normal values.
std::vector<uint8_t> random_weights(GgmlType type, int64_t rows, int64_t cols, std::mt19937& rng) {
  const size_t rb = row_bytes(type, cols);
  std::vector<uint8_t> data(rb * rows);
  std::uniform_int_distribution<int> byte(0, 255);
  for (auto& b : data) b = (uint8_t)byte(rng);
  std::normal_distribution<float> nd(0.0f, 0.05f);
  auto put_f16 = [&](uint8_t* p) {
    const uint16_t h = f32_to_f16(nd(rng));
    std::memcpy(p, &h, 2);
  };
  const TypeTraits& tt = type_traits(type);
  const int64_t blocks = rows * cols / tt.block_elems;
  for (int64_t i = 0; i < blocks; ++i) {
    uint8_t* blk = data.data() + i * tt.block_bytes;
    switch (type) {
      case GgmlType::F32: {
        for (int j = 0; j < 1; ++j) {
          const float v = nd(rng) * 10;
          std::memcpy(blk, &v, 4);
        }
        break;
      }
      case GgmlType::F16: put_f16(blk); break;
      case GgmlType::BF16: {
        const uint16_t h = f32_to_bf16(nd(rng) * 10);
        std::memcpy(blk, &h, 2);
        break;
      }
      case GgmlType::Q4_0: case GgmlType::Q5_0: case GgmlType::Q8_0: put_f16(blk); break;
      case GgmlType::Q4_1: case GgmlType::Q5_1: case GgmlType::Q4_K: case GgmlType::Q5_K:
        put_f16(blk);
        put_f16(blk + 2);
        break;
      case GgmlType::Q6_K: put_f16(blk + 208); break;
      case GgmlType::Q2_K:
        put_f16(blk + 80);
        put_f16(blk + 82);
        break;
      case GgmlType::Q3_K: put_f16(blk + 108); break;
      case GgmlType::IQ4_NL: case GgmlType::IQ4_XS: put_f16(blk); break;
      default: break;
    }
  }
  return data;
}

// Activations are quantized per 32-block to integers in [-32767, 32767] (scale amax/32767),
// so each x[c] moves by at most amax_b / (2 * 32767); the product moves by at most
// sum_b amax_b / 65534 * sum_{c in b} |w[c]|. Float accumulation adds a few ulps of
// sum |w||x|. Float weight types (F32/F16/BF16) only have the accumulation term.
constexpr double kActSteps = 2.0 * 32767.0;

void check_type(GgmlType type, int64_t rows, int64_t cols) {
  std::mt19937 rng(17 + (int)type + (int)cols);
  auto data = random_weights(type, rows, cols, rng);
  MatmulWeight w{type, data.data(), rows, cols, row_bytes(type, cols)};
  const bool quant_act = !(type == GgmlType::F32 || type == GgmlType::F16 || type == GgmlType::BF16);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (int64_t n : {1, 2, 5, 7, 14, 17, 64}) {
    std::vector<float> x(n * cols), ref(n * rows), out(n * rows);
    for (auto& v : x) v = nd(rng);
    // A few outliers, as real activations have.
    for (int64_t t = 0; t < n; ++t) x[t * cols + (t * 7) % cols] *= 30.0f;
    matmul_ref(w, x.data(), n, ref.data());
    std::vector<float> row(cols);
    std::vector<double> mag(n * rows), bound(n * rows);
    for (int64_t r = 0; r < rows; ++r) {
      dequantize_row(type, data.data() + r * w.row_stride, row.data(), cols);
      for (int64_t t = 0; t < n; ++t) {
        double m = 0, q = 0;
        for (int64_t b = 0; b < cols / 32; ++b) {
          double amax = 0, wsum = 0;
          for (int64_t c = b * 32; c < b * 32 + 32; ++c) {
            m += std::fabs(row[c] * x[t * cols + c]);
            amax = std::max(amax, (double)std::fabs(x[t * cols + c]));
            wsum += std::fabs(row[c]);
          }
          q += amax / kActSteps * wsum;
        }
        mag[t * rows + r] = m;
        bound[t * rows + r] = quant_act ? q : 0.0;
      }
    }
    for (SimdLevel level : test::simd_levels())
      for (int threads : {1, 2, 3}) {
        test::ScopedSimdLevel scoped(level);
        ThreadPool pool(threads);
        std::fill(out.begin(), out.end(), std::nanf(""));
        matmul(w, x.data(), n, out.data(), pool);
        for (int64_t i = 0; i < n * rows; ++i) {
          const double tol = bound[i] + 1e-6 * mag[i] + 1e-6;
          ASSERT_NEAR(out[i], ref[i], tol) << type_name(type) << " rows " << rows << " cols " << cols << " n " << n
                                           << " threads " << threads << " " << simd_name(level) << " index " << i;
        }
      }
  }
}

// Values that survive activation quantization exactly (every block holds +-32767 * 2^-10 and
// multiples of 2^-10, so the integers are x * 2^10) and power-of-two weight scales: every
// partial sum is a multiple of a common unit below 2^24 units, so the result is exact.
void check_exact(GgmlType type, int64_t rows, int64_t cols) {
  std::mt19937 rng(99 + (int)type);
  auto data = random_weights(type, rows, cols, rng);
  const TypeTraits& tt = type_traits(type);
  const uint16_t d = f32_to_f16(0.0625f), m = f32_to_f16(-0.125f);
  for (int64_t b = 0; b < rows * cols / tt.block_elems; ++b) {
    uint8_t* blk = data.data() + b * tt.block_bytes;
    std::memcpy(blk, &d, 2);
    if (type == GgmlType::Q4_1) std::memcpy(blk + 2, &m, 2);
    if (type == GgmlType::Q8_0)
      for (size_t j = 2; j < tt.block_bytes; ++j) blk[j] = (uint8_t)(int8_t)((int)(blk[j] % 17) - 8);
  }
  MatmulWeight w{type, data.data(), rows, cols, row_bytes(type, cols)};
  std::uniform_int_distribution<int> small(-1023, 1023);
  for (int64_t n : {1, 3, 9, 20}) {
    std::vector<float> x(n * cols), ref(n * rows), out(n * rows);
    for (int64_t i = 0; i < n * cols; ++i) x[i] = (float)small(rng) / 1024.0f;
    for (int64_t i = 0; i < n * cols; i += 32) x[i + (i / 32) % 32] = ((i / 32) % 2 ? 32767.0f : -32767.0f) / 1024.0f;
    matmul_ref(w, x.data(), n, ref.data());
    for (SimdLevel level : test::simd_levels())
      for (int threads : {1, 2, 3}) {
        test::ScopedSimdLevel scoped(level);
        ThreadPool pool(threads);
        matmul(w, x.data(), n, out.data(), pool);
        for (int64_t i = 0; i < n * rows; ++i)
          ASSERT_EQ(out[i], ref[i]) << type_name(type) << " n " << n << " threads " << threads << " "
                                    << simd_name(level) << " index " << i;
      }
  }
}

TEST(Matmul, ExactWhenActivationsAreRepresentable) {
  for (GgmlType t : {GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1}) {
    check_exact(t, 13, 576);
    check_exact(t, 6, 64);
  }
}

TEST(Matmul, MatchesReferenceForEveryType) {
  for (GgmlType t : {GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0,
                     GgmlType::Q5_1, GgmlType::Q8_0}) {
    check_type(t, 37, 576);  // SmolLM2's hidden size, rows not a multiple of any tile
    check_type(t, 5, 64);
  }
  // Several row panels (48 rows in the AVX-512 kernel) with a partial last one.
  for (GgmlType t : {GgmlType::Q4_1, GgmlType::Q8_0}) check_type(t, 101, 96);
  for (GgmlType t : {GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K}) check_type(t, 19, 512);
  // Types read by llama.cpp's Q2_K/Q3_K/IQ4 presets.
  for (GgmlType t : {GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::IQ4_XS}) check_type(t, 19, 512);
  check_type(GgmlType::IQ4_NL, 37, 576);
  check_type(GgmlType::Q3_K, 101, 256);  // several AVX-512 row panels
}

// Q2_K (decode: direct dots; pre-fill: dequantized float tiles) next to integer-panel types in
// one call gives what one call each gives.
TEST(Matmul, MultiWithQ2KEqualsOneCallEach) {
  std::mt19937 rng(6);
  const int64_t cols = 512;
  auto wa = random_weights(GgmlType::Q2_K, 21, cols, rng), wb = random_weights(GgmlType::Q3_K, 16, cols, rng);
  MatmulWeight a{GgmlType::Q2_K, wa.data(), 21, cols, row_bytes(GgmlType::Q2_K, cols)};
  MatmulWeight b{GgmlType::Q3_K, wb.data(), 16, cols, row_bytes(GgmlType::Q3_K, cols)};
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (int64_t n : {1, 3, 40}) {
    std::vector<float> x(n * cols);
    for (auto& v : x) v = nd(rng);
    for (SimdLevel level : test::simd_levels()) {
      test::ScopedSimdLevel scoped(level);
      ThreadPool pool(2);
      std::vector<float> ya(n * 21), yb(n * 16), ra(ya.size()), rb(yb.size());
      matmul_multi({{a, ya.data()}, {b, yb.data()}}, x.data(), n, pool);
      matmul(a, x.data(), n, ra.data(), pool);
      matmul(b, x.data(), n, rb.data(), pool);
      EXPECT_EQ(ya, ra) << "n " << n << " " << simd_name(level);
      EXPECT_EQ(yb, rb) << "n " << n << " " << simd_name(level);
    }
  }
}

TEST(Matmul, QwenShapes) {
  check_type(GgmlType::Q6_K, 7, 8960);  // ffn_down: 35 super-blocks
  check_type(GgmlType::Q4_K, 7, 8960);
  check_type(GgmlType::Q4_K, 29, 1536);
}

// The largest integer sums the kernels can meet: Q6_K values -32 with sub-scale -128 (4096
// after folding) against activations at full scale. A block then sums to 32 * 4096 * 32767,
// past int32: the kernels must split it.
TEST(Matmul, ExtremeQ6KBlocksDoNotOverflow) {
  const int64_t rows = 7, cols = 512;
  std::vector<uint8_t> data(row_bytes(GgmlType::Q6_K, cols) * rows, 0);
  for (int64_t b = 0; b < rows * cols / 256; ++b) {
    uint8_t* blk = data.data() + b * 210;
    std::memset(blk + 192, 0x80, 16);  // scales = -128
    const uint16_t d = f32_to_f16(0.001f);
    std::memcpy(blk + 208, &d, 2);
  }
  MatmulWeight w{GgmlType::Q6_K, data.data(), rows, cols, row_bytes(GgmlType::Q6_K, cols)};
  for (int64_t n : {1, 9}) {
    std::vector<float> x(n * cols, 1.5f), ref(n * rows), out(n * rows);
    matmul_ref(w, x.data(), n, ref.data());
    ThreadPool pool(2);
    for (SimdLevel level : test::simd_levels()) {
      test::ScopedSimdLevel scoped(level);
      matmul(w, x.data(), n, out.data(), pool);
      for (int64_t i = 0; i < n * rows; ++i)
        ASSERT_NEAR(out[i], ref[i], 1e-5 * std::fabs(ref[i])) << "n " << n << " " << simd_name(level) << " i " << i;
    }
  }
}

// Matrices sharing an input in one call give exactly what one call each gives, at every
// SIMD level, for decode and pre-fill token counts (mixed types and row counts).
TEST(Matmul, MultiEqualsOneCallEach) {
  std::mt19937 rng(5);
  const int64_t cols = 512;
  auto wa = random_weights(GgmlType::Q4_K, 37, cols, rng), wb = random_weights(GgmlType::Q6_K, 16, cols, rng),
       wc = random_weights(GgmlType::Q4_1, 101, cols, rng);
  MatmulWeight a{GgmlType::Q4_K, wa.data(), 37, cols, row_bytes(GgmlType::Q4_K, cols)};
  MatmulWeight b{GgmlType::Q6_K, wb.data(), 16, cols, row_bytes(GgmlType::Q6_K, cols)};
  MatmulWeight c{GgmlType::Q4_1, wc.data(), 101, cols, row_bytes(GgmlType::Q4_1, cols)};
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (int64_t n : {1, 3, 9, 70}) {
    std::vector<float> x(n * cols);
    for (auto& v : x) v = nd(rng);
    for (SimdLevel level : test::simd_levels()) {
      test::ScopedSimdLevel scoped(level);
      ThreadPool pool(2);
      std::vector<float> ya(n * 37), yb(n * 16), yc(n * 101), ra(ya.size()), rb(yb.size()), rc(yc.size());
      matmul_multi({{a, ya.data()}, {b, yb.data()}, {c, yc.data()}}, x.data(), n, pool);
      matmul(a, x.data(), n, ra.data(), pool);
      matmul(b, x.data(), n, rb.data(), pool);
      matmul(c, x.data(), n, rc.data(), pool);
      EXPECT_EQ(ya, ra) << "n " << n << " " << simd_name(level);
      EXPECT_EQ(yb, rb) << "n " << n << " " << simd_name(level);
      EXPECT_EQ(yc, rc) << "n " << n << " " << simd_name(level);
    }
  }
  std::vector<float> x(576), y(64);
  MatmulWeight other{GgmlType::Q4_1, wc.data(), 1, 576, row_bytes(GgmlType::Q4_1, 576)};
  ThreadPool pool(1);
  EXPECT_THROW(matmul_multi({{a, y.data()}, {other, y.data()}}, x.data(), 1, pool), std::runtime_error);
}

// Panels packed once (pack_weight) give bit for bit what unpacking on every call gives, for
// every quantized type, decode and pre-fill token counts, partial row panels, at every SIMD
// level (the packed form is only read by the AVX-512 kernel; the others must ignore it), and
// also within the reference's tolerance (check_type's bound, loosely).
TEST(Matmul, PackedWeightsEqualUnpacked) {
  std::mt19937 rng(23);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  struct Shape {
    GgmlType type;
    int64_t rows, cols;
  };
  for (const Shape& s : {Shape{GgmlType::Q4_1, 101, 576}, Shape{GgmlType::Q8_0, 49, 96}, Shape{GgmlType::Q4_0, 37, 64},
                         Shape{GgmlType::Q5_0, 48, 64}, Shape{GgmlType::Q5_1, 13, 64}, Shape{GgmlType::Q4_K, 37, 512},
                         Shape{GgmlType::Q5_K, 19, 256}, Shape{GgmlType::Q6_K, 50, 512}, Shape{GgmlType::Q3_K, 50, 512},
                         Shape{GgmlType::IQ4_NL, 37, 64}, Shape{GgmlType::IQ4_XS, 19, 256}}) {
    auto data = random_weights(s.type, s.rows, s.cols, rng);
    MatmulWeight w{s.type, data.data(), s.rows, s.cols, row_bytes(s.type, s.cols)};
    ThreadPool pack_pool(2);
    std::shared_ptr<const PackedWeight> packed;
    {
      test::ScopedSimdLevel scoped(simd_compiled());
      packed = pack_weight(w, pack_pool);
    }
    if (simd_compiled() >= SimdLevel::Avx512) {
      ASSERT_NE(packed, nullptr) << type_name(s.type);
      EXPECT_GE(packed_bytes(*packed), (size_t)(s.rows * s.cols * 2));
    }
    MatmulWeight wp = w;
    wp.packed = packed.get();
    for (int64_t n : {1, 5, 9, 33}) {
      std::vector<float> x(n * s.cols), ref(n * s.rows), y(n * s.rows), yp(n * s.rows);
      for (auto& v : x) v = nd(rng);
      matmul_ref(w, x.data(), n, ref.data());
      for (SimdLevel level : test::simd_levels())
        for (int threads : {1, 3}) {
          test::ScopedSimdLevel scoped(level);
          ThreadPool pool(threads);
          matmul(w, x.data(), n, y.data(), pool);
          matmul(wp, x.data(), n, yp.data(), pool);
          ASSERT_EQ(yp, y) << type_name(s.type) << " n " << n << " threads " << threads << " " << simd_name(level);
          double mag = 0;
          for (float v : ref) mag = std::max(mag, (double)std::fabs(v));
          for (size_t i = 0; i < yp.size(); ++i) ASSERT_NEAR(yp[i], ref[i], 1e-3 * mag + 1e-4) << type_name(s.type);
        }
    }
  }
  // Float weights have no packed form, nor Q2_K (its pre-fill dequantizes to float).
  std::vector<float> f(64 * 4, 0.5f);
  ThreadPool pool(1);
  {
    auto q2 = random_weights(GgmlType::Q2_K, 4, 256, rng);
    test::ScopedSimdLevel scoped(simd_compiled());
    EXPECT_EQ(pack_weight(MatmulWeight{GgmlType::Q2_K, q2.data(), 4, 256, row_bytes(GgmlType::Q2_K, 256)}, pool), nullptr);
  }
  EXPECT_EQ(pack_weight(MatmulWeight{GgmlType::F32, reinterpret_cast<const uint8_t*>(f.data()), 4, 64, 256}, pool),
            nullptr);
}

// Panels packed from one matrix are refused for another (a stale pointer after the weights
// moved would otherwise multiply by the wrong numbers).
TEST(Matmul, PackedWeightsOfAnotherMatrixAreRefused) {
  if (simd_compiled() < SimdLevel::Avx512) GTEST_SKIP() << "no AVX-512 kernels in this build";
  std::mt19937 rng(29);
  auto a = random_weights(GgmlType::Q4_1, 48, 64, rng), b = random_weights(GgmlType::Q4_1, 48, 64, rng);
  MatmulWeight wa{GgmlType::Q4_1, a.data(), 48, 64, row_bytes(GgmlType::Q4_1, 64)};
  MatmulWeight wb{GgmlType::Q4_1, b.data(), 48, 64, row_bytes(GgmlType::Q4_1, 64)};
  test::ScopedSimdLevel scoped(SimdLevel::Avx512);
  ThreadPool pool(1);
  auto pa = pack_weight(wa, pool);
  wb.packed = pa.get();
  std::vector<float> x(8 * 64, 1.0f), y(8 * 48);
  EXPECT_THROW(matmul(wb, x.data(), 8, y.data(), pool), std::runtime_error);
}

TEST(Matmul, RejectsBadShapes) {
  std::vector<uint8_t> d(1024);
  ThreadPool pool(1);
  float x[64], y[64];
  MatmulWeight w{GgmlType::Q4_0, d.data(), 1, 48, 0};
  EXPECT_THROW(matmul(w, x, 1, y, pool), std::runtime_error);
  MatmulWeight k{GgmlType::Q8_K, d.data(), 1, 256, 292};
  EXPECT_THROW(matmul(k, x, 1, y, pool), std::runtime_error);
}

}  // namespace
}  // namespace duo
