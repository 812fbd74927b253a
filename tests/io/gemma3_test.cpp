// gemma3 (tests/fixtures/hf/tiny-gemma3 and tiny-gemma3.gguf, from
// dev/make_hf_arch_fixtures.py) against transformers: logits at every position of a prompt
// about four times the local layers' sliding window of 16 (so positions both inside and past
// the window are checked), greedy tokens through the Engine, and how the local layers' heads
// sit in the KV cache whatever the head plan says.
#include <gtest/gtest.h>

#include <cmath>

#include "core/thread_pool.h"
#include "duo/engine.h"
#include "duo/sampler.h"
#include "io/hf_fixture.h"
#include "backend/cpu/cpu_forward.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace duo {
namespace {

// Measured max |dlogit| against transformers' float32 logits (std ~1.8, rounded to 1e-5), over
// pre-fill chunks of 64, 7 and 1 token, for the directory and the GGUF: see the printed values.
constexpr double kTol = 2e-4;

// chunk: pre-fill chunk size, or 0 for one token per call. ref_key: the logits to compare with;
// fixture: the reference's name.
double max_logit_error(const std::string& path, const char* ref_key, int64_t chunk, const HeadPlan* plan = nullptr,
                       const std::string& fixture = "tiny-gemma3") {
  const auto ref = test::hf_reference(fixture);
  auto m = Model::load(path);
  CpuForward cpu(*m);
  const ModelConfig& c = m->config();
  const int V = c.n_vocab;
  const auto ids = ref["ids"].get<std::vector<int32_t>>();
  const int64_t n = (int64_t)ids.size();
  EXPECT_GT(n, 3 * c.local_window);
  ThreadPool pool(2);
  auto cache = cpu.new_cache(plan ? *plan : HeadPlan::uniform(c.n_layers, c.n_kv_heads, HeadKind::Retrieval, {}));
  std::vector<float> got((size_t)(n * V));
  if (chunk > 0)
    cpu.forward(*cache, ids.data(), n, got.data(), pool, true, chunk);
  else
    for (int64_t i = 0; i < n; ++i) cpu.forward(*cache, &ids[i], 1, got.data() + i * V, pool);
  const auto& want = ref[ref_key];
  EXPECT_EQ(V, (int)want[0].size());
  double worst = 0;
  for (int64_t i = 0; i < n; ++i)
    for (int v = 0; v < V; ++v) worst = std::max(worst, std::fabs((double)got[i * V + v] - want[i][v].get<double>()));
  std::printf("  %s (%s) chunk %2lld: max |dlogit| %.2e over %lld positions x %d\n", path.c_str(), ref_key,
              (long long)chunk, worst, (long long)n, V);
  return worst;
}

TEST(Gemma3, LogitsMatchTransformers) {
  for (int64_t chunk : {64, 7, 0}) EXPECT_LT(max_logit_error(test::hf_dir("tiny-gemma3"), "logits", chunk), kTol);
}

// llama.cpp's GGUF layout of the same weights; its attention scale is head_dim's (llama.cpp has
// no query_pre_attn_scalar key), compared with transformers run that way.
TEST(Gemma3, GgufLogitsMatchTransformers) {
  for (int64_t chunk : {64, 7, 0})
    EXPECT_LT(max_logit_error(test::fixture_path("hf/tiny-gemma3.gguf"), "gguf_logits", chunk), kTol);
}

// The GGUF twin of the CUDA tests' head_dim-64 gemma3 (dev/make_hf_gpu_fixtures.py; its directory is
// checked with the other GPU fixtures in hf_model_test.cpp), on the CPU where CI runs.
TEST(Gemma3, GpuFixtureGgufMatchesTransformersOnCpu) {
  for (int64_t chunk : {64, 0})
    EXPECT_LT(max_logit_error(test::fixture_path("hf/tiny-gemma3-d64.gguf"), "gguf_logits", chunk, nullptr,
                              "tiny-gemma3-d64"),
              kTol);
}

// The scale is what separates the two references: the GGUF's logits are not the directory's.
TEST(Gemma3, QueryPreAttnScalarMatters) {
  const auto ref = test::hf_reference("tiny-gemma3");
  double diff = 0;
  for (size_t i = 0; i < ref["logits"].size(); ++i)
    for (size_t v = 0; v < ref["logits"][i].size(); ++v)
      diff = std::max(diff, std::fabs(ref["logits"][i][v].get<double>() - ref["gguf_logits"][i][v].get<double>()));
  EXPECT_GT(diff, 100 * kTol);
}

// A local layer's heads keep their own window whatever the plan: an all-streaming plan (sink 4,
// recent 8, narrower than the window of 16) changes only the global layer, so its logits differ
// from full attention past the first 12 positions but the local layers still compute
// transformers' numbers up to there.
TEST(Gemma3, LocalLayersIgnoreThePlan) {
  auto m = Model::load(test::hf_dir("tiny-gemma3"));
  CpuForward cpu(*m);
  const ModelConfig& c = m->config();
  const HeadPlan plan = HeadPlan::uniform(c.n_layers, c.n_kv_heads, HeadKind::Streaming, StreamingWindow{4, 8});
  auto cache = cpu.new_cache(plan);
  for (int l = 0; l < c.n_layers; ++l) {
    EXPECT_EQ(cache->layer_window(l), c.is_local(l) ? 16 : 0) << l;
    for (int h = 0; h < c.n_kv_heads; ++h) EXPECT_EQ(cache->head(l, h).kind(), HeadKind::Streaming);
  }
  // Bounded: a local head holds 16 rows, a global streaming head 4 + 8, a retrieval head grows.
  const size_t row = 2 * sizeof(float) * c.head_dim;  // K and V, f32
  EXPECT_EQ(cache->head(0, 0).bytes(), 16 * row);
  EXPECT_EQ(cache->head(5, 0).bytes(), 12 * row);
  auto full = cpu.new_cache(HeadPlan::uniform(c.n_layers, c.n_kv_heads, HeadKind::Retrieval, {}));
  EXPECT_EQ(full->head(0, 0).kind(), HeadKind::Streaming);
  EXPECT_EQ(full->head(5, 0).kind(), HeadKind::Retrieval);
  full->clear();  // clear() keeps the layer windows
  EXPECT_EQ(full->layer_window(0), 16);
  EXPECT_EQ(full->head(0, 0).kind(), HeadKind::Streaming);

  const auto ref = test::hf_reference("tiny-gemma3");
  const auto ids = ref["ids"].get<std::vector<int32_t>>();
  const int V = c.n_vocab;
  const int64_t n = (int64_t)ids.size();
  ThreadPool pool(2);
  std::vector<float> got((size_t)(n * V));
  cpu.forward(*cache, ids.data(), n, got.data(), pool, true, 7);
  double inside = 0, past = 0;
  for (int64_t i = 0; i < n; ++i)
    for (int v = 0; v < V; ++v) {
      const double d = std::fabs((double)got[i * V + v] - ref["logits"][i][v].get<double>());
      (i < 12 ? inside : past) = std::max(i < 12 ? inside : past, d);
    }
  EXPECT_LT(inside, kTol);
  EXPECT_GT(past, 100 * kTol);  // the global layer's streaming heads do change the numbers
}

TEST(Gemma3, ConfigRead) {
  for (const std::string& path : {test::hf_dir("tiny-gemma3"), test::fixture_path("hf/tiny-gemma3.gguf")}) {
    auto m = Model::load(path);
    const ModelConfig& c = m->config();
    EXPECT_EQ(c.arch, "gemma3") << path;
    EXPECT_TRUE(c.qk_norm && c.sandwich_norms && c.gelu_mlp && c.tied_embeddings) << path;
    EXPECT_EQ(c.head_dim, 32);  // 4 heads of 32 over a hidden size of 64
    EXPECT_EQ(c.n_embd, 64);
    EXPECT_EQ(c.embd_scale, 8.0f);
    EXPECT_EQ(c.local_window, 16);
    EXPECT_EQ(c.sliding_window, 0);  // no whole-model window: the context is not capped
    EXPECT_EQ(c.layer_local, (std::vector<uint8_t>{1, 1, 1, 1, 1, 0}));
    EXPECT_EQ(c.rope_theta, 1e6f);
    EXPECT_EQ(c.rope_local_theta, 1e4f);
    EXPECT_EQ(c.rope_linear_factor, 2.0f);
    EXPECT_EQ(c.final_softcap, 5.0f);
    EXPECT_EQ(c.query_scale, path.ends_with(".gguf") ? 32.0f : 48.0f);
  }
}

TEST(Gemma3, GreedyMatchesTransformers) {
  const auto ref = test::hf_reference("tiny-gemma3");
  EngineOptions o;
  o.model_path = test::hf_dir("tiny-gemma3");
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
  EXPECT_EQ(got, want);
}

void expect_refused(const std::string& dir, const std::string& what) {
  try {
    Model::load(dir);
    ADD_FAILURE() << "loaded";
  } catch (const std::exception& ex) {
    EXPECT_NE(std::string(ex.what()).find(what), std::string::npos) << ex.what();
  }
}

TEST(Gemma3, UnsupportedVariantsAreRefused) {
  struct Case {
    const char* key;
    nlohmann::json value;
    const char* what;
  };
  for (const Case& k : {Case{"attn_logit_softcapping", 50.0, "attn_logit_softcapping"},
                        Case{"model_type", "gemma3", "multimodal"},
                        Case{"hidden_activation", "gelu", "hidden_activation 'gelu'"},
                        Case{"use_bidirectional_attention", true, "use_bidirectional_attention"}}) {
    test::ScratchDir d("tiny-gemma3");
    auto cfg = test::read_json(d.file("config.json"));
    cfg[k.key] = k.value;
    test::write_json(d.file("config.json"), cfg);
    expect_refused(d.str(), k.what);
  }
}

// transformers 4's keys (rope_theta, rope_local_base_freq, rope_scaling, sliding_window_pattern
// without layer_types) give the same model.
TEST(Gemma3, Transformers4Config) {
  test::ScratchDir d("tiny-gemma3");
  auto cfg = test::read_json(d.file("config.json"));
  cfg.erase("rope_parameters");
  cfg.erase("layer_types");
  cfg["rope_theta"] = 1e6;
  cfg["rope_local_base_freq"] = 1e4;
  cfg["rope_scaling"] = {{"rope_type", "linear"}, {"factor", 2.0}};
  cfg["sliding_window_pattern"] = 6;
  test::write_json(d.file("config.json"), cfg);
  EXPECT_LT(max_logit_error(d.str(), "logits", 64), kTol);
}

}  // namespace
}  // namespace duo
