// Backward passes of the row-wise calibration ops against central finite differences in
// double, their float forwards against the inference ops, and the tiled GEMM against a plain
// triple loop.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "backend/cpu/ops.h"
#include "calibrate/dense_gemm.h"
#include "calibrate/grad_ops.h"
#include "core/thread_pool.h"
#include "grad_check.h"

namespace duo {
namespace {

using test::check_gradient;
using test::dot;
using test::random_vector;

TEST(CalibGemm, TiledMatchesReferenceForOddShapes) {
  ThreadPool pool(2);
  std::mt19937_64 rng(1);
  for (bool trans_b : {true, false})
    for (bool acc : {false, true})
      for (auto [M, N, K] : {std::tuple<int64_t, int64_t, int64_t>{1, 1, 1}, {7, 17, 5}, {97, 258, 300},
                             {200, 33, 513}, {13, 600, 64}}) {
        const int64_t lda = K + 3, ldb = (trans_b ? K : N) + 1, ldc = N + 2;
        std::normal_distribution<float> nd(0.0f, 1.0f);
        std::vector<float> A(M * lda), Bm((trans_b ? N : K) * ldb), C(M * ldc), R;
        for (auto& x : A) x = nd(rng);
        for (auto& x : Bm) x = nd(rng);
        for (auto& x : C) x = nd(rng);
        R = C;
        gemm<float>(A.data(), lda, Bm.data(), ldb, trans_b, C.data(), ldc, M, N, K, acc, pool);
        gemm_ref<float>(A.data(), lda, Bm.data(), ldb, trans_b, R.data(), ldc, M, N, K, acc);
        for (int64_t m = 0; m < M; ++m)
          for (int64_t n = 0; n < N; ++n)
            ASSERT_NEAR(C[m * ldc + n], R[m * ldc + n], 2e-5 * std::sqrt((double)K) * 4)
                << M << "x" << N << "x" << K << " trans_b " << trans_b << " acc " << acc << " at " << m << "," << n;
        // Padding columns between rows are left alone.
        for (int64_t m = 0; m < M; ++m)
          for (int64_t n = N; n < ldc; ++n) ASSERT_EQ(C[m * ldc + n], R[m * ldc + n]);
      }
}

TEST(CalibGemm, DoubleIsExactToRoundingAndThreadCountDoesNotMatter) {
  ThreadPool p1(1), p2(2);
  std::mt19937_64 rng(2);
  const int64_t M = 150, N = 300, K = 270;
  auto A = random_vector(M * K, rng), Bm = random_vector(N * K, rng);
  std::vector<double> C1(M * N), C2(M * N), R(M * N);
  gemm<double>(A.data(), K, Bm.data(), K, true, C1.data(), N, M, N, K, false, p1);
  gemm<double>(A.data(), K, Bm.data(), K, true, C2.data(), N, M, N, K, false, p2);
  gemm_ref<double>(A.data(), K, Bm.data(), K, true, R.data(), N, M, N, K, false);
  for (size_t i = 0; i < R.size(); ++i) {
    ASSERT_NEAR(C1[i], R[i], 1e-11);
    ASSERT_EQ(C1[i], C2[i]);
  }
}

// The input gradient of y = x W^T is dy W: the two GEMM forms must be each other's adjoint.
TEST(CalibGemm, LinearInputGradientMatchesFiniteDifferences) {
  ThreadPool pool(2);
  std::mt19937_64 rng(3);
  const int64_t n = 5, cols = 37, rows = 23;
  auto W = random_vector(rows * cols, rng), x = random_vector(n * cols, rng), dy = random_vector(n * rows, rng);
  auto loss = [&](const std::vector<double>& xx) {
    std::vector<double> y(n * rows);
    gemm<double>(xx.data(), cols, W.data(), cols, true, y.data(), rows, n, rows, cols, false, pool);
    return dot(y, dy);
  };
  std::vector<double> dx(n * cols);
  gemm<double>(dy.data(), rows, W.data(), cols, false, dx.data(), cols, n, cols, rows, false, pool);
  check_gradient(loss, x, dx, "linear");
}

TEST(CalibOps, RmsnormForwardMatchesInferenceAndBackwardMatchesFiniteDifferences) {
  ThreadPool pool(2);
  std::mt19937_64 rng(4);
  const int64_t n = 70, dim = 24;
  const double eps = 1e-5;
  auto x = random_vector(n * dim, rng, 2.0), w = random_vector(dim, rng, 0.3, 1.0), dy = random_vector(n * dim, rng);
  // float forward == inference rmsnorm
  std::vector<float> xf(x.begin(), x.end()), wf(w.begin(), w.end()), yf(n * dim), yi(dim);
  rmsnorm_forward<float>(xf.data(), wf.data(), yf.data(), n, dim, eps, pool);
  for (int64_t t = 0; t < n; ++t) {
    rmsnorm(xf.data() + t * dim, wf.data(), yi.data(), (int)dim, (float)eps);
    for (int64_t i = 0; i < dim; ++i) ASSERT_NEAR(yf[t * dim + i], yi[i], 1e-6 * (1 + std::fabs(yi[i])));
  }
  auto loss = [&](const std::vector<double>& xx) {
    std::vector<double> y(n * dim);
    rmsnorm_forward<double>(xx.data(), w.data(), y.data(), n, dim, eps, pool);
    return dot(y, dy);
  };
  std::vector<double> dx(n * dim, 0.0);
  rmsnorm_backward<double>(x.data(), w.data(), dy.data(), dx.data(), n, dim, eps, false, pool);
  check_gradient(loss, x, dx, "rmsnorm");
  // accumulate adds to what is there
  std::vector<double> dx2(n * dim, 1.5);
  rmsnorm_backward<double>(x.data(), w.data(), dy.data(), dx2.data(), n, dim, eps, true, pool);
  for (size_t i = 0; i < dx.size(); ++i) ASSERT_NEAR(dx2[i], dx[i] + 1.5, 1e-12);
}

TEST(CalibOps, RopeMatchesInferenceBothStylesAndInverseIsTheBackward) {
  ThreadPool pool(2);
  std::mt19937_64 rng(5);
  const int heads = 3, D = 16;
  const int64_t n = 40, pos0 = 1000, stride = heads * D + 4;
  std::vector<float> inv_freq(D / 2);
  for (int i = 0; i < D / 2; ++i) inv_freq[i] = std::pow(10000.0f, -2.0f * i / D);
  for (RopeStyle style : {RopeStyle::Interleaved, RopeStyle::Neox}) {
    SCOPED_TRACE(style == RopeStyle::Neox ? "neox" : "interleaved");
    auto x = random_vector(n * stride, rng), dy = random_vector(n * stride, rng);
    // float == inference rope (same angles, same formulas)
    RopeTable<float> tf;
    tf.build(pos0, n, inv_freq);
    std::vector<float> xf(x.begin(), x.end()), xi = xf;
    rope_apply<float>(xf.data(), n, stride, heads, D, tf, style, false, pool);
    for (int64_t t = 0; t < n; ++t)
      for (int h = 0; h < heads; ++h) rope(xi.data() + t * stride + h * D, D, (int)(pos0 + t), inv_freq.data(), style);
    // (equal up to FMA contraction)
    for (size_t i = 0; i < xf.size(); ++i) ASSERT_NEAR(xf[i], xi[i], 1e-6) << i;
    // backward = inverse rotation, checked against finite differences
    RopeTable<double> td;
    td.build(pos0, n, inv_freq);
    auto loss = [&](const std::vector<double>& xx) {
      std::vector<double> y = xx;
      rope_apply<double>(y.data(), n, stride, heads, D, td, style, false, pool);
      return dot(y, dy);
    };
    std::vector<double> dx = dy;
    rope_apply<double>(dx.data(), n, stride, heads, D, td, style, true, pool);
    check_gradient(loss, x, dx, "rope");
    // and the inverse undoes the forward
    std::vector<double> y = x;
    rope_apply<double>(y.data(), n, stride, heads, D, td, style, false, pool);
    rope_apply<double>(y.data(), n, stride, heads, D, td, style, true, pool);
    for (size_t i = 0; i < x.size(); ++i) ASSERT_NEAR(y[i], x[i], 1e-12);
  }
}

TEST(CalibOps, SwigluForwardMatchesInferenceAndBackwardMatchesFiniteDifferences) {
  ThreadPool pool(2);
  std::mt19937_64 rng(6);
  const int64_t count = 300;
  auto g = random_vector(count, rng, 3.0), u = random_vector(count, rng), dh = random_vector(count, rng);
  std::vector<float> gf(g.begin(), g.end()), uf(u.begin(), u.end()), hf(count), hi(count);
  swiglu_forward<float>(gf.data(), uf.data(), hf.data(), count, pool);
  swiglu(gf.data(), uf.data(), hi.data(), (int)count);
  for (int64_t i = 0; i < count; ++i) ASSERT_NEAR(hf[i], hi[i], 1e-6 * (1 + std::fabs(hi[i])));
  std::vector<double> dg(count), du(count);
  swiglu_backward<double>(g.data(), u.data(), dh.data(), dg.data(), du.data(), count, pool);
  check_gradient(
      [&](const std::vector<double>& gg) {
        std::vector<double> h(count);
        swiglu_forward<double>(gg.data(), u.data(), h.data(), count, pool);
        return dot(h, dh);
      },
      g, dg, "swiglu d/dgate");
  check_gradient(
      [&](const std::vector<double>& uu) {
        std::vector<double> h(count);
        swiglu_forward<double>(g.data(), uu.data(), h.data(), count, pool);
        return dot(h, dh);
      },
      u, du, "swiglu d/dup");
}

TEST(CalibOps, GateMixBackwardIncludingGateGradient) {
  ThreadPool pool(2);
  std::mt19937_64 rng(7);
  const int H = 6, HKV = 2, D = 5;
  const int64_t n = 130, w = H * D;  // > 2 row chunks
  auto full = random_vector(n * w, rng), stream = random_vector(n * w, rng), d_o = random_vector(n * w, rng);
  std::vector<double> gates = {0.3, 0.85};
  auto mix = [&](const std::vector<double>& f, const std::vector<double>& s, const std::vector<double>& a) {
    std::vector<double> o(n * w);
    gate_mix_forward<double>(f.data(), s.data(), a.data(), o.data(), n, H, HKV, D, pool);
    return dot(o, d_o);
  };
  std::vector<double> d_full(n * w), d_stream(n * w), d_gates(HKV, 0.0);
  gate_mix_backward<double>(full.data(), stream.data(), gates.data(), d_o.data(), d_full.data(), d_stream.data(),
                            d_gates.data(), n, H, HKV, D, pool);
  check_gradient([&](const std::vector<double>& f) { return mix(f, stream, gates); }, full, d_full, "d full", 400);
  check_gradient([&](const std::vector<double>& s) { return mix(full, s, gates); }, stream, d_stream, "d stream", 400);
  check_gradient([&](const std::vector<double>& a) { return mix(full, stream, a); }, gates, d_gates, "d gates");
  // gate 1 passes the full output through exactly, gate 0 the streaming one
  std::vector<float> ff(full.begin(), full.end()), sf(stream.begin(), stream.end()), of(n * w);
  std::vector<float> ones = {1.0f, 0.0f};
  gate_mix_forward<float>(ff.data(), sf.data(), ones.data(), of.data(), n, H, HKV, D, pool);
  for (int64_t t = 0; t < n; ++t)
    for (int h = 0; h < H; ++h)
      for (int d = 0; d < D; ++d) {
        const int64_t i = t * w + h * D + d;
        ASSERT_EQ(of[i], h / 3 == 0 ? ff[i] : sf[i]);
      }
}

}  // namespace
}  // namespace duo
