// The CPU forward of the real models (SmolLM2, Qwen2.5-Coder, Gemma-3-270M) against HF
// transformers on the same GGUF weights (tests/fixtures/models, from
// dev/make_model_fixtures.py): logits at several positions, and greedy continuations.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "backend/cpu/cpu_forward.h"
#include "backend/simd_levels.h"
#include "core/thread_pool.h"
#include "model/model.h"
#include "duo/sampler.h"
#include "test_support.h"

namespace duo {
namespace {

struct Tolerance {
  double logit;        // max |ours - reference| over the reference's top-20 logits
  double logprob;      // same for log-probabilities
  bool exact_greedy;   // whole 64-token greedy continuation must match
};

void check_model(const std::string& file, const std::string& fixture, Tolerance tol) {
  std::ifstream f(test::fixture_path("models/" + fixture + ".json"));
  ASSERT_TRUE(f.good());
  const auto j = nlohmann::json::parse(f);
  auto model = Model::load(test::models_dir() + "/" + file);
  CpuForward cpu(*model);
  const int V = model->config().n_vocab;
  ThreadPool pool(2);
  for (const auto& p : j["prompts"]) {
    const auto ids = p["ids"].get<std::vector<int32_t>>();
    const int64_t n = (int64_t)ids.size();
    // Pre-fill in pieces that end at the positions the reference recorded, so only those
    // positions go through the LM head (all_logits over 150K-word vocabularies is costly).
    auto cache = cpu.new_cache(HeadPlan::uniform(model->config().n_layers, model->config().n_kv_heads,
                                                    HeadKind::Retrieval));
    std::map<int64_t, std::vector<float>> at;
    std::vector<int64_t> positions;  // JSON keys come back in string order: sort numerically
    for (const auto& item : p["top_logits"].items()) positions.push_back(std::stoll(item.key()));
    std::sort(positions.begin(), positions.end());
    int64_t done = 0;
    for (int64_t pos : positions) {
      std::vector<float> row(V);
      cpu.forward(*cache, ids.data() + done, pos + 1 - done, row.data(), pool);
      done = pos + 1;
      at[pos] = std::move(row);
    }
    ASSERT_EQ(done, n) << "the reference must include the last position";
    double worst_logit = 0, worst_lp = 0;
    for (const auto& [pos_s, ref] : p["top_logits"].items()) {
      const int64_t pos = std::stoll(pos_s);
      const float* row = at.at(pos).data();
      double mx = -1e30, z = 0;
      for (int i = 0; i < V; ++i) mx = std::max(mx, (double)row[i]);
      for (int i = 0; i < V; ++i) z += std::exp(row[i] - mx);
      const double lse = mx + std::log(z);
      const auto rids = ref["ids"].get<std::vector<int32_t>>();
      const auto rvals = ref["values"].get<std::vector<double>>();
      const double rlse = ref["logsumexp"];
      for (size_t k = 0; k < rids.size(); ++k) {
        worst_logit = std::max(worst_logit, std::fabs(row[rids[k]] - rvals[k]));
        worst_lp = std::max(worst_lp, std::fabs((row[rids[k]] - lse) - (rvals[k] - rlse)));
      }
      // The reference's top token is ours too unless the reference itself nearly ties.
      if (rvals[0] - rvals[1] > 2 * tol.logit) {
        EXPECT_EQ(Sampler::argmax(row, V), rids[0]) << "position " << pos;
      }
    }
    EXPECT_LT(worst_logit, tol.logit) << p["description"];
    EXPECT_LT(worst_lp, tol.logprob) << p["description"];

    // Greedy continuation, decoding one token at a time after the pre-fill.
    const auto ref_gen = p["greedy"].get<std::vector<int32_t>>();
    std::vector<int32_t> gen;
    std::vector<float> last = at.at(n - 1);
    for (size_t i = 0; i < ref_gen.size(); ++i) {
      const int32_t next = Sampler::argmax(last.data(), V);
      gen.push_back(next);
      if (next != ref_gen[i]) break;
      cpu.forward(*cache, &next, 1, last.data(), pool);
    }
    if (tol.exact_greedy) {
      EXPECT_EQ(gen, ref_gen) << p["description"];
    } else {
      // Must agree at least until the reference's first near-tie (gap < 0.2).
      const auto gaps = p["greedy_gaps"].get<std::vector<double>>();
      size_t must = 0;
      while (must < ref_gen.size() && gaps[must] >= 0.2) ++must;
      for (size_t i = 0; i < must; ++i) ASSERT_EQ(gen.at(i), ref_gen[i]) << p["description"] << " step " << i;
    }
    std::printf("  %-40s %4lld tokens: max |dlogit| %.4f, max |dlogprob| %.4f, greedy %zu/%zu\n",
                p["description"].get<std::string>().substr(0, 40).c_str(), (long long)n, worst_logit, worst_lp,
                std::min(gen.size(), ref_gen.size()) - (gen == ref_gen ? 0 : 1), ref_gen.size());
  }
}

TEST(ReferenceLogits, SmolLM2) {
  DUO_REQUIRE_MODEL(path, test::kSmolLM2);
  // Measured: max |dlogit| ~1e-4 (float32 reference, our pre-fill in float after row
  // dequantization); decode uses 16-bit activations.
  check_model(test::kSmolLM2, "smollm2", {0.01, 0.01, true});
}

// The same with the AVX2 kernels, on builds whose default is AVX-512 (elsewhere the test above
// already ran them).
TEST(ReferenceLogits, SmolLM2Avx2Kernels) {
  DUO_REQUIRE_MODEL(path, test::kSmolLM2);
  if (simd_compiled() != SimdLevel::Avx512) GTEST_SKIP() << "the default run used the AVX2 kernels";
  test::ScopedSimdLevel avx2(SimdLevel::Avx2);
  check_model(test::kSmolLM2, "smollm2", {0.01, 0.01, true});
}

TEST(ReferenceLogits, QwenCoder) {
  DUO_REQUIRE_MODEL(path, test::kQwenCoder);
  // Measured: max |dlogit| ~1e-4, every greedy continuation identical (even at a 7e-4 gap).
  check_model(test::kQwenCoder, "qwen2.5-coder-1.5b", {0.01, 0.01, true});
}

// gemma3: 15 local layers (window 512) beside 3 global ones; the 1000-token prompt passes the
// window, so the local layers' ring and mask are exercised.
TEST(ReferenceLogits, Gemma3) {
  DUO_REQUIRE_MODEL(path, test::kGemma3);
  // Measured: max |dlogit| 0.008 (top logits 15 to 34), max |dlogprob| 0.0012, every
  // 32-token greedy continuation identical (gaps down to 0.016).
  check_model(test::kGemma3, "gemma3-270m", {0.02, 0.01, true});
}

}  // namespace
}  // namespace duo
