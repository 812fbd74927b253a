// The device seam: the CPU backend is exactly CpuForward::forward over its KvCache, its random
// fill is what benchmarks need, and asking for CUDA in a build without it fails with a message
// that says how to get it; the CPU backend shows its attention to an observer, a backend
// without that refuses one.
#include <gtest/gtest.h>

#include "core/error.h"
#include "core/fp16.h"
#include "core/thread_pool.h"
#include "engine/attention_observer.h"
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

// The attention observer through the seam (engine/attention_observer.h): every layer of every
// pre-fill chunk is shown once, in order; a KV head's keys up to a position are every position
// from 0, ascending; rows a bf16 cache holds arrive as floats equal to the f32 run's rows
// rounded to bf16 (layer 0's keys depend on the tokens alone), the chunk's own rows unrounded.
struct KeyRecorder : AttentionObserver {
  struct Call {
    int layer;
    int64_t pos0, n;
    std::vector<int64_t> positions;
    std::vector<float> rows;  // head_dim floats a position, KV head 1, up to the chunk's last
  };
  std::vector<Call> calls;
  void on_attention(const ObservedAttention& a) override {
    Call c{a.layer, a.pos0, a.n, {}, {}};
    a.keys(1, a.pos0 + a.n - 1, [&](int64_t j0, int64_t m, const float* k, int64_t stride) {
      for (int64_t r = 0; r < m; ++r) {
        c.positions.push_back(j0 + r);
        c.rows.insert(c.rows.end(), k + r * stride, k + r * stride + a.head_dim);
      }
    });
    calls.push_back(std::move(c));
  }
};

TEST(Backend, CpuAttentionObserved) {
  auto m = Model::synthetic(small_config(), 3);
  ThreadPool pool(2);
  auto be = make_cpu_backend(*m, pool);
  ASSERT_TRUE(be->observes_attention());
  std::vector<int32_t> toks(40);
  for (int i = 0; i < 40; ++i) toks[i] = (i * 37 + 5) % 200;
  KeyRecorder rec[2];
  for (int run = 0; run < 2; ++run) {
    HeadPlan plan = HeadPlan::uniform(2, 2, HeadKind::Retrieval);
    plan.kv_type = run == 0 ? KvType::F32 : KvType::BF16;
    auto seq = be->new_sequence(plan, 64);
    be->set_attention_observer(&rec[run]);
    be->forward(*seq, toks.data(), 40, nullptr, 16);
    be->set_attention_observer(nullptr);
    be->forward(*seq, toks.data(), 1, nullptr, 16);  // removed: nothing more recorded
  }
  for (const KeyRecorder& r : rec) {
    ASSERT_EQ(r.calls.size(), 6u);  // chunks of 16, 16, 8 through 2 layers
    for (size_t i = 0; i < 6; ++i) {
      const KeyRecorder::Call& c = r.calls[i];
      EXPECT_EQ(c.layer, (int)(i % 2));
      EXPECT_EQ(c.pos0, (int64_t)(i / 2) * 16);
      EXPECT_EQ(c.n, i < 4 ? 16 : 8);
      ASSERT_EQ(c.positions.size(), (size_t)(c.pos0 + c.n));
      for (size_t j = 0; j < c.positions.size(); ++j) EXPECT_EQ(c.positions[j], (int64_t)j);
    }
  }
  const int d = m->config().head_dim;
  for (size_t i = 0; i < 6; i += 2) {  // layer 0
    const auto &f = rec[0].calls[i], &b = rec[1].calls[i];
    ASSERT_EQ(f.rows.size(), b.rows.size());
    for (size_t e = 0; e < f.rows.size(); ++e) {
      const bool cached = (int64_t)(e / d) < f.pos0;
      EXPECT_EQ(b.rows[e], cached ? bf16_to_f32(f32_to_bf16(f.rows[e])) : f.rows[e]) << i << " " << e;
    }
  }
}

// A backend that cannot show its attention (the seam's defaults) refuses an observer.
TEST(Backend, ObserverRefusedByDefault) {
  struct Blind : ModelBackend {
    ModelConfig c;
    Device device() const override { return Device::Cuda; }
    std::string description() const override { return "blind"; }
    const ModelConfig& config() const override { return c; }
    std::unique_ptr<SequenceState> new_sequence(const HeadPlan&, int64_t) override { return nullptr; }
    void forward(SequenceState&, const int32_t*, int64_t, float*, int64_t, bool) override {}
    int32_t forward_pick(SequenceState&, const int32_t*, int64_t, int64_t, Sampler&) override { return -1; }
    void step(const std::vector<StepItem>&, int32_t*, float*) override {}
    size_t kv_bytes_for(const HeadPlan&, int64_t) const override { return 0; }
    size_t sequence_bytes(const HeadPlan&, int64_t) const override { return 0; }
  } blind;
  KeyRecorder rec;
  EXPECT_FALSE(blind.observes_attention());
  try {
    blind.set_attention_observer(&rec);
    FAIL() << "an observer was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("device 'cuda' cannot show its attention"), std::string::npos) << e.what();
  }
  blind.set_attention_observer(nullptr);  // removing one is always fine
  EXPECT_EQ(blind.prepare_batched_weights(), 0u);
  EXPECT_EQ(blind.kernels(), "");
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
