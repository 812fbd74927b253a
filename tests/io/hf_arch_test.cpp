// The architectures beside llama/qwen2 (tests/fixtures/hf/tiny-qwen3, tiny-mistral and
// tiny-qwen3.gguf, from dev/make_hf_arch_fixtures.py) against transformers: logits at every
// position on the CPU, greedy tokens through the Engine, and what duo does with mistral's
// sliding window.
#include <gtest/gtest.h>

#include <cmath>

#include "core/error.h"
#include "core/thread_pool.h"
#include "duo/engine.h"
#include "io/hf_fixture.h"
#include "backend/cpu/cpu_forward.h"
#include "model/model.h"
#include "duo/sampler.h"
#include "tokenizer/tokenizer.h"

namespace duo {
namespace {

// Measured max |dlogit| against transformers' float32 logits (std ~1, rounded to 1e-5), over
// pre-fill chunks of 64, 7 and 1 token: tiny-qwen3 (f16) and its GGUF, tiny-mistral (bf16): see
// the printed values (7.5e-6, 7.5e-6, 1.3e-5 when written).
constexpr double kTol = 2e-4;

// chunk: pre-fill chunk size, or 0 for one token per call.
double max_logit_error(const std::string& path, const std::string& key, int64_t chunk) {
  const auto ref = test::hf_reference(key);
  auto m = Model::load(path);
  CpuForward cpu(*m);
  const int V = m->config().n_vocab;
  const auto ids = ref["ids"].get<std::vector<int32_t>>();
  const int64_t n = (int64_t)ids.size();
  ThreadPool pool(2);
  auto cache = cpu.new_cache(HeadPlan::uniform(m->config().n_layers, m->config().n_kv_heads, HeadKind::Retrieval, {}));
  std::vector<float> got((size_t)(n * V));
  if (chunk > 0)
    cpu.forward(*cache, ids.data(), n, got.data(), pool, true, chunk);
  else
    for (int64_t i = 0; i < n; ++i) cpu.forward(*cache, &ids[i], 1, got.data() + i * V, pool);
  EXPECT_EQ(V, (int)ref["logits"][0].size());
  double worst = 0;
  for (int64_t i = 0; i < n; ++i)
    for (int v = 0; v < V; ++v)
      worst = std::max(worst, std::fabs((double)got[i * V + v] - ref["logits"][i][v].get<double>()));
  std::printf("  %s chunk %2lld: max |dlogit| %.2e over %lld positions x %d\n", path.c_str(), (long long)chunk, worst,
              (long long)n, V);
  return worst;
}

TEST(HfArch, Qwen3LogitsMatchTransformers) {
  for (int64_t chunk : {64, 7, 0}) EXPECT_LT(max_logit_error(test::hf_dir("tiny-qwen3"), "tiny-qwen3", chunk), kTol);
}

// The GGUF layout of the same weights (llama.cpp's qwen3 tensor names, F16/F32).
TEST(HfArch, Qwen3GgufLogitsMatchTransformers) {
  for (int64_t chunk : {64, 7, 0})
    EXPECT_LT(max_logit_error(test::fixture_path("hf/tiny-qwen3.gguf"), "tiny-qwen3", chunk), kTol);
}

TEST(HfArch, MistralLogitsMatchTransformers) {
  for (int64_t chunk : {64, 7, 0}) EXPECT_LT(max_logit_error(test::hf_dir("tiny-mistral"), "tiny-mistral", chunk), kTol);
}

TEST(HfArch, ConfigRead) {
  auto q = Model::load(test::hf_dir("tiny-qwen3"));
  EXPECT_EQ(q->config().arch, "qwen3");
  EXPECT_TRUE(q->config().qk_norm);
  EXPECT_FALSE(q->config().qkv_bias);
  EXPECT_EQ(q->config().head_dim, 16);  // 4 heads of 16 over a hidden size of 32
  EXPECT_EQ(q->config().n_embd, 32);
  EXPECT_EQ(q->config().sliding_window, 0);
  auto g = Model::load(test::fixture_path("hf/tiny-qwen3.gguf"));
  EXPECT_EQ(g->config().arch, "qwen3");
  EXPECT_TRUE(g->config().qk_norm);
  EXPECT_EQ(g->config().head_dim, 16);
  EXPECT_EQ(g->config().rope_style, RopeStyle::Neox);
  auto m = Model::load(test::hf_dir("tiny-mistral"));
  EXPECT_EQ(m->config().arch, "mistral");
  EXPECT_FALSE(m->config().qk_norm);
  EXPECT_EQ(m->config().sliding_window, 48);
  EXPECT_EQ(m->config().n_ctx_train, 48);  // capped at the window (max_position_embeddings 256)
}

void check_greedy(const std::string& key) {
  const auto ref = test::hf_reference(key);
  EngineOptions o;
  o.model_path = test::hf_dir(key);
  o.threads = 2;
  Engine engine(o);
  const auto ids = ref["ids"].get<std::vector<int32_t>>();
  EXPECT_EQ(engine.tokenizer().encode(ref["prompt"].get<std::string>(), engine.tokenizer().vocab().add_bos, true), ids);
  const auto want = ref["greedy"].get<std::vector<int32_t>>();
  auto s = engine.new_session();
  Sampler sampler(SamplerConfig{});
  std::vector<int32_t> got;
  s->generate(ids, (int)want.size(), sampler, [&](int32_t t, const std::string&) {
    got.push_back(t);
    return true;
  });
  EXPECT_EQ(got, want) << key;
}

TEST(HfArch, Qwen3GreedyMatchesTransformers) { check_greedy("tiny-qwen3"); }
TEST(HfArch, MistralGreedyMatchesTransformers) { check_greedy("tiny-mistral"); }

// duo has no sliding-window mask: a context past mistral's window is refused (the Engine at
// start, a forward at the position), never computed with full attention.
TEST(HfArch, MistralSlidingWindowLimitsTheContext) {
  EngineOptions o;
  o.model_path = test::hf_dir("tiny-mistral");
  o.threads = 1;
  o.max_context = 49;
  try {
    Engine e(o);
    ADD_FAILURE() << "a context past the window was accepted";
  } catch (const std::exception& ex) {
    EXPECT_NE(std::string(ex.what()).find("sliding window of 48"), std::string::npos) << ex.what();
  }
  o.max_context = 0;
  Engine e(o);
  EXPECT_EQ(e.max_context(), 48);

  auto m = Model::load(test::hf_dir("tiny-mistral"));
  CpuForward cpu(*m);
  ThreadPool pool(1);
  auto cache = cpu.new_cache(HeadPlan::uniform(m->config().n_layers, m->config().n_kv_heads, HeadKind::Retrieval, {}));
  std::vector<int32_t> ids(48, 5);
  std::vector<float> logits((size_t)m->config().n_vocab);
  cpu.forward(*cache, ids.data(), 48, logits.data(), pool);  // positions 0..47: inside
  try {
    cpu.forward(*cache, ids.data(), 1, logits.data(), pool);
    ADD_FAILURE() << "position 48 was computed";
  } catch (const std::exception& ex) {
    EXPECT_NE(std::string(ex.what()).find("beyond the model's sliding window"), std::string::npos) << ex.what();
  }
}

// Without a window (Mistral v0.2/v0.3: null), or one no shorter than the context, nothing is capped.
TEST(HfArch, MistralWithoutWindow) {
  for (const nlohmann::json& w : {nlohmann::json(nullptr), nlohmann::json(4096)}) {
    test::ScratchDir d("tiny-mistral");
    auto cfg = test::read_json(d.file("config.json"));
    cfg["sliding_window"] = w;
    test::write_json(d.file("config.json"), cfg);
    auto m = Model::load(d.str());
    EXPECT_EQ(m->config().sliding_window, 0);
    EXPECT_EQ(m->config().n_ctx_train, 256);
  }
}

TEST(HfArch, Qwen3MissingNormIsRefused) {
  test::ScratchDir d("tiny-qwen3");
  auto cfg = test::read_json(d.file("config.json"));
  cfg["model_type"] = "qwen2";  // qwen2 wants biases the directory does not have
  test::write_json(d.file("config.json"), cfg);
  try {
    Model::load(d.str());
    ADD_FAILURE() << "loaded";
  } catch (const std::exception& ex) {
    EXPECT_NE(std::string(ex.what()).find("q_proj.bias"), std::string::npos) << ex.what();
  }
}

}  // namespace
}  // namespace duo
