// Batched forward (continuous batching) against one sequence at a time: several sequences with
// different context lengths, attention modes and streaming windows go through
// CpuForward::forward_batch together and must get the logits they get alone from CpuForward::forward.
//
// Tolerances: with up to 4 decode tokens in the batch the matmuls take the same per-row dot-product
// path as a single token, so the logits are bitwise equal. With more, they take the tiled
// path, which sums in another order: F32 weights differ by float rounding (< 2e-4 on logits of
// magnitude ~1-10, as the chunked pre-fill tests allow); the quantized SmolLM2 differs by
// the 16-bit activation rounding of the other kernel (< 2e-2 absolute, and greedy tokens equal).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "backend/cpu/cpu_forward.h"
#include "backend/cpu/simd_level.h"
#include "core/thread_pool.h"
#include "model/model.h"
#include "model/tiny_model_config.h"
#include "duo/sampler.h"
#include "test_support.h"

namespace duo {
namespace {

using test::tiny_config;

std::vector<int32_t> tokens(int n, int vocab, int salt) {
  std::vector<int32_t> t(n);
  for (int i = 0; i < n; ++i) t[i] = (i * 7919 + 13 + salt * 31) % vocab;
  return t;
}

double max_abs_diff(const float* a, const float* b, int n) {
  double m = 0;
  for (int i = 0; i < n; ++i) m = std::max(m, (double)std::fabs(a[i] - b[i]));
  return m;
}

// Sequences of mixed lengths and plans: full, two streaming windows, and a duo mix.
struct Seq {
  HeadPlan plan;
  int prompt;
};

std::vector<Seq> mixed_sequences(int n_seqs) {
  std::vector<Seq> s;
  const int lengths[] = {5, 37, 90, 130, 1, 64, 17, 200};
  for (int i = 0; i < n_seqs; ++i) {
    HeadPlan p;
    switch (i % 4) {
      case 0: p = HeadPlan::uniform(3, 2, HeadKind::Retrieval, {4, 16}); break;
      case 1: p = HeadPlan::uniform(3, 2, HeadKind::Streaming, {4, 16}); break;
      case 2: p = HeadPlan::uniform(3, 2, HeadKind::Streaming, {0, 8}); break;
      default:
        p = HeadPlan::uniform(3, 2, HeadKind::Retrieval, {2, 8});
        p.kinds[0][1] = HeadKind::Streaming;
        p.kinds[2][0] = HeadKind::Streaming;
    }
    s.push_back({p, lengths[i % 8]});
  }
  return s;
}

// Decodes `steps` tokens for every sequence, alone and batched, from identical pre-filled
// caches, feeding both the token the lone run picks greedily. Returns the largest difference.
double batched_vs_alone(Model& m, const std::vector<Seq>& seqs, int steps, ThreadPool& pool) {
  CpuForward cpu(m);
  const int V = m.config().n_vocab;
  const size_t B = seqs.size();
  std::vector<std::unique_ptr<KvCache>> alone, batched;
  std::vector<int32_t> next(B);
  std::vector<float> logits(V);
  for (size_t i = 0; i < B; ++i) {
    alone.push_back(cpu.new_cache(seqs[i].plan));
    batched.push_back(cpu.new_cache(seqs[i].plan));
    const auto p = tokens(seqs[i].prompt, V, (int)i);
    cpu.forward(*alone[i], p.data(), (int64_t)p.size(), logits.data(), pool, false, 50);
    cpu.forward(*batched[i], p.data(), (int64_t)p.size(), nullptr, pool, false, 50);
    next[i] = Sampler::argmax(logits.data(), V);
  }
  double worst = 0;
  std::vector<float> batch_logits(B * V);
  for (int s = 0; s < steps; ++s) {
    std::vector<BatchItem> items;
    for (size_t i = 0; i < B; ++i) items.push_back({batched[i].get(), &next[i], 1});
    cpu.forward_batch(items, batch_logits.data(), pool);
    for (size_t i = 0; i < B; ++i) {
      cpu.forward(*alone[i], &next[i], 1, logits.data(), pool);
      EXPECT_EQ(batched[i]->n_past(), alone[i]->n_past());
      worst = std::max(worst, max_abs_diff(logits.data(), batch_logits.data() + i * V, V));
      next[i] = Sampler::argmax(logits.data(), V);
    }
  }
  return worst;
}

class ForwardBatch : public ::testing::TestWithParam<bool> {};

TEST_P(ForwardBatch, UpToFourSequencesAreBitwiseEqualToOneAtATime) {
  auto m = Model::synthetic(tiny_config(GetParam()), 11);
  ThreadPool pool(2);
  EXPECT_EQ(batched_vs_alone(*m, mixed_sequences(4), 40, pool), 0.0);
  EXPECT_EQ(batched_vs_alone(*m, mixed_sequences(2), 10, pool), 0.0);
}

TEST_P(ForwardBatch, ManySequencesMatchOneAtATime) {
  auto m = Model::synthetic(tiny_config(GetParam()), 12);
  ThreadPool pool(2);
  // 8 and 13 sequences: the tiled matmul path, with a partial token group of 8 for 13.
  EXPECT_LT(batched_vs_alone(*m, mixed_sequences(8), 40, pool), 2e-4);
  EXPECT_LT(batched_vs_alone(*m, mixed_sequences(13), 12, pool), 2e-4);
}

TEST_P(ForwardBatch, PrefillChunksRideAlongWithDecodes) {
  // A step may carry pre-fill chunks of some sequences next to decode tokens of others. The
  // chunks get matmuls of their own and no two decode items are adjacent here, so every item
  // computes exactly what it computes alone.
  auto m = Model::synthetic(tiny_config(GetParam()), 13);
  CpuForward cpu(*m);
  ThreadPool pool(2);
  const int V = m->config().n_vocab;
  const auto seqs = mixed_sequences(6);
  std::vector<std::unique_ptr<KvCache>> alone, batched;
  std::vector<std::vector<int32_t>> feed;
  std::vector<float> want((size_t)seqs.size() * V);
  for (size_t i = 0; i < seqs.size(); ++i) {
    alone.push_back(cpu.new_cache(seqs[i].plan));
    batched.push_back(cpu.new_cache(seqs[i].plan));
    const auto p = tokens(seqs[i].prompt, V, (int)i);
    cpu.forward(*alone[i], p.data(), (int64_t)p.size(), nullptr, pool);
    cpu.forward(*batched[i], p.data(), (int64_t)p.size(), nullptr, pool);
    // Odd sequences take a 23-token chunk this step, even ones a single token.
    feed.push_back(tokens(i % 2 ? 23 : 1, V, 100 + (int)i));
    cpu.forward(*alone[i], feed[i].data(), (int64_t)feed[i].size(), want.data() + i * V, pool);
  }
  std::vector<BatchItem> items;
  for (size_t i = 0; i < seqs.size(); ++i) items.push_back({batched[i].get(), feed[i].data(), (int64_t)feed[i].size()});
  std::vector<float> got(want.size());
  cpu.forward_batch(items, got.data(), pool);
  for (size_t i = 0; i < seqs.size(); ++i) {
    EXPECT_EQ(batched[i]->n_past(), alone[i]->n_past());
    EXPECT_EQ(max_abs_diff(want.data() + i * V, got.data() + i * V, V), 0.0) << "sequence " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(LlamaAndQwen, ForwardBatch, ::testing::Values(false, true));

TEST(ForwardBatch, RejectsBadItemsBeforeTouchingAnyCache) {
  auto m = Model::synthetic(tiny_config(false), 1);
  CpuForward cpu(*m);
  ThreadPool pool(1);
  auto a = cpu.new_cache(HeadPlan::uniform(3, 2, HeadKind::Retrieval));
  auto b = cpu.new_cache(HeadPlan::uniform(3, 2, HeadKind::Streaming));
  const int32_t ok = 5, bad = 300;
  std::vector<float> logits(2 * m->config().n_vocab);
  EXPECT_THROW(cpu.forward_batch({}, logits.data(), pool), std::runtime_error);
  EXPECT_THROW(cpu.forward_batch({{a.get(), &ok, 1}, {a.get(), &ok, 1}}, logits.data(), pool), std::runtime_error);
  EXPECT_THROW(cpu.forward_batch({{a.get(), &ok, 1}, {b.get(), &bad, 1}}, logits.data(), pool), std::runtime_error);
  EXPECT_THROW(cpu.forward_batch({{a.get(), &ok, 0}}, logits.data(), pool), std::runtime_error);
  EXPECT_THROW(cpu.forward_batch({{nullptr, &ok, 1}}, logits.data(), pool), std::runtime_error);
  auto other = Model::synthetic([] {
    ModelConfig c = tiny_config(false);
    c.n_layers = 2;
    return c;
  }(), 1);
  auto foreign = CpuForward(*other).new_cache(HeadPlan::uniform(2, 2, HeadKind::Retrieval));
  EXPECT_THROW(cpu.forward_batch({{foreign.get(), &ok, 1}}, logits.data(), pool), std::runtime_error);
  EXPECT_EQ(a->n_past(), 0);
  EXPECT_EQ(b->n_past(), 0);
  cpu.forward_batch({{a.get(), &ok, 1}, {b.get(), &ok, 1}}, logits.data(), pool);
  EXPECT_EQ(a->n_past(), 1);
  EXPECT_EQ(b->n_past(), 1);
}

TEST(ForwardBatch, SlotOrderFollowsTheReordering) {
  auto m = Model::synthetic(tiny_config(false), 3);
  HeadPlan p = HeadPlan::uniform(3, 2, HeadKind::Retrieval);
  p.kinds[0][0] = HeadKind::Streaming;  // layer 0: head 1 moves to slot 0
  EXPECT_EQ(m->to_slot_order(p).kinds, p.kinds);  // not reordered yet: unchanged
  const HeadPlan moved = m->reorder_heads(p);
  EXPECT_EQ(m->to_slot_order(p).kinds, moved.kinds);
  // Another pattern on the reordered model: layer 0 slot 0 is original head 1.
  HeadPlan q = HeadPlan::uniform(3, 2, HeadKind::Streaming);
  q.kinds[0][1] = HeadKind::Retrieval;
  const HeadPlan qs = m->to_slot_order(q);
  EXPECT_EQ(qs.kinds[0][0], HeadKind::Retrieval);
  EXPECT_EQ(qs.kinds[0][1], HeadKind::Streaming);
  EXPECT_THROW(m->to_slot_order(HeadPlan::uniform(2, 2, HeadKind::Retrieval)), std::runtime_error);
}

// The real quantized model: 6 sequences of mixed lengths and modes decode together.
TEST(ForwardBatch, SmolLM2BatchedGreedyMatchesOneAtATime) {
  DUO_REQUIRE_MODEL(path, test::kSmolLM2);
  auto m = Model::load(path);
  CpuForward cpu(*m);
  ThreadPool pool(2);
  const ModelConfig& c = m->config();
  std::vector<Seq> seqs;
  const int lengths[] = {12, 260, 40, 180, 3, 120};
  for (int i = 0; i < 6; ++i) {
    HeadPlan p = HeadPlan::uniform(c.n_layers, c.n_kv_heads, i % 3 == 1 ? HeadKind::Streaming : HeadKind::Retrieval,
                                   {16, 64});
    if (i % 3 == 2)
      for (int l = 0; l < c.n_layers; l += 2) p.kinds[l][l % c.n_kv_heads] = HeadKind::Streaming;
    seqs.push_back({p, lengths[i]});
  }
  const int V = c.n_vocab;
  std::vector<std::unique_ptr<KvCache>> alone, batched;
  std::vector<int32_t> next(6), next_b(6);
  std::vector<float> logits(V), batch_logits(6 * V);
  for (size_t i = 0; i < 6; ++i) {
    alone.push_back(cpu.new_cache(seqs[i].plan));
    batched.push_back(cpu.new_cache(seqs[i].plan));
    const auto p = tokens(seqs[i].prompt, V, (int)i);
    cpu.forward(*alone[i], p.data(), (int64_t)p.size(), logits.data(), pool);
    cpu.forward(*batched[i], p.data(), (int64_t)p.size(), nullptr, pool);
    next[i] = next_b[i] = Sampler::argmax(logits.data(), V);
  }
  double worst = 0;
  for (int s = 0; s < 12; ++s) {
    std::vector<BatchItem> items;
    for (size_t i = 0; i < 6; ++i) items.push_back({batched[i].get(), &next_b[i], 1});
    cpu.forward_batch(items, batch_logits.data(), pool);
    for (size_t i = 0; i < 6; ++i) {
      cpu.forward(*alone[i], &next[i], 1, logits.data(), pool);
      worst = std::max(worst, max_abs_diff(logits.data(), batch_logits.data() + i * V, V));
      next[i] = Sampler::argmax(logits.data(), V);
      next_b[i] = Sampler::argmax(batch_logits.data() + i * V, V);
      EXPECT_EQ(next[i], next_b[i]) << "sequence " << i << " step " << s;
    }
  }
  EXPECT_LT(worst, 2e-2);
  RecordProperty("max_abs_logit_diff", std::to_string(worst));
  std::printf("SmolLM2 batched vs alone: max |logit diff| %.3g\n", worst);
}

// The description knows nothing of the CPU's panels: a reordering after packing is caught by
// the forward, before it touches a cache.
TEST(ForwardBatch, ReorderAfterPackingIsRefused) {
  auto m = Model::synthetic(tiny_config(false), 4);
  CpuForward cpu(*m);
  ThreadPool pool(1);
  cpu.pack_weights(pool);
  HeadPlan p = HeadPlan::uniform(3, 2, HeadKind::Retrieval);
  p.kinds[0][0] = HeadKind::Streaming;
  const HeadPlan slots = m->reorder_heads(p);
  auto cache = cpu.new_cache(slots);
  const int32_t tok = 5;
  std::vector<float> logits(m->config().n_vocab);
  EXPECT_THROW(cpu.forward(*cache, &tok, 1, logits.data(), pool), std::runtime_error);
  EXPECT_EQ(cache->n_past(), 0);
}

// The real quantized model in a serving step: 6 decoders (the many-token kernel), pre-fill
// chunks of 23 and 9 tokens (merged into the decoders' matmul calls: the quantized kernel
// computes each token alone) and one of 3 tokens (the few-token path, a call of its own).
// Every chunk's logits must equal those of its sequence run alone bit for bit; the decoders'
// stay within the rounding of the other kernel. Packed weights (pack_weights) change nothing.
TEST(ForwardBatch, SmolLM2PrefillChunksMergedWithDecodesAreExact) {
  DUO_REQUIRE_MODEL(path, test::kSmolLM2);
  for (bool packed : {false, true}) {
    auto m = Model::load(path);
    CpuForward cpu(*m);
    ThreadPool pool(2);
    if (packed) {
      const size_t bytes = cpu.pack_weights(pool);
      if (simd_compiled() >= SimdLevel::Avx512) {
        EXPECT_GT(bytes, (size_t)200 << 20);
      }
      EXPECT_EQ(cpu.pack_weights(pool), 0u) << "packs once";
    }
    const ModelConfig& c = m->config();
    const int V = c.n_vocab;
    const int prompts[] = {12, 70, 40, 5, 33, 90, 17, 8, 26};
    const int feeds[] = {1, 1, 1, 1, 1, 1, 23, 9, 3};
    std::vector<std::unique_ptr<KvCache>> alone, batched;
    std::vector<std::vector<int32_t>> feed;
    std::vector<float> want(9 * (size_t)V), got(9 * (size_t)V);
    for (int i = 0; i < 9; ++i) {
      const HeadPlan p = HeadPlan::uniform(c.n_layers, c.n_kv_heads, i % 3 == 1 ? HeadKind::Streaming
                                                                                  : HeadKind::Retrieval, {16, 64});
      alone.push_back(cpu.new_cache(p));
      batched.push_back(cpu.new_cache(p));
      const auto t = tokens(prompts[i], V, i);
      cpu.forward(*alone[i], t.data(), (int64_t)t.size(), nullptr, pool);
      cpu.forward(*batched[i], t.data(), (int64_t)t.size(), nullptr, pool);
      feed.push_back(tokens(feeds[i], V, 50 + i));
      cpu.forward(*alone[i], feed[i].data(), feeds[i], want.data() + i * V, pool);
    }
    std::vector<BatchItem> items;
    for (int i = 0; i < 9; ++i) items.push_back({batched[i].get(), feed[i].data(), feeds[i]});
    cpu.forward_batch(items, got.data(), pool);
    for (int i = 0; i < 9; ++i) {
      EXPECT_EQ(batched[i]->n_past(), alone[i]->n_past());
      const double d = max_abs_diff(want.data() + i * V, got.data() + i * V, V);
      if (feeds[i] > 1) {
        EXPECT_EQ(d, 0.0) << "chunk of sequence " << i << (packed ? " (packed)" : "");
      } else {
        EXPECT_LT(d, 2e-2) << "decoder " << i << (packed ? " (packed)" : "");
      }
    }
  }
}

}  // namespace
}  // namespace duo
