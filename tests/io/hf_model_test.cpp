// Hugging Face directories (tests/fixtures/hf, from dev/make_hf_fixtures.py) against
// transformers: the CPU forward's logits at every position and greedy tokens through the Engine,
// the config read in both config.json forms, llama3 RoPE factors against transformers', and the
// errors for directories duo cannot run.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

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

// Measured max |dlogit| against transformers' float32 logits (std ~1, rounded to 1e-5 in the
// fixture), over pre-fill chunks of 64, 7 and 1: tiny-llama (bf16 weights) 2.7e-5, tiny-qwen2
// (f16) 1.6e-5. A wrong Q/K row order (interleaved RoPE on HF's rotate-half rows) moves the
// llama's by 5.7.
constexpr double kTol = 2e-4;

// chunk: pre-fill chunk size, or 0 for one token per call (the decode path's few-token matmuls).
double check_logits(const std::string& key, int64_t chunk) {
  const auto ref = test::hf_reference(key);
  auto m = Model::load(test::hf_dir(key));
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
  double worst = 0;
  for (int64_t i = 0; i < n; ++i)
    for (int v = 0; v < V; ++v)
      worst = std::max(worst, std::fabs((double)got[i * V + v] - ref["logits"][i][v].get<double>()));
  std::printf("  %s chunk %2lld: max |dlogit| %.2e over %lld positions x %d\n", key.c_str(), (long long)chunk, worst,
              (long long)n, V);
  return worst;
}

TEST(HfModel, LlamaLogitsMatchTransformers) {
  for (int64_t chunk : {64, 7, 0}) EXPECT_LT(check_logits("tiny-llama", chunk), kTol) << chunk;
}
TEST(HfModel, Qwen2LogitsMatchTransformers) {
  for (int64_t chunk : {64, 7, 0}) EXPECT_LT(check_logits("tiny-qwen2", chunk), kTol) << chunk;
}

// The head_dim-64 fixtures of the CUDA tests (dev/make_hf_gpu_fixtures.py, tests/cuda/hf_forward_test.cpp):
// the CPU forward checks them here, where CI runs.
TEST(HfModel, GpuFixturesMatchTransformersOnCpu) {
  for (const char* key : {"tiny-llama-d64", "tiny-mistral-d64", "tiny-qwen2-d64", "tiny-qwen3-d64", "tiny-gemma3-d64"})
    for (int64_t chunk : {64, 0}) EXPECT_LT(check_logits(key, chunk), kTol) << key << " chunk " << chunk;
}

TEST(HfModel, ConfigRead) {
  auto l = Model::load(test::hf_dir("tiny-llama"));  // sharded bf16, transformers 5 config
  EXPECT_EQ(l->config().arch, "llama");
  EXPECT_EQ(l->config().n_layers, 2);
  EXPECT_EQ(l->config().n_heads, 4);
  EXPECT_EQ(l->config().n_kv_heads, 2);
  EXPECT_EQ(l->config().head_dim, 16);
  EXPECT_EQ(l->config().n_vocab, 384);
  EXPECT_EQ(l->config().rope_theta, 50000.0f);
  EXPECT_TRUE(l->config().tied_embeddings);
  EXPECT_EQ(l->weights().tok_embd.type, GgmlType::BF16);
  EXPECT_EQ(l->weights().output.data, l->weights().tok_embd.data);
  auto q = Model::load(test::hf_dir("tiny-qwen2"));  // one f16 file, transformers 4 config
  EXPECT_EQ(q->config().arch, "qwen2");
  EXPECT_EQ(q->config().rope_theta, 10000.0f);
  EXPECT_TRUE(q->config().qkv_bias);
  EXPECT_FALSE(q->config().tied_embeddings);
  EXPECT_EQ(q->weights().output.type, GgmlType::F16);
  EXPECT_EQ(q->config().n_vocab, 336);
}

// Greedy decoding through the Engine (its tokenizer from tokenizer.json) gives transformers'
// generate() tokens.
void check_greedy(const std::string& key) {
  const auto ref = test::hf_reference(key);
  EngineOptions o;
  o.model_path = test::hf_dir(key);
  o.threads = 2;
  Engine engine(o);
  const std::string prompt = ref["prompt"].get<std::string>();
  const auto ids = engine.tokenizer().encode(prompt, engine.tokenizer().vocab().add_bos, true);
  EXPECT_EQ(ids, ref["ids"].get<std::vector<int32_t>>());
  const auto want = ref["greedy"].get<std::vector<int32_t>>();
  for (int32_t t : want) ASSERT_FALSE(engine.tokenizer().is_eog(t)) << "the reference ran past an end token";
  auto s = engine.new_session();
  Sampler sampler(SamplerConfig{});
  std::vector<int32_t> got;
  s->generate(ids, (int)want.size(), sampler, [&](int32_t t, const std::string&) {
    got.push_back(t);
    return true;
  });
  EXPECT_EQ(got, want) << key;
}

TEST(HfModel, LlamaGreedyMatchesTransformers) { check_greedy("tiny-llama"); }
TEST(HfModel, Qwen2GreedyMatchesTransformers) { check_greedy("tiny-qwen2"); }

// Llama-3.1 RoPE scaling from config.json: the divisors transformers' llama3 rope gives (recorded
// by make_tiny_model_fixtures.py for tiny-llama31: factor 8, low 1, high 4, original context 32).
TEST(HfModel, Llama3RopeScalingMatchesTransformers) {
  test::ScratchDir d("tiny-llama");
  auto cfg = test::read_json(d.file("config.json"));
  cfg["rope_parameters"] = {{"rope_type", "llama3"}, {"rope_theta", 10000.0}, {"factor", 8.0},
                            {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
                            {"original_max_position_embeddings", 32}};
  test::write_json(d.file("config.json"), cfg);
  auto m = Model::load(d.str());
  std::ifstream in(test::fixture_path("tiny_models/tiny-llama31.json"));
  const auto want = nlohmann::json::parse(in)["rope_freqs"].get<std::vector<double>>();
  ASSERT_EQ(m->rope_inv_freq().size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    const double unscaled = std::pow(10000.0, -2.0 * (double)i / 16.0);
    EXPECT_NEAR(m->rope_inv_freq()[i], unscaled / want[i], 1e-6 * unscaled) << i;
  }
}

std::string load_error(const std::string& dir) {
  try {
    Model::load(dir);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

#define EXPECT_ERROR(dir, text) \
  do { const std::string e_ = load_error(dir); EXPECT_NE(e_.find(text), std::string::npos) << e_; } while (0)

TEST(HfModel, BadDirectoriesAreRefused) {
  {
    test::ScratchDir d("tiny-qwen2");
    std::filesystem::remove(d.file("config.json"));
    EXPECT_ERROR(d.str(), "config.json' is missing");
  }
  {
    test::ScratchDir d("tiny-qwen2");
    std::filesystem::remove(d.file("model.safetensors"));
    EXPECT_ERROR(d.str(), "no model.safetensors and no model.safetensors.index.json");
  }
  {
    test::ScratchDir d("tiny-llama");  // a shard the index names is gone
    std::filesystem::remove(d.file("model-00002-of-00004.safetensors"));
    EXPECT_ERROR(d.str(), "model-00002-of-00004.safetensors");
  }
  {
    test::ScratchDir d("tiny-qwen2");
    std::filesystem::resize_file(d.file("model.safetensors"), std::filesystem::file_size(d.file("model.safetensors")) - 10);
    EXPECT_ERROR(d.str(), "truncated safetensors data");
  }
  {
    test::ScratchDir d("tiny-qwen2");
    std::filesystem::resize_file(d.file("model.safetensors"), 100);
    EXPECT_ERROR(d.str(), "truncated safetensors header");
  }
  auto with_config = [](const std::string& key, const char* field, const nlohmann::json& value, const char* want) {
    test::ScratchDir d(key);
    auto cfg = test::read_json(d.file("config.json"));
    cfg[field] = value;
    test::write_json(d.file("config.json"), cfg);
    EXPECT_ERROR(d.str(), want);
  };
  with_config("tiny-qwen2", "model_type", "gemma2", "unsupported architecture 'gemma2'");
  with_config("tiny-qwen2", "rope_scaling", {{"type", "yarn"}, {"factor", 4.0}}, "RoPE scaling 'yarn' is not supported");
  // (linear is supported: tests/io/published_patterns_test.cpp)
  with_config("tiny-llama", "rope_parameters", {{"rope_type", "dynamic"}, {"factor", 4.0}},
              "RoPE scaling 'dynamic' is not supported");
  with_config("tiny-qwen2", "use_sliding_window", true, "use_sliding_window");
  with_config("tiny-qwen2", "hidden_act", "gelu", "hidden_act 'gelu'");
  with_config("tiny-qwen2", "num_key_value_heads", 3, "num_key_value_heads");
  with_config("tiny-qwen2", "hidden_size", 32, "expected [336, 32]");  // shapes checked against the weights
  with_config("tiny-qwen2", "tie_word_embeddings", true, "");  // allowed: lm_head then unused
  {
    // A dtype the engine cannot compute with: the header of the f16 file, one tensor relabelled
    // I16 (same size), is named in the error.
    test::ScratchDir d("tiny-qwen2");
    std::fstream f(d.file("model.safetensors"), std::ios::in | std::ios::out | std::ios::binary);
    uint64_t n = 0;
    f.read(reinterpret_cast<char*>(&n), 8);
    std::string header(n, '\0');
    f.read(header.data(), (std::streamsize)n);
    const std::string key = "\"model.norm.weight\":{\"dtype\":\"F16\"";
    const size_t at = header.find(key);
    ASSERT_NE(at, std::string::npos) << header.substr(0, 200);
    header.replace(at + key.size() - 4, 3, "I16");
    f.seekp(8);
    f.write(header.data(), (std::streamsize)n);
    f.close();
    EXPECT_ERROR(d.str(), "tensor 'model.norm.weight' has dtype I16, which duo cannot read");
  }
}

TEST(HfModel, EngineRefusesDirectoryWithoutTokenizer) {
  test::ScratchDir d("tiny-qwen2");
  std::filesystem::remove(d.file("tokenizer.json"));
  EngineOptions o;
  o.model_path = d.str();
  o.threads = 1;
  try {
    Engine e(o);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer.json' is missing"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace duo
