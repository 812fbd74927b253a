// The optimized quantized matmul against matmul_ref (row dequantization + double sums), for
// every weight type, token counts on both sides of the decode/pre-fill switch, and pools of
// 1-3 threads.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "backend/cpu/matmul.h"
#include "core/dequant.h"
#include "core/fp16.h"
#include "core/thread_pool.h"

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
      default: break;
    }
  }
  return data;
}

void check_type(GgmlType type, int64_t rows, int64_t cols) {
  std::mt19937 rng(17 + (int)type + (int)cols);
  auto data = random_weights(type, rows, cols, rng);
  WeightView w{type, data.data(), rows, cols, row_bytes(type, cols)};
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (int64_t n : {1, 2, 5, 17, 64}) {
    std::vector<float> x(n * cols), ref(n * rows), out(n * rows);
    for (auto& v : x) v = nd(rng);
    matmul_ref(w, x.data(), n, ref.data());
    // Error scale: sum |w| |x| per output, computed from dequantized rows.
    std::vector<float> row(cols);
    std::vector<double> mag(n * rows);
    for (int64_t r = 0; r < rows; ++r) {
      dequantize_row(type, data.data() + r * w.row_stride, row.data(), cols);
      for (int64_t t = 0; t < n; ++t) {
        double m = 0;
        for (int64_t c = 0; c < cols; ++c) m += std::fabs(row[c] * x[t * cols + c]);
        mag[t * rows + r] = m;
      }
    }
    for (int threads : {1, 2, 3}) {
      ThreadPool pool(threads);
      matmul(w, x.data(), n, out.data(), pool);
      for (int64_t i = 0; i < n * rows; ++i) {
        // 16-bit activations (integer paths) lose at most half a step of amax/32767 per
        // value: < 2e-5 of sum |w||x|; float paths only rounding.
        const double tol = 3e-5 * mag[i] + 1e-5;
        ASSERT_NEAR(out[i], ref[i], tol) << type_name(type) << " rows " << rows << " cols " << cols << " n " << n
                                         << " threads " << threads << " index " << i;
      }
    }
  }
}

TEST(Matmul, MatchesReferenceForEveryType) {
  for (GgmlType t : {GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0,
                     GgmlType::Q5_1, GgmlType::Q8_0}) {
    check_type(t, 37, 576);
    check_type(t, 5, 64);
  }
  for (GgmlType t : {GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K}) check_type(t, 19, 512);
}

TEST(Matmul, QwenShapes) {
  check_type(GgmlType::Q6_K, 7, 8960);
  check_type(GgmlType::Q4_K, 29, 1536);
}

TEST(Matmul, RejectsBadShapes) {
  std::vector<uint8_t> d(1024);
  ThreadPool pool(1);
  float x[64], y[64];
  WeightView w{GgmlType::Q4_0, d.data(), 1, 48, 0};
  EXPECT_THROW(matmul(w, x, 1, y, pool), std::runtime_error);
  WeightView k{GgmlType::Q8_K, d.data(), 1, 256, 292};
  EXPECT_THROW(matmul(k, x, 1, y, pool), std::runtime_error);
}

}  // namespace
}  // namespace duo
