// The reference's published DuoAttention patterns against the checkpoints they were calibrated
// for: each checkpoint's config.json (tests/fixtures/patterns/hf_configs, the real architecture
// values; sources in tests/fixtures/patterns/README.md) read by duo gives the published rope
// variant, and the published gate matrix passes the shape check of --pattern (make_head_plan,
// which Engine and `duo serve` call) against it, while another model's pattern is refused.
// No weights: the config is read from a scratch directory whose model.safetensors holds one
// placeholder tensor (HfCheckpoint needs a weight file; the llama/mistral config reader never
// looks into it).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "io/head_pattern.h"
#include "io/hf_checkpoint.h"
#include "io/hf_fixture.h"
#include "model/config.h"
#include "model/model.h"

namespace duo {
namespace {

namespace fs = std::filesystem;

// A directory holding the checkpoint's config.json (optionally edited) and a placeholder
// model.safetensors, removed at the end of the test.
struct ConfigOnlyDir {
  fs::path path;
  explicit ConfigOnlyDir(const std::string& model, const nlohmann::json* replace = nullptr) {
    std::random_device rd;
    path = fs::temp_directory_path() / ("duo-cfg-" + model + "-" + std::to_string(rd()));
    fs::create_directories(path);
    const nlohmann::json cfg =
        replace ? *replace : test::read_json(test::fixture_path("patterns/hf_configs/" + model + "/config.json"));
    test::write_json((path / "config.json").string(), cfg);
    // safetensors: u64 header length, JSON header (padded with spaces to 8 bytes), data.
    std::string header = R"({"placeholder":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
    header.resize((header.size() + 7) / 8 * 8, ' ');
    const uint64_t n = header.size();
    const float zero = 0.0f;
    std::ofstream f(path / "model.safetensors", std::ios::binary);
    f.write(reinterpret_cast<const char*>(&n), 8);
    f.write(header.data(), (std::streamsize)header.size());
    f.write(reinterpret_cast<const char*>(&zero), 4);
  }
  ~ConfigOnlyDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

struct Read {
  ModelConfig cfg;
  std::vector<float> rope_factors;  // llama3 scaling's per-frequency divisors, empty without
};

Read read_config(const std::string& model, const nlohmann::json* replace = nullptr) {
  ConfigOnlyDir dir(model, replace);
  auto ck = HfCheckpoint::open(dir.path.string());
  Read r;
  r.cfg = ModelConfig::from_hf(*ck, r.rope_factors);
  return r;
}

GateMatrix published(const std::string& model) { return load_gates_tsv(test::fixture_path("patterns/" + model + ".tsv")); }

// The published pattern has the checkpoint's shape and makes a head plan for it.
void expect_pattern_fits(const std::string& model, const ModelConfig& c) {
  SCOPED_TRACE(model);
  const GateMatrix g = published(model);
  EXPECT_EQ(g.n_layers, c.n_layers);
  EXPECT_EQ(g.n_kv_heads, c.n_kv_heads);
  const HeadPlan p = make_head_plan(binarize_ratio(g, 0.5), c.n_layers, c.n_kv_heads, {128, 256}, model + ".tsv");
  ASSERT_EQ((int)p.kinds.size(), c.n_layers);
  for (const auto& row : p.kinds) EXPECT_EQ((int)row.size(), c.n_kv_heads);
  EXPECT_DOUBLE_EQ(retrieval_fraction(p.kinds), 0.5);
}

// The architecture all six share (Llama-3-8B, Llama-2-7B and Mistral-7B: 32 layers of 32
// query heads over a hidden size of 4096, head dim 128).
void expect_7b_8b_shape(const ModelConfig& c, int kv_heads) {
  EXPECT_EQ(c.n_layers, 32);
  EXPECT_EQ(c.n_embd, 4096);
  EXPECT_EQ(c.n_heads, 32);
  EXPECT_EQ(c.n_kv_heads, kv_heads);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.rope_style, RopeStyle::Neox);  // HF weights keep rotate-half rows
}

TEST(PublishedPatterns, Llama31Llama3RopeScaling) {
  const Read r = read_config("Meta-Llama-3.1-8B-Instruct");
  expect_7b_8b_shape(r.cfg, 8);
  EXPECT_EQ(r.cfg.arch, "llama");
  EXPECT_EQ(r.cfg.rope_theta, 500000.0f);
  EXPECT_EQ(r.cfg.n_ctx_train, 131072);
  EXPECT_EQ(r.cfg.rope_linear_factor, 1.0f);
  // "llama3" scaling: with factor 8, low/high_freq_factor 1/4 over 8192 original positions,
  // frequencies of wavelength < 8192/4 = 2048 are kept (divisor 1), those of wavelength > 8192
  // divided by 8, and the band between blended. Dimension pair i has wavelength
  // 2*pi * theta^(2i/128): i = 0..28 lie below 2048 (i = 28: 1956; i = 29: 2402), i >= 35
  // above 8192 (i = 34: 6695; i = 35: 8219).
  ASSERT_EQ(r.rope_factors.size(), 64u);
  for (int i = 0; i <= 28; ++i) EXPECT_FLOAT_EQ(r.rope_factors[i], 1.0f) << i;
  for (int i = 35; i < 64; ++i) EXPECT_FLOAT_EQ(r.rope_factors[i], 8.0f) << i;
  for (int i = 29; i <= 34; ++i) {
    // The blend of transformers' _compute_llama3_parameters, recomputed here in double:
    // smooth = (8192 / wavelen - 1) / (4 - 1), divisor = 1 / ((1 - smooth) / 8 + smooth).
    const double wavelen = 2 * M_PI * std::pow(500000.0, 2.0 * i / 128);
    const double smooth = (8192 / wavelen - 1) / 3;
    EXPECT_NEAR(r.rope_factors[i], 1 / ((1 - smooth) / 8 + smooth), 1e-5) << i;
    EXPECT_GT(r.rope_factors[i], 1.0f);
    EXPECT_LT(r.rope_factors[i], 8.0f);
  }
  expect_pattern_fits("Meta-Llama-3.1-8B-Instruct", r.cfg);
}

TEST(PublishedPatterns, Llama2_32KLinearRopeScaling) {
  const Read r = read_config("Llama-2-7B-32K-Instruct");
  expect_7b_8b_shape(r.cfg, 32);  // multi-head attention: one KV head per query head
  EXPECT_EQ(r.cfg.rope_theta, 10000.0f);  // no rope_theta key: transformers' default
  EXPECT_EQ(r.cfg.rope_linear_factor, 8.0f);  // position interpolation 4K -> 32K
  EXPECT_TRUE(r.rope_factors.empty());
  EXPECT_EQ(r.cfg.n_ctx_train, 32768);
  expect_pattern_fits("Llama-2-7B-32K-Instruct", r.cfg);
}

TEST(PublishedPatterns, GradientLargeRopeTheta) {
  const Read a = read_config("Llama-3-8B-Instruct-Gradient-1048k");
  expect_7b_8b_shape(a.cfg, 8);
  EXPECT_EQ(a.cfg.rope_theta, 3580165449.0f);  // the float nearest the config's value
  EXPECT_EQ(a.cfg.n_ctx_train, 1048576);
  EXPECT_TRUE(a.rope_factors.empty());
  EXPECT_EQ(a.cfg.rope_linear_factor, 1.0f);
  expect_pattern_fits("Llama-3-8B-Instruct-Gradient-1048k", a.cfg);

  const Read b = read_config("Llama-3-8B-Instruct-Gradient-4194k");
  expect_7b_8b_shape(b.cfg, 8);
  EXPECT_EQ(b.cfg.rope_theta, 45200000000.0f);
  EXPECT_EQ(b.cfg.n_ctx_train, 4194304);
  EXPECT_TRUE(b.rope_factors.empty());
  expect_pattern_fits("Llama-3-8B-Instruct-Gradient-4194k", b.cfg);
}

TEST(PublishedPatterns, MistralNoSlidingWindow) {
  for (const char* m : {"Mistral-7B-Instruct-v0.2", "Mistral-7B-Instruct-v0.3"}) {
    SCOPED_TRACE(m);
    const Read r = read_config(m);
    expect_7b_8b_shape(r.cfg, 8);
    EXPECT_EQ(r.cfg.arch, "mistral");
    EXPECT_EQ(r.cfg.rope_theta, 1e6f);
    // sliding_window null from v0.2 on: full attention over the whole 32K context.
    EXPECT_EQ(r.cfg.sliding_window, 0);
    EXPECT_EQ(r.cfg.n_ctx_train, 32768);
    EXPECT_EQ(r.cfg.n_vocab, std::string(m).back() == '2' ? 32000 : 32768);
    expect_pattern_fits(m, r.cfg);
  }
  // Mistral-7B-v0.1's sliding_window 4096 on the same architecture caps the context there.
  nlohmann::json v01 = test::read_json(test::fixture_path("patterns/hf_configs/Mistral-7B-Instruct-v0.2/config.json"));
  v01["sliding_window"] = 4096;
  const Read r = read_config("Mistral-7B-v0.1-window", &v01);
  EXPECT_EQ(r.cfg.sliding_window, 4096);
  EXPECT_EQ(r.cfg.n_ctx_train, 4096);
}

// The error a user sees giving one model's pattern to another names both shapes.
void expect_refused(const std::string& pattern_model, const std::string& config_model, const std::string& fragment) {
  const Read r = read_config(config_model);
  const std::string origin = pattern_model + ".tsv";
  try {
    make_head_plan(binarize_ratio(published(pattern_model), 0.5), r.cfg.n_layers, r.cfg.n_kv_heads, {128, 256},
                   origin);
    FAIL() << pattern_model << " accepted for " << config_model;
  } catch (const std::runtime_error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find(origin), std::string::npos) << what;
    EXPECT_NE(what.find(fragment), std::string::npos) << what;
  }
}

TEST(PublishedPatterns, WrongModelsPatternRefused) {
  expect_refused("Llama-2-7B-32K-Instruct", "Meta-Llama-3.1-8B-Instruct",
                 "the pattern is 32 layers x 32 KV heads but the model has 32 layers x 8 KV heads");
  expect_refused("Mistral-7B-Instruct-v0.3", "Llama-2-7B-32K-Instruct",
                 "the pattern is 32 layers x 8 KV heads but the model has 32 layers x 32 KV heads");
}

// The linear factor reaches the model's RoPE: tiny-llama (transformers 5's rope_parameters form;
// the Llama-2-7B-32K config above has transformers 4's rope_scaling) with linear scaling 4 has
// every inverse frequency theta^(-2i/d) / 4, as transformers'
// _compute_linear_scaling_rope_parameters.
TEST(PublishedPatterns, LinearScalingReachesRope) {
  test::ScratchDir dir("tiny-llama");
  nlohmann::json cfg = test::read_json(dir.file("config.json"));
  ASSERT_TRUE(cfg.contains("rope_parameters"));
  cfg["rope_parameters"]["rope_type"] = "linear";
  cfg["rope_parameters"]["factor"] = 4.0;
  test::write_json(dir.file("config.json"), cfg);
  auto m = Model::load(dir.str());
  const int D = m->config().head_dim;
  const double theta = cfg["rope_parameters"]["rope_theta"].get<double>();
  ASSERT_EQ((int)m->rope_inv_freq().size(), D / 2);
  for (int i = 0; i < D / 2; ++i)
    EXPECT_NEAR(m->rope_inv_freq()[i], std::pow(theta, -2.0 * i / D) / 4, 1e-7) << i;
  // And anything else is still refused by name.
  cfg["rope_parameters"]["rope_type"] = "yarn";
  test::write_json(dir.file("config.json"), cfg);
  try {
    Model::load(dir.str());
    FAIL() << "yarn accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("RoPE scaling 'yarn' is not supported (supported: default, linear, llama3)"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace duo
