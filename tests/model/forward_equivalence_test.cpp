// Properties of the forward pass on a small random model: chunked pre-fill equals one pass,
// decode equals pre-fill, and the attention modes are one code path (an all-retrieval
// pattern is `full`, an all-streaming one is StreamingLLM, which equals full attention while
// the sequence still fits in sink + recent).
#include <gtest/gtest.h>

#include <cmath>

#include "backend/cpu/cpu_forward.h"
#include "core/thread_pool.h"
#include "model/model.h"
#include "model/tiny_model_config.h"

namespace duo {
namespace {

using test::tiny_config;

std::vector<int32_t> tokens(int n, int vocab) {
  std::vector<int32_t> t(n);
  for (int i = 0; i < n; ++i) t[i] = (i * 7919 + 13) % vocab;
  return t;
}

// All logits of a sequence, fed in chunks of the given sizes (cycled).
std::vector<float> run(Model& m, const HeadPlan& plan, const std::vector<int32_t>& toks, int64_t chunk,
                       ThreadPool& pool) {
  CpuForward cpu(m);
  auto cache = cpu.new_cache(plan);
  std::vector<float> logits(toks.size() * m.config().n_vocab);
  cpu.forward(*cache, toks.data(), (int64_t)toks.size(), logits.data(), pool, true, chunk);
  EXPECT_EQ(cache->n_past(), (int64_t)toks.size());
  return logits;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, (double)std::fabs(a[i] - b[i]));
  return m;
}

class ForwardEquivalence : public ::testing::TestWithParam<bool> {};

TEST_P(ForwardEquivalence, ChunkedPrefillEqualsOnePass) {
  auto m = Model::synthetic(tiny_config(GetParam()), 42);
  ThreadPool pool(2);
  const auto toks = tokens(300, m->config().n_vocab);
  for (HeadKind kind : {HeadKind::Retrieval, HeadKind::Streaming}) {
    HeadPlan plan = HeadPlan::uniform(3, 2, kind, {4, 32});
    const auto one = run(*m, plan, toks, 300, pool);
    for (int64_t chunk : {1, 7, 64, 299}) {
      const auto chunked = run(*m, plan, toks, chunk, pool);
      EXPECT_LT(max_abs_diff(one, chunked), 2e-4) << "chunk " << chunk << " kind " << (int)kind;
    }
  }
}

TEST_P(ForwardEquivalence, ModesAreOneCodePath) {
  auto m = Model::synthetic(tiny_config(GetParam()), 7);
  ThreadPool pool(2);
  const auto toks = tokens(200, m->config().n_vocab);
  const StreamingWindow w{4, 32};
  const auto full = run(*m, HeadPlan::uniform(3, 2, HeadKind::Retrieval, w), toks, 50, pool);
  const auto streaming = run(*m, HeadPlan::uniform(3, 2, HeadKind::Streaming, w), toks, 50, pool);
  // While position < sink + recent every key is still visible: streaming == full.
  const int V = m->config().n_vocab;
  for (int t = 0; t < 200; ++t) {
    double d = 0;
    for (int i = 0; i < V; ++i) d = std::max(d, (double)std::fabs(full[t * V + i] - streaming[t * V + i]));
    if (t < w.recent) {
      EXPECT_LT(d, 2e-4) << "position " << t;
    } else if (t > 2 * w.recent) {
      EXPECT_GT(d, 1e-3) << "streaming should differ from full at position " << t;
    }
  }
  // A duo plan mixing both kinds lies strictly between: differs from both.
  HeadPlan mixed = HeadPlan::uniform(3, 2, HeadKind::Retrieval, w);
  mixed.kinds[1][0] = HeadKind::Streaming;
  mixed.kinds[2][1] = HeadKind::Streaming;
  const auto duo = run(*m, mixed, toks, 50, pool);
  EXPECT_GT(max_abs_diff(duo, full), 1e-3);
  EXPECT_GT(max_abs_diff(duo, streaming), 1e-3);
}

TEST_P(ForwardEquivalence, DecodeMatchesPrefillAndThreadsAgree) {
  auto m = Model::synthetic(tiny_config(GetParam()), 99);
  const auto toks = tokens(90, m->config().n_vocab);
  HeadPlan plan = HeadPlan::uniform(3, 2, HeadKind::Retrieval);
  ThreadPool one(1), three(3);
  const auto a = run(*m, plan, toks, 90, one);
  const auto b = run(*m, plan, toks, 1, three);
  EXPECT_LT(max_abs_diff(a, b), 2e-4);
}

TEST_P(ForwardEquivalence, ReorderedHeadsGiveTheSameLogits) {
  auto plain = Model::synthetic(tiny_config(GetParam()), 5);
  auto reordered = Model::synthetic(tiny_config(GetParam()), 5);
  ThreadPool pool(2);
  const auto toks = tokens(150, plain->config().n_vocab);
  HeadPlan mixed = HeadPlan::uniform(3, 2, HeadKind::Retrieval, {4, 32});
  mixed.kinds[0][0] = HeadKind::Streaming;  // layer 0: streaming head first -> gets moved
  mixed.kinds[2][0] = HeadKind::Streaming;
  const HeadPlan moved = reordered->reorder_heads(mixed);
  EXPECT_EQ(moved.kinds[0][0], HeadKind::Retrieval);
  EXPECT_EQ(moved.kinds[0][1], HeadKind::Streaming);
  EXPECT_EQ(moved.kinds[1], mixed.kinds[1]);
  const auto a = run(*plain, mixed, toks, 40, pool);
  const auto b = run(*reordered, moved, toks, 40, pool);
  EXPECT_LT(max_abs_diff(a, b), 2e-4);
  EXPECT_THROW(reordered->reorder_heads(mixed), std::runtime_error);
}

INSTANTIATE_TEST_SUITE_P(LlamaAndQwen, ForwardEquivalence, ::testing::Values(false, true));

TEST(Forward, RejectsBadTokens) {
  auto m = Model::synthetic(tiny_config(false), 1);
  CpuForward cpu(*m);
  ThreadPool pool(1);
  auto cache = cpu.new_cache(HeadPlan::uniform(3, 2, HeadKind::Retrieval));
  std::vector<float> logits(m->config().n_vocab);
  const int32_t bad[] = {5, 300};
  EXPECT_THROW(cpu.forward(*cache, bad, 2, logits.data(), pool), std::runtime_error);
  const int32_t neg[] = {-1};
  EXPECT_THROW(cpu.forward(*cache, neg, 1, logits.data(), pool), std::runtime_error);
  EXPECT_EQ(cache->n_past(), 0);
}

}  // namespace
}  // namespace duo
