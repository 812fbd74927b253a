// The CPU sampler against a reference written here from the definitions (softmax of logits /
// temperature, top-k cut, then the smallest nucleus whose mass reaches top-p, renormalized):
//  - with a fixed uniform draw: the sampler and the reference pick the same token, draw by draw;
//  - as a distribution: seeded draws pass a chi-square test against the reference probabilities,
//    and tokens the cuts remove are never drawn.
// min-p, penalties and logit bias: sampler_options_test.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "duo/sampler.h"

namespace duo {
namespace {

// Reference probabilities of every token (0 for the ones the cuts remove), in double.
std::vector<double> reference_probs(const std::vector<float>& logits, const SamplerConfig& c) {
  const int n = (int)logits.size();
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  // Largest logit first; equal logits by smaller token id (a fixed, documented tie order).
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return logits[a] > logits[b]; });
  const int k = c.top_k > 0 ? std::min(c.top_k, n) : n;
  double mx = -INFINITY;
  for (int i = 0; i < k; ++i) mx = std::max(mx, (double)logits[order[i]] / c.temperature);
  std::vector<double> w(k);
  double z = 0;
  for (int i = 0; i < k; ++i) z += w[i] = std::exp((double)logits[order[i]] / c.temperature - mx);
  // Nucleus: token i stays when the mass of the tokens before it is still below top_p.
  int keep = k;
  if (c.top_p < 1.0f) {
    double before = 0;
    for (int i = 0; i < k; ++i) {
      if (before >= c.top_p) {
        keep = i;
        break;
      }
      before += w[i] / z;
    }
  }
  double zk = 0;
  for (int i = 0; i < keep; ++i) zk += w[i];
  std::vector<double> p(n, 0.0);
  for (int i = 0; i < keep; ++i) p[order[i]] = w[i] / zk;
  return p;
}

// The token a uniform draw u in [0, 1) selects: the first (in the sorted order) whose
// cumulative probability exceeds u.
int reference_pick(const std::vector<float>& logits, const SamplerConfig& c, double u) {
  const std::vector<double> p = reference_probs(logits, c);
  std::vector<int> order(p.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return logits[a] > logits[b]; });
  double cum = 0;
  int last = order[0];
  for (int t : order) {
    if (p[t] == 0) continue;
    cum += p[t];
    last = t;
    if (u < cum) return t;
  }
  return last;
}

std::vector<float> random_logits(int n, uint64_t seed, float spread) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.0f, spread);
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

// The configurations every test goes through: temperature alone (below and above 1, where
// dividing and multiplying differ), top-k, top-p, and both cuts together.
std::vector<SamplerConfig> configs() {
  return {{0.7f, 0, 1.0f, 0}, {1.6f, 0, 1.0f, 0}, {0.9f, 5, 1.0f, 0},
          {1.3f, 0, 0.6f, 0}, {0.8f, 0, 0.9f, 0}, {1.2f, 6, 0.75f, 0}};
}

// A draw at a fixed uniform number: a twin sampler with the same seed hands out the number the
// sampler will use for its first draw, and the reference maps it to a token on its own.
TEST(Sampler, FixedDrawMatchesReference) {
  int checked = 0;
  for (const SamplerConfig& base : configs())
    for (uint64_t trial = 0; trial < 400; ++trial) {
      SamplerConfig c = base;
      c.seed = 1000 + trial;
      const auto logits = random_logits(40, trial * 31 + 7, 2.0f);
      const double u = Sampler(c).uniform01();
      Sampler s(c);
      const int got = s.sample(logits.data(), (int)logits.size());
      ASSERT_EQ(got, reference_pick(logits, c, u))
          << "temperature " << c.temperature << " top_k " << c.top_k << " top_p " << c.top_p << " u " << u;
      ++checked;
    }
  EXPECT_EQ(checked, 2400);
}

// A nucleus that is known exactly: probabilities 0.5, 0.3, 0.15, 0.05 (logits are their logs,
// temperature 1). top_p 0.79 is reached by the first two tokens, 0.45 by the first one, 0.81
// needs three and 0.96 all four (no cut sits on a float rounding boundary). A token outside
// must never come, whatever the draw.
TEST(Sampler, TopPKeepsTheSmallestNucleus) {
  const std::vector<float> logits = {std::log(0.15f), std::log(0.5f), std::log(0.05f), std::log(0.3f)};
  struct Case {
    float top_p;
    std::vector<int> allowed;
  };
  for (const Case& k : {Case{0.79f, {1, 3}}, Case{0.45f, {1}}, Case{0.81f, {1, 3, 0}}, Case{0.96f, {1, 3, 0, 2}}}) {
    Sampler s({1.0f, 0, k.top_p, 42});
    std::vector<int> seen(4, 0);
    for (int i = 0; i < 4000; ++i) ++seen[s.sample(logits.data(), 4)];
    for (int t = 0; t < 4; ++t) {
      const bool allowed = std::find(k.allowed.begin(), k.allowed.end(), t) != k.allowed.end();
      if (allowed)
        EXPECT_GT(seen[t], 0) << "top_p " << k.top_p << " token " << t;
      else
        EXPECT_EQ(seen[t], 0) << "top_p " << k.top_p << " token " << t << " is outside the nucleus";
    }
  }
}

TEST(Sampler, TopKKeepsTheKLargest) {
  const std::vector<float> logits = {0.1f, 2.0f, -1.0f, 1.5f, 1.9f, 0.0f};
  Sampler s({5.0f, 3, 1.0f, 3});  // a high temperature: every kept token comes often
  std::vector<int> seen(6, 0);
  for (int i = 0; i < 3000; ++i) ++seen[s.sample(logits.data(), 6)];
  for (int t : {1, 3, 4}) EXPECT_GT(seen[t], 500) << t;
  for (int t : {0, 2, 5}) EXPECT_EQ(seen[t], 0) << t;
}

// Upper critical value of chi-square with `df` degrees of freedom at significance 1e-4
// (Wilson-Hilferty approximation, good to a few percent for df >= 3).
double chi2_critical(int df) {
  const double z = 3.719;  // standard normal quantile at 1 - 1e-4
  const double a = 2.0 / (9.0 * df);
  return df * std::pow(1.0 - a + z * std::sqrt(a), 3);
}

// Seeded draws against the reference distribution. The seed makes the run deterministic, so
// it cannot flake; the 1e-4 level means a correct sampler passes for nearly every seed.
TEST(Sampler, ChiSquareAgainstReferenceDistribution) {
  const int V = 12, N = 20000;
  for (const SamplerConfig& base : configs()) {
    SamplerConfig c = base;
    c.seed = 77;
    const auto logits = random_logits(V, 5, 1.5f);
    const auto p = reference_probs(logits, c);
    Sampler s(c);
    std::vector<int> count(V, 0);
    for (int i = 0; i < N; ++i) ++count[s.sample(logits.data(), V)];
    double chi2 = 0;
    int df = -1;
    for (int t = 0; t < V; ++t) {
      if (p[t] == 0) {
        EXPECT_EQ(count[t], 0) << "token " << t << " is cut but was drawn";
        continue;
      }
      const double e = p[t] * N;
      chi2 += (count[t] - e) * (count[t] - e) / e;
      ++df;
    }
    ASSERT_GE(df, 1);
    const double crit = df >= 3 ? chi2_critical(df) : (df == 1 ? 15.14 : 18.42);  // exact for df 1, 2
    EXPECT_LT(chi2, crit) << "temperature " << c.temperature << " top_k " << c.top_k << " top_p " << c.top_p
                          << " (df " << df << ")";
  }
}

TEST(Sampler, GreedyAtZeroTemperatureAndSeedReproducible) {
  const auto logits = random_logits(50, 9, 1.0f);
  Sampler g({0.0f, 0, 1.0f, 0});
  const int best = (int)(std::max_element(logits.begin(), logits.end()) - logits.begin());
  EXPECT_EQ(g.sample(logits.data(), 50), best);
  Sampler a({1.0f, 0, 1.0f, 5}), b({1.0f, 0, 1.0f, 5});
  for (int i = 0; i < 100; ++i) ASSERT_EQ(a.sample(logits.data(), 50), b.sample(logits.data(), 50));
}

}  // namespace
}  // namespace duo
