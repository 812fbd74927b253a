// The logit-distillation loss (calibrate/logit_loss.h) against a direct long-double evaluation of
// KL(softmax(a) || softmax(b)) and its gradient against finite differences (double).
#include "calibrate/logit_loss.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "calibrate/grad_check.h"
#include "core/error.h"
#include "core/thread_pool.h"

namespace duo {
namespace {

// KL(softmax(a) || softmax(b)) from the probabilities themselves (no log-sum-exp algebra).
long double direct_kl(const double* a, const double* b, int64_t V) {
  long double sa = 0, sb = 0;
  for (int64_t i = 0; i < V; ++i) sa += std::exp((long double)a[i]), sb += std::exp((long double)b[i]);
  long double kl = 0;
  for (int64_t i = 0; i < V; ++i) {
    const long double p = std::exp((long double)a[i]) / sa, q = std::exp((long double)b[i]) / sb;
    kl += p * std::log(p / q);
  }
  return kl;
}

std::vector<double> random_logits(int64_t n, double scale, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> nd(0.0, scale);
  std::vector<double> z((size_t)n);
  for (auto& x : z) x = nd(rng);
  return z;
}

TEST(LogitKl, MatchesDirectEvaluation) {
  const int64_t R = 3, V = 50;
  const auto zf = random_logits(R * V, 3.0, 1);
  auto zm = zf;
  const auto noise = random_logits(R * V, 0.5, 2);
  for (size_t i = 0; i < zm.size(); ++i) zm[i] += noise[i];
  std::vector<double> d((size_t)(R * V));
  const double kl = logit_kl<double>(zf.data(), zm.data(), R, V, d.data(), nullptr);
  long double want = 0;
  for (int64_t r = 0; r < R; ++r) want += direct_kl(zf.data() + r * V, zm.data() + r * V, V);
  want /= R;
  EXPECT_GT(kl, 1e-3);
  EXPECT_NEAR(kl, (double)want, 1e-12 * (double)want);
  // Each row's gradient sums to 0 (both are distributions), and it is (q - p) / R.
  for (int64_t r = 0; r < R; ++r) {
    double s = 0;
    for (int64_t i = 0; i < V; ++i) s += d[(size_t)(r * V + i)];
    EXPECT_NEAR(s, 0.0, 1e-15);
  }
}

TEST(LogitKl, GradientMatchesFiniteDifferences) {
  const int64_t R = 2, V = 17;
  const auto zf = random_logits(R * V, 2.0, 3);
  const auto zm = random_logits(R * V, 2.0, 4);
  std::vector<double> d((size_t)(R * V)), unused((size_t)(R * V));
  logit_kl<double>(zf.data(), zm.data(), R, V, d.data(), nullptr);
  auto loss = [&](const std::vector<double>& z) { return logit_kl<double>(zf.data(), z.data(), R, V, unused.data(), nullptr); };
  test::check_gradient(loss, zm, d, "d KL / d z_mix", 0, 1e-6, 1e-8);
}

TEST(LogitKl, ZeroForEqualLogitsAndThreadIndependent) {
  const int64_t R = 7, V = 301;
  const auto z = random_logits(R * V, 4.0, 5);
  std::vector<double> d((size_t)(R * V), 1.0);
  EXPECT_EQ(logit_kl<double>(z.data(), z.data(), R, V, d.data(), nullptr), 0.0);
  for (double x : d) ASSERT_EQ(x, 0.0);
  // A shift of every logit of a row leaves its distribution, and so the loss, unchanged.
  auto zs = z;
  for (auto& x : zs) x += 12.5;
  EXPECT_NEAR(logit_kl<double>(z.data(), zs.data(), R, V, d.data(), nullptr), 0.0, 1e-12);
  const auto zm = random_logits(R * V, 4.0, 6);
  std::vector<double> d1((size_t)(R * V)), d2((size_t)(R * V));
  ThreadPool pool(2);
  const double a = logit_kl<double>(z.data(), zm.data(), R, V, d1.data(), nullptr);
  const double b = logit_kl<double>(z.data(), zm.data(), R, V, d2.data(), &pool);
  EXPECT_EQ(a, b);
  EXPECT_EQ(d1, d2);
  EXPECT_THROW(logit_kl<double>(z.data(), zm.data(), 0, V, d1.data(), nullptr), Error);
}

}  // namespace
}  // namespace duo
