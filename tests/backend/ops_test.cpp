// Vectorized element-wise ops against plain std:: formulas.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "backend/cpu/ops.h"

namespace duo {
namespace {

TEST(Ops, ExpMatchesStdExp) {
  std::vector<float> x;
  for (float v = -87.0f; v <= 88.0f; v += 0.0137f) x.push_back(v);
  std::vector<float> y = x;
  exp_inplace(y.data(), (int)y.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double ref = std::exp((double)x[i]);
    ASSERT_NEAR(y[i] / ref, 1.0, 1e-6) << "x=" << x[i];
  }
  float ninf = -INFINITY;
  exp_inplace(&ninf, 1);
  EXPECT_EQ(ninf, 0.0f);
  std::vector<float> minus_inf(16, -INFINITY);
  exp_inplace(minus_inf.data(), 16);
  for (float v : minus_inf) EXPECT_EQ(v, 0.0f);
}

TEST(Ops, SoftmaxSwigluDotRmsnorm) {
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 3.0f);
  const int n = 301;
  std::vector<float> a(n), b(n), w(n), out(n);
  for (int i = 0; i < n; ++i) a[i] = nd(rng), b[i] = nd(rng), w[i] = nd(rng);

  std::vector<float> s = a;
  softmax(s.data(), n);
  double mx = -1e30, z = 0;
  for (float v : a) mx = std::max(mx, (double)v);
  for (float v : a) z += std::exp(v - mx);
  for (int i = 0; i < n; ++i) ASSERT_NEAR(s[i], std::exp(a[i] - mx) / z, 1e-6);

  swiglu(a.data(), b.data(), out.data(), n);
  for (int i = 0; i < n; ++i) ASSERT_NEAR(out[i], a[i] / (1.0 + std::exp(-(double)a[i])) * b[i], 1e-4 * (1 + std::fabs(out[i])));

  double d = 0;
  for (int i = 0; i < n; ++i) d += (double)a[i] * b[i];
  EXPECT_NEAR(dot_f32(a.data(), b.data(), n), d, 1e-3 * std::sqrt((double)n) * 9);

  rmsnorm(a.data(), w.data(), out.data(), n, 1e-5f);
  double ss = 0;
  for (float v : a) ss += (double)v * v;
  const double scale = 1.0 / std::sqrt(ss / n + 1e-5);
  for (int i = 0; i < n; ++i) ASSERT_NEAR(out[i], a[i] * scale * w[i], 1e-4);
}

TEST(Ops, RopeRotatesPairsByPositionTimesFrequency) {
  const int d = 8;
  std::vector<float> inv_freq(d / 2);
  for (int i = 0; i < d / 2; ++i) inv_freq[i] = std::pow(10000.0f, -2.0f * i / d);
  std::vector<float> v(d);
  for (int i = 0; i < d; ++i) v[i] = (float)(i + 1);
  // Interleaved: pairs (0,1), (2,3), ...
  std::vector<float> r = v;
  rope(r.data(), d, 5, inv_freq.data(), RopeStyle::Interleaved);
  for (int i = 0; i < d / 2; ++i) {
    const double a = 5.0 * inv_freq[i];
    EXPECT_NEAR(r[2 * i], v[2 * i] * std::cos(a) - v[2 * i + 1] * std::sin(a), 1e-5);
    EXPECT_NEAR(r[2 * i + 1], v[2 * i] * std::sin(a) + v[2 * i + 1] * std::cos(a), 1e-5);
  }
  // Neox: pairs (i, i + d/2).
  r = v;
  rope(r.data(), d, 5, inv_freq.data(), RopeStyle::Neox);
  for (int i = 0; i < d / 2; ++i) {
    const double a = 5.0 * inv_freq[i];
    EXPECT_NEAR(r[i], v[i] * std::cos(a) - v[i + d / 2] * std::sin(a), 1e-5);
    EXPECT_NEAR(r[i + d / 2], v[i] * std::sin(a) + v[i + d / 2] * std::cos(a), 1e-5);
  }
  // Position 0 is the identity.
  r = v;
  rope(r.data(), d, 0, inv_freq.data(), RopeStyle::Neox);
  EXPECT_EQ(r, v);
}

// rope_heads (angles computed once per token) gives rope() of every head (to rounding: the
// compiler may contract the rotations into FMAs differently in the two loops).
TEST(Ops, RopeHeadsEqualsRopePerHead) {
  for (int d : {64, 128}) {
    std::vector<float> inv_freq(d / 2);
    for (int i = 0; i < d / 2; ++i) inv_freq[i] = std::pow(1e6f, -2.0f * i / d);
    std::mt19937 rng(d);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    const int heads = 9;
    std::vector<float> v(heads * d);
    for (auto& x : v) x = nd(rng);
    for (RopeStyle style : {RopeStyle::Interleaved, RopeStyle::Neox})
      for (int pos : {0, 1, 777, 32767}) {
        std::vector<float> a = v, b = v;
        rope_heads(a.data(), heads, d, pos, inv_freq.data(), style);
        for (int h = 0; h < heads; ++h) rope(b.data() + h * d, d, pos, inv_freq.data(), style);
        for (size_t i = 0; i < a.size(); ++i)
          ASSERT_NEAR(a[i], b[i], 1e-6 * (1.0 + std::fabs(b[i]))) << "d " << d << " pos " << pos << " i " << i;
      }
  }
}

}  // namespace
}  // namespace duo
