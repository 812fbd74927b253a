// The linear layer (cuBLAS, and gemv_bf16 for one token) against a double-precision reference on the same bf16 values:
// Y[t][r] = sum_c W[r][c] X[t][c], row strides honoured, accumulate adds to Y.
// Tolerance: fp32 accumulation of K products; |err| <= 1e-4 * sum_c |W X| + 1e-6 (fp32 rounding
// grows ~sqrt(K) * 2^-24 of that sum; cuBLAS split-K orders differ, so allow a wide margin).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <stdexcept>
#include <utility>

#include "backend/cuda/gemm.h"
#include "backend/cuda/kernels.h"
#include "cuda_test_util.h"

namespace duo::cuda {
namespace {

using test::Dev;

// Runs Gemm::linear, or gemv_bf16 directly when `direct_gemv` (n must be 1); x_offset shifts X
// by that many elements (1: not 16-byte aligned, so Gemm must fall back to cuBLAS).
void check_linear(int64_t rows, int64_t cols, int64_t n, int64_t pad_x, int64_t pad_y, bool accumulate, uint32_t seed,
                  bool direct_gemv = false, int64_t x_offset = 0) {
  std::mt19937 rng(seed);
  const int64_t ldx = cols + pad_x, ldy = rows + pad_y;
  auto w = test::randn_bf16(rng, (size_t)(rows * cols), 0.05f);
  auto x = test::randn_bf16(rng, (size_t)(n * ldx + x_offset), 1.0f);
  auto y0 = test::randn(rng, (size_t)(n * ldy), 1.0f);
  Dev<bf16> dw(test::to_bf16(w)), dx(test::to_bf16(x));
  Dev<float> dy(y0);
  Gemm gemm(0);
  if (direct_gemv) {
    ASSERT_EQ(n, 1);
    gemv_bf16(dw.get(), rows, cols, dx.get() + x_offset, dy.get(), accumulate, 0);
  } else {
    gemm.linear(dw.get(), rows, cols, dx.get() + x_offset, ldx, n, dy.get(), ldy, accumulate);
  }
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
        const double p = (double)w[(size_t)(r * cols + c)] * x[(size_t)(t * ldx + c + x_offset)];
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

// One token: gemv_bf16. Row counts not a multiple of the 8 rows a CTA takes, column counts with
// and without a remainder after the unrolled loop (256 pieces of 8), the Llama-3-8B down
// projection width, accumulate, and padding after the output rows.
TEST(CudaGemv, Shapes) {
  check_linear(1, 8, 1, 0, 0, false, 10, true);
  check_linear(13, 264, 1, 0, 5, false, 11, true);
  check_linear(777, 2048, 1, 0, 0, true, 12, true);
  check_linear(300, 2056, 1, 0, 3, true, 13, true);
  check_linear(100, 14336, 1, 0, 0, false, 14, true);
  check_linear(20000, 576, 1, 0, 0, false, 15, true);  // more rows than one wave of CTAs holds
}
// The fused gate/up projection + SwiGLU gives the same bits as gemv_bf16 over all 2F rows
// followed by swiglu(), and agrees with a double-precision reference to bf16 rounding.
TEST(CudaGemv, SwiGluFusedMatchesUnfused) {
  for (auto [F, cols] : {std::pair<int64_t, int64_t>{1, 64}, {777, 2056}, {3000, 4096}}) {
    std::mt19937 rng((uint32_t)F);
    auto w = test::randn_bf16(rng, (size_t)(2 * F * cols), 0.05f);
    auto x = test::randn_bf16(rng, (size_t)cols, 1.0f);
    Dev<bf16> dw(test::to_bf16(w)), dx(test::to_bf16(x)), fused((size_t)F), unfused((size_t)F);
    Dev<float> gu((size_t)(2 * F));
    gemv_swiglu_bf16(dw.get(), F, cols, dx.get(), fused.get(), 0);
    gemv_bf16(dw.get(), 2 * F, cols, dx.get(), gu.get(), false, 0);
    swiglu(gu.get(), 1, (int)F, unfused.get(), 0);
    const auto a = fused.download(), b = unfused.download();
    int64_t bad = 0;
    for (int64_t i = 0; i < F; ++i) {
      ASSERT_EQ(std::memcmp(&a[(size_t)i], &b[(size_t)i], sizeof(bf16)), 0)
          << "F " << F << " row " << i << ": fused " << test::to_float(a[(size_t)i]) << " vs "
          << test::to_float(b[(size_t)i]);
      double g = 0, u = 0;
      for (int64_t c = 0; c < cols; ++c) {
        g += (double)w[(size_t)(i * cols + c)] * x[(size_t)c];
        u += (double)w[(size_t)((F + i) * cols + c)] * x[(size_t)c];
      }
      const double want = g / (1.0 + std::exp(-g)) * u, got = test::to_float(a[(size_t)i]);
      if (std::fabs(got - want) > 1e-2 * std::fabs(want) + 1e-3 && bad++ < 5)
        ADD_FAILURE() << "F " << F << " row " << i << ": " << got << " want " << want;
    }
    EXPECT_EQ(bad, 0);
  }
}

TEST(CudaGemv, GemmFallsBackWhereGemvCannotRun) {
  check_linear(64, 100, 1, 0, 0, false, 16);     // cols % 8 != 0: cuBLAS
  check_linear(64, 256, 1, 0, 0, true, 17, false, 1);  // X not 16-byte aligned: cuBLAS
  Dev<bf16> w(64 * 100), x(100);
  Dev<float> y(64);
  EXPECT_FALSE(gemv_bf16_supported(w.get(), 100, x.get()));
  EXPECT_THROW(gemv_bf16(w.get(), 64, 100, x.get(), y.get(), false, 0), std::invalid_argument);
}

}  // namespace
}  // namespace duo::cuda
