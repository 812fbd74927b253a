// The cuBLAS linear layer against a double-precision reference on the same bf16 values:
// Y[t][r] = sum_c W[r][c] X[t][c], row strides honoured, accumulate adds to Y.
// Tolerance: fp32 accumulation of K products; |err| <= 1e-4 * sum_c |W X| + 1e-6 (fp32 rounding
// grows ~sqrt(K) * 2^-24 of that sum; cuBLAS split-K orders differ, so allow a wide margin).
#include <gtest/gtest.h>

#include <random>

#include "backend/cuda/gemm.h"
#include "cuda_test_util.h"

namespace duo::cuda {
namespace {

using test::Dev;

void check_linear(int64_t rows, int64_t cols, int64_t n, int64_t pad_x, int64_t pad_y, bool accumulate, uint32_t seed) {
  std::mt19937 rng(seed);
  const int64_t ldx = cols + pad_x, ldy = rows + pad_y;
  auto w = test::randn_bf16(rng, (size_t)(rows * cols), 0.05f);
  auto x = test::randn_bf16(rng, (size_t)(n * ldx), 1.0f);
  auto y0 = test::randn(rng, (size_t)(n * ldy), 1.0f);
  Dev<bf16> dw(test::to_bf16(w)), dx(test::to_bf16(x));
  Dev<float> dy(y0);
  Gemm gemm(0);
  gemm.linear(dw.get(), rows, cols, dx.get(), ldx, n, dy.get(), ldy, accumulate);
  const auto got = dy.download();
  int64_t bad = 0;
  for (int64_t t = 0; t < n; ++t)
    for (int64_t r = 0; r < ldy; ++r) {
      const float g = got[(size_t)(t * ldy + r)];
      if (r >= rows) {  // padding between rows must be untouched
        ASSERT_EQ(g, y0[(size_t)(t * ldy + r)]) << "padding at token " << t << " column " << r;
        continue;
      }
      double want = accumulate ? y0[(size_t)(t * ldy + r)] : 0.0, mag = 0;
      for (int64_t c = 0; c < cols; ++c) {
        const double p = (double)w[(size_t)(r * cols + c)] * x[(size_t)(t * ldx + c)];
        want += p, mag += std::fabs(p);
      }
      if (std::fabs(g - want) > 1e-4 * mag + 1e-6 && bad++ < 5)
        ADD_FAILURE() << rows << "x" << cols << " n " << n << ": Y[" << t << "][" << r << "] = " << g << ", want "
                      << want;
    }
  EXPECT_EQ(bad, 0);
}

TEST(CudaGemm, DecodeRow) { check_linear(1536, 576, 1, 0, 0, false, 1); }
TEST(CudaGemm, PrefillTokens) { check_linear(640, 1536, 130, 0, 0, false, 2); }
TEST(CudaGemm, StridedRowsAndAccumulate) { check_linear(576, 1536, 37, 8, 24, true, 3); }
TEST(CudaGemm, LastRowsOfAChunk) { check_linear(1000, 256, 3, 64, 0, false, 4); }

}  // namespace
}  // namespace duo::cuda
