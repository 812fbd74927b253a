// Blockwise attention (causal and Λ) against a plain softmax reference, and its backward
// pass against central finite differences in double.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "calibrate/flash_attention.h"
#include "core/thread_pool.h"
#include "grad_check.h"

namespace duo {
namespace {

using test::check_gradient;
using test::dot;
using test::random_vector;

struct Case {
  const char* name;
  AttentionDims dims;
  AttentionMask mask;
};

// Shapes cross the 64-row blocks; Λ windows both smaller and larger than a block, with and
// without sinks, so blocks are skipped, partly and fully visible.
std::vector<Case> cases() {
  return {
      {"causal n=150 GQA", {150, 4, 2, 8}, AttentionMask::causal()},
      {"causal n=64 MHA", {64, 2, 2, 8}, AttentionMask::causal()},
      {"lambda sink 5 recent 20", {150, 4, 2, 8}, AttentionMask::streaming(5, 20)},
      {"lambda sink 0 recent 70", {200, 3, 1, 8}, AttentionMask::streaming(0, 70)},
      {"lambda sink 64 recent 64", {260, 2, 1, 8}, AttentionMask::streaming(64, 64)},
      {"lambda sink 1 recent 1", {100, 2, 2, 8}, AttentionMask::streaming(1, 1)},
  };
}

TEST(CalibAttention, MaskBlockTestsAgreeWithElementTest) {
  using Mask = StreamingMask<int64_t>;
  for (const Mask m : {Mask{{5, 20}}, Mask{{0, 70}}, Mask{{64, 64}}, Mask{{1, 1}}})
    for (int64_t i0 = 0; i0 < 300; i0 += 37)
      for (int64_t j0 = 0; j0 < 300; j0 += 29)
        for (int64_t bi : {1, 16, 64})
          for (int64_t bj : {1, 16, 64}) {
            bool any = false, all = true;
            for (int64_t i = i0; i < i0 + bi; ++i)
              for (int64_t j = j0; j < j0 + bj; ++j) {
                const bool v = m.visible(i, j);
                any |= v, all &= v;
              }
            ASSERT_EQ(m.any(i0, i0 + bi, j0, j0 + bj), any) << i0 << " " << j0 << " " << bi << " " << bj;
            ASSERT_EQ(m.all(i0, i0 + bi, j0, j0 + bj), all) << i0 << " " << j0 << " " << bi << " " << bj;
          }
}

TEST(CalibAttention, ForwardMatchesReference) {
  ThreadPool pool(2);
  std::mt19937_64 rng(11);
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name);
    const AttentionDims& d = c.dims;
    const size_t nq = d.n * d.n_heads * d.head_dim, nk = d.n * d.n_kv_heads * d.head_dim;
    auto q = random_vector(nq, rng, 1.5), k = random_vector(nk, rng, 1.5), v = random_vector(nk, rng);
    std::vector<double> o(nq), ref(nq), lse(d.n * d.n_heads);
    flash_attention_forward<double>(q.data(), k.data(), v.data(), o.data(), lse.data(), d, c.mask, pool);
    attention_reference<double>(q.data(), k.data(), v.data(), ref.data(), d, c.mask);
    for (size_t i = 0; i < nq; ++i) ASSERT_NEAR(o[i], ref[i], 1e-12);
    std::vector<float> qf(q.begin(), q.end()), kf(k.begin(), k.end()), vf(v.begin(), v.end()), of(nq),
        lf(d.n * d.n_heads);
    flash_attention_forward<float>(qf.data(), kf.data(), vf.data(), of.data(), lf.data(), d, c.mask, pool);
    for (size_t i = 0; i < nq; ++i) ASSERT_NEAR(of[i], ref[i], 2e-5);
    for (size_t i = 0; i < lse.size(); ++i) ASSERT_NEAR(lf[i], lse[i], 2e-5);
  }
}

TEST(CalibAttention, BackwardMatchesFiniteDifferences) {
  ThreadPool pool(2);
  std::mt19937_64 rng(12);
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name);
    const AttentionDims& d = c.dims;
    const size_t nq = d.n * d.n_heads * d.head_dim, nk = d.n * d.n_kv_heads * d.head_dim;
    auto q = random_vector(nq, rng), k = random_vector(nk, rng), v = random_vector(nk, rng);
    auto d_o = random_vector(nq, rng);
    auto loss = [&](const std::vector<double>& qq, const std::vector<double>& kk, const std::vector<double>& vv) {
      std::vector<double> o(nq), lse(d.n * d.n_heads);
      flash_attention_forward<double>(qq.data(), kk.data(), vv.data(), o.data(), lse.data(), d, c.mask, pool);
      return dot(o, d_o);
    };
    std::vector<double> o(nq), lse(d.n * d.n_heads), dq(nq), dk(nk), dv(nk);
    flash_attention_forward<double>(q.data(), k.data(), v.data(), o.data(), lse.data(), d, c.mask, pool);
    flash_attention_backward<double>(q.data(), k.data(), v.data(), o.data(), lse.data(), d_o.data(), dq.data(),
                                     dk.data(), dv.data(), false, d, c.mask, pool);
    check_gradient([&](const std::vector<double>& x) { return loss(x, k, v); }, q, dq, "dq", 60);
    check_gradient([&](const std::vector<double>& x) { return loss(q, x, v); }, k, dk, "dk", 60);
    check_gradient([&](const std::vector<double>& x) { return loss(q, k, x); }, v, dv, "dv", 60);
    // accumulate adds the same gradient again
    std::vector<double> dq2 = dq, dk2 = dk, dv2 = dv;
    flash_attention_backward<double>(q.data(), k.data(), v.data(), o.data(), lse.data(), d_o.data(), dq2.data(),
                                     dk2.data(), dv2.data(), true, d, c.mask, pool);
    for (size_t i = 0; i < nq; ++i) ASSERT_NEAR(dq2[i], 2 * dq[i], 1e-12);
    for (size_t i = 0; i < nk; ++i) {
      ASSERT_NEAR(dk2[i], 2 * dk[i], 1e-12);
      ASSERT_NEAR(dv2[i], 2 * dv[i], 1e-12);
    }
  }
}

// The gradient of keys outside every window is exactly zero for Λ attention (those keys are
// never seen), while causal attention reaches them.
TEST(CalibAttention, LambdaKeysOutsideTheWindowGetNoGradient) {
  ThreadPool pool(1);
  std::mt19937_64 rng(13);
  const AttentionDims d{200, 2, 1, 8};
  const size_t nq = d.n * d.n_heads * d.head_dim, nk = d.n * d.head_dim;
  auto q = random_vector(nq, rng), k = random_vector(nk, rng), v = random_vector(nk, rng), d_o = random_vector(nq, rng);
  // Only the last query row has an upstream gradient: it sees keys < 4 and > 199 - 10.
  for (size_t i = 0; i < (size_t)(d.n - 1) * d.n_heads * d.head_dim; ++i) d_o[i] = 0;
  const auto mask = AttentionMask::streaming(4, 10);
  std::vector<double> o(nq), lse(d.n * d.n_heads), dq(nq), dk(nk), dv(nk);
  flash_attention_forward<double>(q.data(), k.data(), v.data(), o.data(), lse.data(), d, mask, pool);
  flash_attention_backward<double>(q.data(), k.data(), v.data(), o.data(), lse.data(), d_o.data(), dq.data(),
                                   dk.data(), dv.data(), false, d, mask, pool);
  for (int64_t j = 0; j < d.n; ++j) {
    double mag = 0;
    for (int dd = 0; dd < d.head_dim; ++dd) mag += std::fabs(dv[j * d.head_dim + dd]);
    if (j < 4 || j > 189)
      EXPECT_GT(mag, 0.0) << j;
    else
      EXPECT_EQ(mag, 0.0) << j;
  }
}

// The float kernels (vectorized rows) against the double ones, for head dims that are one,
// two and no whole number of 64-wide chunks.
TEST(CalibAttention, FloatKernelsMatchDouble) {
  ThreadPool pool(2);
  std::mt19937_64 rng(15);
  for (int D : {8, 12, 64, 128})
    for (const auto mask : {AttentionMask::causal(), AttentionMask::streaming(3, 50)}) {
      SCOPED_TRACE("head dim " + std::to_string(D) + (mask.kind == AttentionMask::Kind::Causal ? " causal" : " lambda"));
      const AttentionDims d{150, 4, 2, D};
      const size_t nq = d.n * d.n_heads * D, nk = d.n * d.n_kv_heads * D, nl = d.n * d.n_heads;
      auto q = random_vector(nq, rng), k = random_vector(nk, rng), v = random_vector(nk, rng);
      auto d_o = random_vector(nq, rng);
      std::vector<double> o(nq), lse(nl), dq(nq), dk(nk), dv(nk);
      flash_attention_forward<double>(q.data(), k.data(), v.data(), o.data(), lse.data(), d, mask, pool);
      flash_attention_backward<double>(q.data(), k.data(), v.data(), o.data(), lse.data(), d_o.data(), dq.data(),
                                       dk.data(), dv.data(), false, d, mask, pool);
      auto f = [](const std::vector<double>& x) { return std::vector<float>(x.begin(), x.end()); };
      auto qf = f(q), kf = f(k), vf = f(v), gf = f(d_o);
      std::vector<float> of(nq), lf(nl), dqf(nq), dkf(nk), dvf(nk);
      flash_attention_forward<float>(qf.data(), kf.data(), vf.data(), of.data(), lf.data(), d, mask, pool);
      flash_attention_backward<float>(qf.data(), kf.data(), vf.data(), of.data(), lf.data(), gf.data(), dqf.data(),
                                      dkf.data(), dvf.data(), false, d, mask, pool);
      auto close = [](const std::vector<float>& a, const std::vector<double>& b, const char* what) {
        double scale = 0, err = 0;
        for (size_t i = 0; i < b.size(); ++i) scale = std::max(scale, std::fabs(b[i]));
        for (size_t i = 0; i < b.size(); ++i) err = std::max(err, std::fabs(a[i] - b[i]));
        EXPECT_LT(err, 2e-5 * std::max(1.0, scale)) << what << " (max |value| " << scale << ")";
      };
      close(of, o, "o");
      close(lf, lse, "lse");
      close(dqf, dq, "dq");
      close(dkf, dk, "dk");
      close(dvf, dv, "dv");
    }
}

TEST(CalibAttention, ThreadCountDoesNotChangeResults) {
  ThreadPool p1(1), p3(3);
  std::mt19937_64 rng(14);
  const AttentionDims d{300, 4, 2, 16};
  const size_t nq = d.n * d.n_heads * d.head_dim, nk = d.n * d.n_kv_heads * d.head_dim;
  auto rf = [&](size_t n) {
    auto x = random_vector(n, rng);
    return std::vector<float>(x.begin(), x.end());
  };
  auto q = rf(nq), k = rf(nk), v = rf(nk), d_o = rf(nq);
  for (const auto mask : {AttentionMask::causal(), AttentionMask::streaming(16, 100)}) {
    std::vector<float> o1(nq), o3(nq), l1(d.n * 4), l3(d.n * 4), dq1(nq), dq3(nq), dk1(nk), dk3(nk), dv1(nk), dv3(nk);
    flash_attention_forward<float>(q.data(), k.data(), v.data(), o1.data(), l1.data(), d, mask, p1);
    flash_attention_forward<float>(q.data(), k.data(), v.data(), o3.data(), l3.data(), d, mask, p3);
    flash_attention_backward<float>(q.data(), k.data(), v.data(), o1.data(), l1.data(), d_o.data(), dq1.data(),
                                    dk1.data(), dv1.data(), false, d, mask, p1);
    flash_attention_backward<float>(q.data(), k.data(), v.data(), o3.data(), l3.data(), d_o.data(), dq3.data(),
                                    dk3.data(), dv3.data(), false, d, mask, p3);
    EXPECT_EQ(o1, o3);
    EXPECT_EQ(l1, l3);
    EXPECT_EQ(dq1, dq3);
    EXPECT_EQ(dk1, dk3);
    EXPECT_EQ(dv1, dv3);
  }
}

}  // namespace
}  // namespace duo
