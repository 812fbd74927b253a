// The linear layer (cuBLAS, and gemv_bf16 for one token; int8 weights at the end) against a
// double-precision reference on the same bf16 values:
// Y[t][r] = sum_c W[r][c] X[t][c], row strides honoured, accumulate adds to Y.
// Tolerance: fp32 accumulation of K products; |err| <= 1e-4 * sum_c |W X| + 1e-6 (fp32 rounding
// grows ~sqrt(K) * 2^-24 of that sum; cuBLAS split-K orders differ, so allow a wide margin).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <utility>

#include "backend/cuda/gemm.h"
#include "backend/cuda/kernels.h"
#include "core/error.h"
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
// The gated activation of a double: SwiGLU's silu or GeGLU's tanh-approximated gelu, times up.
double glu_ref(Glu act, double g, double u) {
  if (act == Glu::Silu) return g / (1.0 + std::exp(-g)) * u;
  return 0.5 * g * (1.0 + std::tanh(0.7978845608028654 * (g + 0.044715 * g * g * g))) * u;
}

// The fused gate/up projection + SwiGLU (and GeGLU, gemma3) gives the same bits as gemv_bf16 over
// all 2F rows followed by swiglu() with the same activation, and agrees with a double-precision
// reference to bf16 rounding.
TEST(CudaGemv, SwiGluFusedMatchesUnfused) {
  for (Glu act : {Glu::Silu, Glu::GeluTanh})
  for (auto [F, cols] : {std::pair<int64_t, int64_t>{1, 64}, {777, 2056}, {3000, 4096}}) {
    std::mt19937 rng((uint32_t)F);
    auto w = test::randn_bf16(rng, (size_t)(2 * F * cols), 0.05f);
    auto x = test::randn_bf16(rng, (size_t)cols, 1.0f);
    Dev<bf16> dw(test::to_bf16(w)), dx(test::to_bf16(x)), fused((size_t)F), unfused((size_t)F);
    Dev<float> gu((size_t)(2 * F));
    gemv_swiglu_bf16(dw.get(), F, cols, dx.get(), fused.get(), 0, act);
    gemv_bf16(dw.get(), 2 * F, cols, dx.get(), gu.get(), false, 0);
    swiglu(gu.get(), 1, (int)F, unfused.get(), 0, act);
    const auto a = fused.download(), b = unfused.download();
    int64_t bad = 0;
    for (int64_t i = 0; i < F; ++i) {
      ASSERT_EQ(std::memcmp(&a[(size_t)i], &b[(size_t)i], sizeof(bf16)), 0)
          << "act " << (int)act << " F " << F << " row " << i << ": fused " << test::to_float(a[(size_t)i]) << " vs "
          << test::to_float(b[(size_t)i]);
      double g = 0, u = 0;
      for (int64_t c = 0; c < cols; ++c) {
        g += (double)w[(size_t)(i * cols + c)] * x[(size_t)c];
        u += (double)w[(size_t)((F + i) * cols + c)] * x[(size_t)c];
      }
      const double want = glu_ref(act, g, u), got = test::to_float(a[(size_t)i]);
      if (std::fabs(got - want) > 1e-2 * std::fabs(want) + 1e-3 && bad++ < 5)
        ADD_FAILURE() << "act " << (int)act << " F " << F << " row " << i << ": " << got << " want " << want;
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
  EXPECT_THROW(gemv_bf16(w.get(), 64, 100, x.get(), y.get(), false, 0), Error);
}

// ---------------------------------------------------------------------------------------------
// int8 weight-only matrices (gemv_int8.cu, Gemm::linear on a GpuMatrix): against a double
// reference over the dequantized weights scale[r] * q[r][c]. One token (gemv_int8) multiplies
// the exact int8 values; several tokens dequantize to bf16 tiles first, so their reference
// error also holds the tile's bf16 rounding (2^-9 of each product).
struct Int8Matrix {
  std::vector<int8_t> q;
  std::vector<float> scale;
  Int8Matrix(std::mt19937& rng, int64_t rows, int64_t cols) : q((size_t)(rows * cols)), scale((size_t)rows) {
    std::uniform_int_distribution<int> u(-127, 127);
    std::uniform_real_distribution<float> s(1e-4f, 2e-3f);
    for (auto& x : q) x = (int8_t)u(rng);
    for (auto& x : scale) x = s(rng);
  }
  double at(int64_t r, int64_t c, int64_t cols) const { return (double)scale[(size_t)r] * q[(size_t)(r * cols + c)]; }
};

void check_linear_int8(int64_t rows, int64_t cols, int64_t n, int64_t pad_y, bool accumulate, uint32_t seed) {
  std::mt19937 rng(seed);
  const Int8Matrix w(rng, rows, cols);
  const int64_t ldy = rows + pad_y;
  auto x = test::randn_bf16(rng, (size_t)(n * cols), 1.0f);
  auto y0 = test::randn(rng, (size_t)(n * ldy), 1.0f);
  Dev<int8_t> dq(w.q);
  Dev<float> ds(w.scale), dy(y0);
  Dev<bf16> dx(test::to_bf16(x));
  GpuMatrix m;
  m.q = dq.get(), m.scale = ds.get();
  Gemm gemm(0);
  EXPECT_EQ(gemm.uses_gemv(n, m, cols, dx.get()), n == 1);
  gemm.linear(m, rows, cols, dx.get(), cols, n, dy.get(), ldy, accumulate);
  const auto got = dy.download();
  const double rel = n == 1 ? 1e-4 : 6e-3;  // bf16 tile rounding for several tokens
  int64_t bad = 0;
  for (int64_t t = 0; t < n; ++t)
    for (int64_t r = 0; r < ldy; ++r) {
      const float g = got[(size_t)(t * ldy + r)];
      if (r >= rows) {
        ASSERT_EQ(g, y0[(size_t)(t * ldy + r)]) << "padding at token " << t << " column " << r;
        continue;
      }
      double want = accumulate ? y0[(size_t)(t * ldy + r)] : 0.0, mag = 0;
      for (int64_t c = 0; c < cols; ++c) {
        const double p = w.at(r, c, cols) * x[(size_t)(t * cols + c)];
        want += p, mag += std::fabs(p);
      }
      if (std::fabs(g - want) > rel * mag + 1e-6 && bad++ < 5)
        ADD_FAILURE() << "int8 " << rows << "x" << cols << " n " << n << ": Y[" << t << "][" << r << "] = " << g
                      << ", want " << want << " (sum |products| " << mag << ")";
    }
  EXPECT_EQ(bad, 0);
}

TEST(CudaGemvInt8, Shapes) {
  check_linear_int8(1, 16, 1, 0, false, 30);
  check_linear_int8(13, 272, 1, 5, false, 31);
  check_linear_int8(777, 4096, 1, 0, true, 32);    // 256 pieces: the unrolled loop exactly
  check_linear_int8(300, 4112, 1, 3, true, 33);    // and one piece more
  check_linear_int8(100, 14336, 1, 0, false, 34);  // Llama-3-8B down projection width
  check_linear_int8(20000, 576, 1, 0, false, 35);  // more rows than one wave
}

TEST(CudaGemmInt8, SeveralTokensThroughBf16Tiles) {
  check_linear_int8(640, 1536, 130, 0, false, 36);
  check_linear_int8(576, 1536, 37, 24, true, 37);
  // 33000 x 4096: more than one 256 MiB tile of bf16 rows (32768 rows), so two balanced GEMMs of
  // 16512 and 16488 rows.
  check_linear_int8(33000, 4096, 3, 0, false, 38);
}

TEST(CudaGemvInt8, SwiGluFusedMatchesUnfused) {
  for (Glu act : {Glu::Silu, Glu::GeluTanh})
  for (auto [F, cols] : {std::pair<int64_t, int64_t>{1, 64}, {777, 2064}, {3000, 4096}}) {
    std::mt19937 rng((uint32_t)F + 100);
    const Int8Matrix w(rng, 2 * F, cols);
    auto x = test::randn_bf16(rng, (size_t)cols, 1.0f);
    Dev<int8_t> dq(w.q);
    Dev<float> ds(w.scale), gu((size_t)(2 * F));
    Dev<bf16> dx(test::to_bf16(x)), fused((size_t)F), unfused((size_t)F);
    gemv_swiglu_int8(dq.get(), ds.get(), F, cols, dx.get(), fused.get(), 0, act);
    gemv_int8(dq.get(), ds.get(), 2 * F, cols, dx.get(), gu.get(), false, 0);
    swiglu(gu.get(), 1, (int)F, unfused.get(), 0, act);
    const auto a = fused.download(), b = unfused.download();
    for (int64_t i = 0; i < F; ++i)
      ASSERT_EQ(std::memcmp(&a[(size_t)i], &b[(size_t)i], sizeof(bf16)), 0)
          << "act " << (int)act << " F " << F << " row " << i << ": fused " << test::to_float(a[(size_t)i]) << " vs "
          << test::to_float(b[(size_t)i]);
  }
}

TEST(CudaGemvInt8, DequantRowsAndLimits) {
  std::mt19937 rng(40);
  const Int8Matrix w(rng, 37, 48);
  Dev<int8_t> dq(w.q);
  Dev<float> ds(w.scale);
  Dev<bf16> out((size_t)37 * 48);
  dequant_int8_rows(dq.get(), ds.get(), 37, 48, out.get(), 0);
  const auto got = test::to_float(out.download());
  for (int64_t r = 0; r < 37; ++r)
    for (int64_t c = 0; c < 48; ++c)
      ASSERT_EQ(got[(size_t)(r * 48 + c)], test::round_bf16((float)w.at(r, c, 48))) << r << "," << c;
  Dev<float> y(64);
  EXPECT_FALSE(gemv_int8_supported(dq.get(), 40, nullptr));  // cols % 16 != 0
  EXPECT_THROW(gemv_int8(dq.get(), ds.get(), 1, 40, out.get(), y.get(), false, 0), Error);
}

}  // namespace
}  // namespace duo::cuda
