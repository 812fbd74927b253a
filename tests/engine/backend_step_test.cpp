// The CPU backend's batched step (ModelBackend::step, what `duo serve` runs) against one
// sequence at a time (ModelBackend::forward): sequences with mixed plans (full, streaming,
// duo patterns in the slot order of a model whose heads were reordered), lengths and KV types
// share steps, pre-fill chunks next to decode tokens, as the scheduler builds them.
//
// Tolerance: more than 4 decode tokens in a step take the tiled matmul path, which sums in
// another order (forward_batch_test: < 2e-4 on these logits for f32). The rounding differences
// reach the caches, so later steps attend over slightly different keys and values; with
// quantized caches (q8, q4) they can move a value across a quantization level. 2e-3 absolute
// holds all types with margin (the worst per type is printed); greedy picks must be equal.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <map>
#include <random>

#include "core/error.h"
#include "core/thread_pool.h"
#include "engine/backend.h"
#include "model/model.h"
#include "model/tiny_model_config.h"
#include "duo/sampler.h"

namespace duo {
namespace {

constexpr double kTolerance = 2e-3;
const KvType kTypes[] = {KvType::F32, KvType::F16, KvType::BF16, KvType::Q8, KvType::Q4};

std::vector<int32_t> tokens(int n, int vocab, int salt) {
  std::vector<int32_t> t(n);
  for (int i = 0; i < n; ++i) t[i] = (i * 7919 + 13 + salt * 31) % vocab;
  return t;
}

// Plan kinds: full, streaming (two windows), and a random duo pattern, in slot order.
HeadPlan plan_for(const Model& m, int i, std::mt19937& rng) {
  const ModelConfig& c = m.config();
  switch (i % 4) {
    case 0: return HeadPlan::uniform(c.n_layers, c.n_kv_heads, HeadKind::Retrieval, {4, 16});
    case 1: return HeadPlan::uniform(c.n_layers, c.n_kv_heads, HeadKind::Streaming, {4, 16});
    case 2: return HeadPlan::uniform(c.n_layers, c.n_kv_heads, HeadKind::Streaming, {0, 8});
    default: {
      HeadPlan p = HeadPlan::uniform(c.n_layers, c.n_kv_heads, HeadKind::Retrieval, {2, 8});
      for (auto& layer : p.kinds)
        for (auto& k : layer) k = rng() % 2 ? HeadKind::Streaming : HeadKind::Retrieval;
      return m.to_slot_order(p);
    }
  }
}

class BackendStep : public ::testing::TestWithParam<bool> {};

TEST_P(BackendStep, MixedStepsEqualOneSequenceAtATime) {
  // The tiny model with 64-dimensional heads (q8 and q4 quantize groups of 64 channels).
  ModelConfig c = test::tiny_config(GetParam());
  c.n_heads = 4;
  c.head_dim = 64;
  c.n_embd = 256;
  auto m = Model::synthetic(c, 21);
  // Heads reordered for one pattern, so the other patterns' slot order is not the identity.
  HeadPlan first = HeadPlan::uniform(3, 2, HeadKind::Retrieval);
  first.kinds[0][0] = first.kinds[2][0] = HeadKind::Streaming;
  m->reorder_heads(first);
  ThreadPool pool(2);
  auto be = make_cpu_backend(*m, pool);
  const int V = m->config().n_vocab;
  const int64_t chunk = 32;
  const int prompts[] = {5, 37, 90, 130, 1, 200, 64, 17, 70, 3};
  constexpr int kSeqs = 10, kDecode = 8;
  std::mt19937 rng(4);
  struct S {
    std::unique_ptr<SequenceState> alone, batched;
    std::vector<int32_t> prompt;
    int64_t fed = 0;
    int decoded = 0;
    int32_t next = -1;
    Sampler sampler{SamplerConfig{}};
    KvType type;
  };
  std::vector<S> seqs(kSeqs);
  for (int i = 0; i < kSeqs; ++i) {
    HeadPlan p = plan_for(*m, i, rng);
    p.kv_type = kTypes[i % 5];  // every type with two plan kinds, all in the same steps
    const int64_t cap = prompts[i] + kDecode;
    seqs[i].alone = be->new_sequence(p, cap);
    seqs[i].batched = be->new_sequence(p, cap);
    seqs[i].prompt = tokens(prompts[i], V, i);
    seqs[i].type = p.kv_type;
  }
  std::map<KvType, double> worst;
  std::vector<float> want(V);
  for (int step = 0;; ++step) {
    // As the scheduler builds a step: decoders first, then one pre-fill chunk each.
    std::vector<StepItem> items;
    std::vector<S*> owner;
    auto add = [&](S& s, StepItem it) {
      items.push_back(it);
      owner.push_back(&s);
    };
    for (S& s : seqs)
      if (s.fed == (int64_t)s.prompt.size() && s.decoded < kDecode) add(s, {s.batched.get(), &s.next, 1, &s.sampler});
    for (S& s : seqs) {
      const int64_t P = (int64_t)s.prompt.size(), n = std::min(chunk, P - s.fed);
      if (n > 0) add(s, {s.batched.get(), s.prompt.data() + s.fed, n, s.fed + n == P ? &s.sampler : nullptr});
    }
    if (items.empty()) break;
    std::vector<int32_t> picked(items.size(), -7);
    std::vector<float> got(items.size() * V);
    be->step(items, picked.data(), got.data());
    for (size_t i = 0; i < items.size(); ++i) {
      S& s = *owner[i];
      SCOPED_TRACE(::testing::Message() << "step " << step << " item " << i << " kv " << to_string(s.type));
      be->forward(*s.alone, items[i].tokens, items[i].n, want.data(), items[i].n);
      EXPECT_EQ(s.batched->n_past(), s.alone->n_past());
      double d = 0;
      for (int v = 0; v < V; ++v) d = std::max(d, (double)std::fabs(want[v] - got[i * V + v]));
      EXPECT_LT(d, kTolerance);
      worst[s.type] = std::max(worst[s.type], d);
      if (!items[i].sampler) {
        EXPECT_EQ(picked[i], -1);
        s.fed += items[i].n;
        continue;
      }
      EXPECT_EQ(picked[i], Sampler::argmax(want.data(), V));
      s.next = Sampler::argmax(want.data(), V);  // both continue with the lone run's token
      if (s.fed < (int64_t)s.prompt.size())
        s.fed += items[i].n;
      else
        ++s.decoded;
    }
  }
  for (auto [type, d] : worst) std::printf("  kv %s: max |logit diff| %.3g\n", to_string(type), d);
  for (S& s : seqs) EXPECT_EQ(s.batched->n_past(), (int64_t)s.prompt.size() + kDecode);
}

INSTANTIATE_TEST_SUITE_P(LlamaAndQwen, BackendStep, ::testing::Values(false, true));

TEST(BackendStep, BadItemsThrowBeforeTouchingAnyCache) {
  auto m = Model::synthetic(test::tiny_config(false), 1);
  ThreadPool pool(1);
  auto be = make_cpu_backend(*m, pool);
  auto a = be->new_sequence(HeadPlan::uniform(3, 2, HeadKind::Retrieval), 64);
  auto b = be->new_sequence(HeadPlan::uniform(3, 2, HeadKind::Streaming, {2, 8}), 64);
  const int32_t ok[2] = {5, 6}, big = 300, negative = -1;
  Sampler greedy{SamplerConfig{}};
  int32_t picked[2];
  auto step = [&](std::vector<StepItem> items) { be->step(items, picked); };
  EXPECT_THROW(step({}), Error);
  EXPECT_THROW(step({{a.get(), ok, 1}, {a.get(), ok, 1}}), Error);  // the same sequence twice
  EXPECT_THROW(step({{a.get(), ok, 1}, {b.get(), &big, 1}}), Error);
  EXPECT_THROW(step({{a.get(), ok, 2}, {b.get(), &negative, 1, &greedy}}), Error);
  EXPECT_THROW(step({{a.get(), ok, 1}, {nullptr, ok, 1}}), Error);
  EXPECT_THROW(step({{a.get(), ok, 0}}), Error);
  auto other = Model::synthetic([] {
    ModelConfig c = test::tiny_config(false);
    c.n_layers = 2;
    return c;
  }(), 1);
  auto foreign = make_cpu_backend(*other, pool)->new_sequence(HeadPlan::uniform(2, 2, HeadKind::Retrieval), 64);
  EXPECT_THROW(step({{a.get(), ok, 1}, {foreign.get(), ok, 1}}), Error);
  EXPECT_EQ(a->n_past(), 0);
  EXPECT_EQ(b->n_past(), 0);
  step({{a.get(), ok, 2, &greedy}, {b.get(), ok, 1}});
  EXPECT_EQ(a->n_past(), 2);
  EXPECT_EQ(b->n_past(), 1);
  EXPECT_GE(picked[0], 0);
  EXPECT_EQ(picked[1], -1);
}

}  // namespace
}  // namespace duo
