// The CPU forward of tiny random-weight models against HF transformers (tests/fixtures/tiny_models,
// from dev/make_tiny_model_fixtures.py): full attention, streaming and duo attention whose
// reference masks were built in Python from the sink + recent definition (not from our
// HeadPlan::visible or the kernels' masks), and Llama-3.1 RoPE scaling (rope_freqs).
// Every position's logits are compared, the sequence fed three ways: one pre-fill, pre-fill
// chunks shorter than the window (so streaming heads evict mid pre-fill), and one token at a
// time.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "backend/cpu/cpu_forward.h"
#include "backend/simd_levels.h"
#include "core/thread_pool.h"
#include "model/model.h"
#include "test_support.h"

namespace duo {
namespace {

struct Fixture {
  nlohmann::json j;
  std::string gguf;
  std::vector<int32_t> ids;
  StreamingWindow window;
};

Fixture load(const std::string& key) {
  Fixture f;
  std::ifstream in(test::fixture_path("tiny_models/" + key + ".json"));
  EXPECT_TRUE(in.good()) << key;
  f.j = nlohmann::json::parse(in);
  f.gguf = test::fixture_path("tiny_models/" + f.j["model"].get<std::string>());
  f.ids = f.j["ids"].get<std::vector<int32_t>>();
  f.window = {f.j["window"]["sink"].get<int>(), f.j["window"]["recent"].get<int>()};
  return f;
}

HeadPlan plan_for(const Fixture& f, const std::string& mode, const ModelConfig& c) {
  HeadPlan p = HeadPlan::uniform(c.n_layers, c.n_kv_heads, HeadKind::Retrieval, f.window);
  for (int l = 0; l < c.n_layers; ++l)
    for (int h = 0; h < c.n_kv_heads; ++h) {
      const bool streaming = mode == "streaming" || (mode == "duo" && f.j["duo_pattern"][l][h].get<int>() == 1);
      if (streaming) p.kinds[l][h] = HeadKind::Streaming;
    }
  return p;
}

// Every position's logits, the tokens fed as one forward (chunk: pre-fill chunk size) or
// one token a call (chunk == 0).
std::vector<float> run(Model& m, const HeadPlan& plan, const std::vector<int32_t>& ids, int64_t chunk) {
  CpuForward cpu(m);
  ThreadPool pool(2);
  const int V = m.config().n_vocab;
  const int64_t n = (int64_t)ids.size();
  auto cache = cpu.new_cache(m.to_slot_order(plan));
  std::vector<float> out(n * V);
  if (chunk > 0) {
    cpu.forward(*cache, ids.data(), n, out.data(), pool, true, chunk);
  } else {
    for (int64_t i = 0; i < n; ++i) cpu.forward(*cache, &ids[i], 1, out.data() + i * V, pool);
  }
  return out;
}

// Largest |ours - reference| over positions [from, to).
double max_diff(const std::vector<float>& got, const nlohmann::json& ref, int V, int64_t from, int64_t to) {
  double worst = 0;
  for (int64_t i = from; i < to; ++i)
    for (int v = 0; v < V; ++v) worst = std::max(worst, std::fabs((double)got[i * V + v] - ref[i][v].get<double>()));
  return worst;
}

// Measured: max |dlogit| 4.5e-5 (tiny-llama), 1.1e-5 (tiny-qwen2), 1.5e-5 (tiny-llama31), logits
// of std ~1 (float32 against the reference's float32, summed in another order; the fixture
// rounds to 1e-5). A window off by one or a wrong mask moves logits by > 0.5.
constexpr double kTol = 2e-4;

void check_modes(const std::string& key, bool reorder) {
  const Fixture f = load(key);
  auto m = Model::load(f.gguf);
  const ModelConfig& c = m->config();
  const int V = c.n_vocab;
  const int64_t n = (int64_t)f.ids.size();
  ASSERT_GT(n, f.window.sink + f.window.recent + 8) << "the fixture must run past the window";
  if (reorder) {  // the duo layout: retrieval heads first in every layer
    m->reorder_heads(plan_for(f, "duo", c));
  }
  for (const std::string mode : {"full", "streaming", "duo"}) {
    const HeadPlan plan = plan_for(f, mode, c);
    const auto& ref = f.j["logits"][mode];
    for (int64_t chunk : {n, (int64_t)5, (int64_t)0}) {
      const auto got = run(*m, plan, f.ids, chunk);
      const double d = max_diff(got, ref, V, 0, n);
      EXPECT_LT(d, kTol) << key << " " << mode << " chunk " << chunk << (reorder ? " (heads reordered)" : "");
      std::printf("  %-12s %-9s chunk %2lld%s: max |dlogit| %.2e over %lld positions\n", key.c_str(), mode.c_str(),
                  (long long)chunk, reorder ? " reordered" : "", d, (long long)n);
    }
  }
}

TEST(TinyReference, SmolLM2LikeStreamingAndDuo) { check_modes("tiny-llama", false); }
TEST(TinyReference, Qwen2LikeStreamingAndDuo) { check_modes("tiny-qwen2", false); }
TEST(TinyReference, SmolLM2LikeDuoReorderedHeads) { check_modes("tiny-llama", true); }
TEST(TinyReference, Qwen2LikeDuoReorderedHeads) { check_modes("tiny-qwen2", true); }

// The AVX2 attention kernels keep masks of their own: the same checks with them, on builds whose
// default is AVX-512 (elsewhere the tests above already ran them).
TEST(TinyReference, StreamingAndDuoAvx2Kernels) {
  if (simd_compiled() != SimdLevel::Avx512) GTEST_SKIP() << "the default run used the AVX2 kernels";
  test::ScopedSimdLevel avx2(SimdLevel::Avx2);
  check_modes("tiny-llama", false);
  check_modes("tiny-qwen2", true);
}

// Streaming heads see everything while a query's position is below sink + recent: there our
// logits equal full attention. In one pre-fill pass bit for bit (as the reference's masked and
// causal logits are, which the fixture script checks); pre-filled in chunks or decoded, a
// streaming head reads its keys from a sink and a ring segment, so its softmax sums in another
// order: measured max |diff| 1.7e-6 at logits ~1.
// At sink + recent the first key after the sinks drops out of view and the logits move by
// > 2 (recorded in the fixture as *_diff_at_window).
TEST(TinyReference, StreamingEqualsFullOnlyBelowTheWindow) {
  for (const std::string key : {"tiny-llama", "tiny-qwen2"}) {
    const Fixture f = load(key);
    auto m = Model::load(f.gguf);
    const int V = m->config().n_vocab;
    const int64_t w = f.window.sink + f.window.recent;
    for (int64_t chunk : {(int64_t)f.ids.size(), (int64_t)5, (int64_t)0}) {
      const auto full = run(*m, plan_for(f, "full", m->config()), f.ids, chunk);
      for (const std::string mode : {"streaming", "duo"}) {
        const auto s = run(*m, plan_for(f, mode, m->config()), f.ids, chunk);
        double below = 0, at = 0;
        for (int64_t i = 0; i < w; ++i)
          for (int v = 0; v < V; ++v) below = std::max(below, (double)std::fabs(s[i * V + v] - full[i * V + v]));
        for (int v = 0; v < V; ++v) at = std::max(at, (double)std::fabs(s[w * V + v] - full[w * V + v]));
        std::printf("  %-10s %-9s chunk %2lld: max |streaming - full| %.1e below sink + recent, %.2f at it\n",
                    key.c_str(), mode.c_str(), (long long)chunk, below, at);
        if (chunk == (int64_t)f.ids.size())
          EXPECT_EQ(below, 0.0) << key << " " << mode << ": one pre-fill pass must equal full attention exactly";
        else
          EXPECT_LT(below, 1e-5) << key << " " << mode << " chunk " << chunk;
        EXPECT_GT(at, 0.5) << key << " " << mode << ": position sink + recent must see less than full attention";
      }
    }
  }
}

// Llama-3.1 RoPE: the file's rope_freqs factors divide the inverse frequencies; HF computes its
// llama3 frequencies itself. Low frequencies are divided by 8 here, so multiplying instead
// moves later positions' logits by far more than the tolerance.
TEST(TinyReference, Llama31RopeFreqs) {
  const Fixture f = load("tiny-llama31");
  auto m = Model::load(f.gguf);
  const ModelConfig& c = m->config();
  const auto factors = f.j["rope_freqs"].get<std::vector<double>>();
  ASSERT_EQ((int)factors.size(), c.head_dim / 2);
  for (int i = 0; i < c.head_dim / 2; ++i) {
    const double plain = std::pow((double)c.rope_theta, -2.0 * i / c.head_dim);
    EXPECT_NEAR(m->rope_inv_freq()[i], plain / factors[i], 1e-6 * plain) << "frequency " << i;
  }
  const int64_t n = (int64_t)f.ids.size();
  const HeadPlan plan = plan_for(f, "full", c);
  for (int64_t chunk : {n, (int64_t)0}) {
    const auto got = run(*m, plan, f.ids, chunk);
    const double d = max_diff(got, f.j["logits"]["full"], c.n_vocab, 0, n);
    std::printf("  tiny-llama31 full chunk %2lld: max |dlogit| %.2e\n", (long long)chunk, d);
    EXPECT_LT(d, kTol) << "chunk " << chunk;
  }
}

}  // namespace
}  // namespace duo
