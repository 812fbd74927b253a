// The device seam: the CPU backend is exactly CpuForward::forward over its KvCache, its random
// fill is what benchmarks need, and asking for CUDA in a build without it fails with a message
// that says how to get it.
#include <gtest/gtest.h>

#include "core/error.h"
#include "core/thread_pool.h"
#include "engine/backend.h"
#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/cpu_forward.h"
#include "backend/cpu/kv_cache.h"
#include "model/model.h"
#include "duo/sampler.h"

namespace duo {
namespace {

ModelConfig small_config() {
  ModelConfig c;
  c.arch = "llama";
  c.n_layers = 2;
  c.n_embd = 64;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 16;
  c.n_ff = 96;
  c.n_vocab = 200;
  c.n_ctx_train = 1024;
  return c;
}

TEST(Backend, CpuBackendIsModelForward) {
  auto m = Model::synthetic(small_config(), 3);
  CpuForward cpu(*m);
  ThreadPool pool(2);
  auto be = make_cpu_backend(cpu, pool);
  EXPECT_EQ(be->device(), Device::Cpu);
  const HeadPlan plan = HeadPlan::uniform(2, 2, HeadKind::Streaming, {4, 16});
  std::vector<int32_t> toks(70);
  for (int i = 0; i < 70; ++i) toks[i] = (i * 37 + 5) % 200;
  const int V = m->config().n_vocab;

  auto cache = cpu.new_cache(plan);
  std::vector<float> want(toks.size() * V);
  cpu.forward(*cache, toks.data(), (int64_t)toks.size(), want.data(), pool, true, 32);

  auto seq = be->new_sequence(plan, 1024);
  std::vector<float> got(toks.size() * V);
  be->forward(*seq, toks.data(), (int64_t)toks.size(), got.data(), 32, true);
  EXPECT_EQ(got, want);  // the same computation, bit for bit
  EXPECT_EQ(seq->n_past(), 70);
  EXPECT_EQ(seq->kv_bytes(), cache->bytes());
  EXPECT_EQ(seq->kv_bytes(HeadKind::Streaming), cache->bytes(HeadKind::Streaming));
  ASSERT_NE(cpu_cache(*seq), nullptr);

  // forward_pick at temperature 0 is the argmax of the last token's logits.
  const int32_t next = 17;
  std::vector<float> last(V);
  cpu.forward(*cache, &next, 1, last.data(), pool);
  Sampler greedy(SamplerConfig{});
  EXPECT_EQ(be->forward_pick(*seq, &next, 1, 32, greedy), Sampler::argmax(last.data(), V));
  seq->clear();
  EXPECT_EQ(seq->n_past(), 0);
}

// fill_kv_random (what `duo bench --compare-modes` decodes after): n positions of seeded
// standard-normal rows in every head, priced as kv_bytes_for says, the same for the same seed.
TEST(Backend, CpuFillKvRandom) {
  auto m = Model::synthetic(small_config(), 3);
  ThreadPool pool(2);
  auto be = make_cpu_backend(*m, pool);
  HeadPlan plan = HeadPlan::uniform(2, 2, HeadKind::Retrieval, {4, 16});
  plan.kinds[1][0] = HeadKind::Streaming;
  const int64_t n = 1500;  // more than one fill chunk of 1024 rows
  auto a = be->new_sequence(plan, n + 1);
  be->fill_kv_random(*a, n, 7);
  EXPECT_EQ(a->n_past(), n);
  EXPECT_EQ(a->kv_bytes(), be->kv_bytes_for(plan, n));

  // A retrieval head holds every position; its rows look standard normal.
  std::vector<KvSegment> segs;
  cpu_cache(*a)->head(0, 0).segments(n, segs);
  int64_t rows = 0;
  double sum = 0, sq = 0;
  for (const KvSegment& s : segs) {
    ASSERT_EQ(s.pos0, rows);
    for (int64_t r = 0; r < s.n; ++r)
      for (int c = 0; c < 16; ++c) sum += s.k[r * s.stride + c], sq += s.k[r * s.stride + c] * s.k[r * s.stride + c];
    rows += s.n;
  }
  EXPECT_EQ(rows, n);
  const double cnt = (double)n * 16, mean = sum / cnt;
  EXPECT_NEAR(mean, 0.0, 0.05);
  EXPECT_NEAR(sq / cnt - mean * mean, 1.0, 0.05);

  // The same seed decodes the same; another seed does not.
  auto b = be->new_sequence(plan, n + 1), c = be->new_sequence(plan, n + 1);
  be->fill_kv_random(*b, n, 7);
  be->fill_kv_random(*c, n, 8);
  const int V = m->config().n_vocab;
  std::vector<float> la(V), lb(V), lc(V);
  const int32_t tok = 5;
  be->forward(*a, &tok, 1, la.data(), 32);
  be->forward(*b, &tok, 1, lb.data(), 32);
  be->forward(*c, &tok, 1, lc.data(), 32);
  EXPECT_EQ(la, lb);
  EXPECT_NE(la, lc);

  EXPECT_THROW(be->fill_kv_random(*a, 10, 7), Error);  // not empty
  auto small = be->new_sequence(plan, 10);
  EXPECT_THROW(be->fill_kv_random(*small, 11, 7), Error);  // beyond its capacity
}

TEST(Backend, DeviceNames) {
  EXPECT_EQ(parse_device("cpu"), Device::Cpu);
  EXPECT_EQ(parse_device("cuda"), Device::Cuda);
  EXPECT_STREQ(to_string(Device::Cuda), "cuda");
  EXPECT_THROW(parse_device("gpu"), Error);
}

TEST(Backend, CudaWithoutAGpuFailsCleanly) {
  if (!cuda_compiled()) GTEST_SKIP() << "this build has no CUDA backend";
  // CI compiles the CUDA backend on machines without a GPU: asking for it must give a duo
  // error (no crash, no abort); on a GPU machine it simply works.
  try {
    auto be = make_cuda_synthetic_backend(small_config(), 1);
    EXPECT_EQ(be->device(), Device::Cuda);
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("CUDA"), std::string::npos) << e.what();
  }
}

TEST(Backend, CudaUnavailableSaysWhy) {
  if (cuda_compiled()) GTEST_SKIP() << "this build has the CUDA backend (tested by duo_cuda_tests)";
  try {
    make_cuda_synthetic_backend(small_config(), 1);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("DUO_CUDA=ON"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace duo
