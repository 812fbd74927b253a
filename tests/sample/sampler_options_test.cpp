// The sampler's host-only options against references written here from their definitions:
//  - logit adjustments (apply_logit_adjust) on a hand-computed example: repetition penalty over
//    prompt and output tokens (divide a positive logit, multiply a negative one, once per
//    distinct token), presence and frequency penalties over output counts, then the bias;
//  - min-p: the kept set is exactly the tokens whose probability is >= min_p x the top one's,
//    and a fixed uniform draw picks what the reference picks;
//  - the sampler's own history: penalties see the prompt it was given and the tokens it picked;
//  - logprobs: the log-softmax of the row (computed here in long double) and its top entries.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "duo/logit_adjust.h"
#include "sample/logprobs.h"
#include "duo/sampler.h"

namespace duo {
namespace {

TEST(LogitAdjust, HandComputedExample) {
  std::vector<float> logits = {2.0f, -1.0f, 0.5f, 3.0f, 1.0f};
  TokenHistory h;
  const int32_t prompt[] = {0, 0};
  h.add_prompt(prompt, 2);
  for (int32_t id : {1, 1, 2}) h.add_output(id);
  LogitAdjust a;
  a.repetition_penalty = 2.0f;
  a.presence_penalty = 0.5f;
  a.frequency_penalty = 0.25f;
  a.logit_bias = {{3, -100.0f}, {4, 1.5f}};
  apply_logit_adjust(a, h, logits.data(), 5);
  // 0: prompt token, positive: 2 / 2. 1: output twice, negative: -1 * 2 - (0.5 + 2 * 0.25).
  // 2: output once: 0.5 / 2 - (0.5 + 0.25). 3: unseen, biased. 4: unseen, biased.
  const std::vector<float> want = {1.0f, -3.0f, -0.5f, -97.0f, 2.5f};
  for (int i = 0; i < 5; ++i) EXPECT_FLOAT_EQ(logits[i], want[i]) << i;
  EXPECT_FALSE(LogitAdjust{}.active());
  EXPECT_TRUE(a.active());
}

// Probabilities 0.5, 0.3, 0.15, 0.05 (temperature 1): min_p 0.35 keeps p >= 0.175, min_p 0.25
// keeps p >= 0.125, min_p 0.05 keeps all; min_p 0.9 only the top token.
TEST(SamplerMinP, KeepsTokensAboveTheFractionOfTheTop) {
  const std::vector<float> logits = {std::log(0.15f), std::log(0.5f), std::log(0.05f), std::log(0.3f)};
  struct Case {
    float min_p;
    std::vector<int> allowed;
  };
  for (const Case& k : {Case{0.35f, {1, 3}}, Case{0.25f, {1, 3, 0}}, Case{0.05f, {1, 3, 0, 2}}, Case{0.9f, {1}}}) {
    SamplerConfig c{1.0f, 0, 1.0f, 42};
    c.min_p = k.min_p;
    Sampler s(c);
    std::vector<int> seen(4, 0);
    for (int i = 0; i < 4000; ++i) ++seen[s.sample(logits.data(), 4)];
    for (int t = 0; t < 4; ++t) {
      const bool allowed = std::find(k.allowed.begin(), k.allowed.end(), t) != k.allowed.end();
      if (allowed)
        EXPECT_GT(seen[t], 0) << "min_p " << k.min_p << " token " << t;
      else
        EXPECT_EQ(seen[t], 0) << "min_p " << k.min_p << " token " << t << " is below the cut";
    }
  }
}

// A fixed draw against the reference: softmax at the temperature, keep p >= min_p * max p,
// renormalize, walk the sorted order until the cumulative mass passes u.
TEST(SamplerMinP, FixedDrawMatchesReference) {
  for (uint64_t trial = 0; trial < 500; ++trial) {
    std::mt19937_64 rng(trial);
    std::normal_distribution<float> nd(0.0f, 2.0f);
    std::vector<float> logits(30);
    for (auto& x : logits) x = nd(rng);
    SamplerConfig c{0.8f, 0, 1.0f, 500 + trial};
    c.min_p = 0.02f + 0.3f * (float)(trial % 5) / 4.0f;
    const double u = Sampler(c).uniform01();
    std::vector<int> order(30);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return logits[a] > logits[b]; });
    std::vector<double> p(30);
    double z = 0;
    for (int i = 0; i < 30; ++i) z += p[i] = std::exp((double)(logits[i] - logits[order[0]]) / c.temperature);
    double kept = 0;
    for (int i = 0; i < 30; ++i) kept += p[i] / z >= c.min_p * (p[order[0]] / z) ? p[i] : 0.0;
    int want = order[0];
    double cum = 0;
    for (int t : order) {
      if (p[t] / z < c.min_p * (p[order[0]] / z)) break;
      cum += p[t] / kept;
      want = t;
      if (u < cum) break;
    }
    Sampler s(c);
    ASSERT_EQ(s.sample(logits.data(), 30), want) << "trial " << trial << " min_p " << c.min_p;
  }
}

TEST(SamplerPenalties, SeeThePromptAndTheSamplersOwnPicks) {
  // Greedy with a frequency penalty of 2: 0 is picked, then penalized below 1, and so on.
  const std::vector<float> logits = {1.0f, 0.9f, 0.1f};
  SamplerConfig f;
  f.adjust.frequency_penalty = 2.0f;
  Sampler s(f);
  std::vector<int> picks;
  for (int i = 0; i < 4; ++i) picks.push_back(s.sample(logits.data(), 3));
  // After 0, 1, 2 each once, all are at x - 2: 0 again.
  EXPECT_EQ(picks, (std::vector<int>{0, 1, 2, 0}));
  // The repetition penalty counts prompt tokens: 1.0 / 1.5 falls below 0.9.
  SamplerConfig r;
  r.adjust.repetition_penalty = 1.5f;
  Sampler rs(r);
  const int32_t prompt[] = {0};
  rs.add_prompt(prompt, 1);
  EXPECT_EQ(rs.sample(logits.data(), 3), 1);
  // A bias of -100 on the top token: never drawn, even at a high temperature.
  SamplerConfig b{2.0f, 0, 1.0f, 9};
  b.adjust.logit_bias = {{0, -100.0f}};
  Sampler bs(b);
  for (int i = 0; i < 2000; ++i) ASSERT_NE(bs.sample(logits.data(), 3), 0);
  EXPECT_TRUE(b.host_only());
  EXPECT_FALSE(SamplerConfig{}.host_only());
}

TEST(TokenLogprobs, AreTheLogSoftmaxOfTheRow) {
  std::mt19937_64 rng(3);
  std::normal_distribution<float> nd(0.0f, 4.0f);
  std::vector<float> logits(1000);
  for (auto& x : logits) x = nd(rng);
  long double z = 0;
  for (float x : logits) z += std::exp((long double)x);
  const TokenLogprobs lp = token_logprobs(logits.data(), 1000, 17, 5);
  EXPECT_EQ(lp.id, 17);
  EXPECT_NEAR(lp.logprob, (double)((long double)logits[17] - std::log(z)), 1e-5);
  std::vector<int> order(1000);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int a, int b) { return logits[a] > logits[b]; });
  ASSERT_EQ(lp.top.size(), 5u);
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(lp.top[i].first, order[i]);
    EXPECT_NEAR(lp.top[i].second, (double)((long double)logits[order[i]] - std::log(z)), 1e-5);
  }
  EXPECT_TRUE(token_logprobs(logits.data(), 1000, 17, 0).top.empty());
}

}  // namespace
}  // namespace duo
