// `duo eval ppl` on the real SmolLM2 (CPU): the chunked, all-logits scoring against an
// independent reference that feeds the same tokens one at a time through Session::feed and takes
// the log-softmax of each last-token logit row itself.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "duo/engine.h"
#include "eval/perplexity.h"
#include "test_support.h"

namespace duo {
namespace {

EngineOptions smol_options(const std::string& path, AttentionMode mode) {
  EngineOptions o;
  o.model_path = path;
  o.threads = 2;
  o.attention = mode;
  o.window.sink = 16;
  o.window.recent = 64;
  return o;
}

TEST(Perplexity, ChunkedScoringMatchesTokenByTokenReference) {
  DUO_REQUIRE_MODEL(path, test::kSmolLM2);
  Engine engine(smol_options(path, AttentionMode::Full));
  PerplexityOptions po;
  po.length = 160;
  po.chunk = 48;  // chunks end off every boundary the reference has
  const PerplexityResult r = run_perplexity(engine, po);
  ASSERT_EQ(r.scored, po.length - 1);
  ASSERT_EQ(r.tail_from, po.length / 2);
  ASSERT_EQ(r.tail_scored, po.length - po.length / 2);

  const std::vector<int32_t> ids = perplexity_tokens(engine.tokenizer(), po.length, po.seed);
  ASSERT_EQ((int64_t)ids.size(), po.length);
  auto session = engine.new_session();
  double sum = 0.0, tail = 0.0;
  for (int64_t p = 0; p + 1 < po.length; ++p) {
    const std::vector<float>& row = session->feed({ids[(size_t)p]});
    double mx = -1e300;
    for (float x : row) mx = std::max(mx, (double)x);
    double z = 0.0;
    for (float x : row) z += std::exp((double)x - mx);
    const double nll = std::log(z) + mx - row[(size_t)ids[(size_t)p + 1]];
    sum += nll;
    if (p + 1 >= r.tail_from) tail += nll;
  }
  const double ref = sum / (po.length - 1), ref_tail = tail / r.tail_scored;
  // Chunked pre-fill and one-token steps differ only in float summation order.
  EXPECT_NEAR(r.nll, ref, 2e-3);
  EXPECT_NEAR(r.tail_nll, ref_tail, 2e-3);
  EXPECT_NEAR(r.ppl, std::exp(ref), 2e-3 * std::exp(ref));
  EXPECT_GT(r.nll, 0.1);  // a real model on real text: neither free nor absurd
  EXPECT_LT(r.nll, 8.0);
}

TEST(Perplexity, StreamingWindowCostsLikelihoodOnLongText) {
  DUO_REQUIRE_MODEL(path, test::kSmolLM2);
  PerplexityOptions po;
  po.length = 1024;
  po.chunk = 128;
  Engine full(smol_options(path, AttentionMode::Full));
  Engine streaming(smol_options(path, AttentionMode::Streaming));
  const PerplexityResult f = run_perplexity(full, po), s = run_perplexity(streaming, po);
  // Past the 80-token window the streaming heads have lost the repeated prose full attention
  // still sees; in the first chunk both are the same computation up to the window.
  EXPECT_GT(s.tail_nll, f.tail_nll + 0.05) << "full " << f.tail_ppl << " streaming " << s.tail_ppl;
  EXPECT_LT(s.kv_bytes, f.kv_bytes);
}

TEST(Perplexity, RejectsBadLengths) {
  DUO_REQUIRE_MODEL(path, test::kSmolLM2);
  Engine engine(smol_options(path, AttentionMode::Full));
  PerplexityOptions po;
  po.length = 1;
  EXPECT_THROW(run_perplexity(engine, po), std::exception);
  po.length = engine.max_context() + 1;
  EXPECT_THROW(run_perplexity(engine, po), std::exception);
}

}  // namespace
}  // namespace duo
