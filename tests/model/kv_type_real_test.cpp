// `--kv-type` end to end on the real SmolLM2 (CPU): the 1000-token fixture prompt, pre-filled in
// chunks, then 32 decode steps teacher-forced on the bf16 cache's greedy tokens. Each quantized
// cache's logits are compared with the bf16 cache's at every decode step (relative RMS error of
// the logit row, max |difference|, top-1 agreement), and each type's own greedy continuation
// with bf16's (tokens equal before the first difference). Full attention, and duo with the
// committed SmolLM2 pattern (half the heads streaming, whose buffers stay bf16).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "backend/cpu/cpu_forward.h"
#include "core/thread_pool.h"
#include "io/head_pattern.h"
#include "model/model.h"
#include "duo/sampler.h"
#include "test_support.h"

namespace duo {
namespace {

constexpr int kSteps = 32;

struct Run {
  std::vector<std::vector<float>> logits;  // after the prompt, then after each forced token
  std::vector<int32_t> greedy;             // the type's own greedy continuation
};

// Without `forced`: greedy decoding, logits recorded along the way (the reference). With it:
// logits along the forced tokens, and the type's own greedy continuation from a second cache.
Run run(Model& m, HeadPlan plan, KvType type, const std::vector<int32_t>& prompt, const std::vector<int32_t>& forced,
        ThreadPool& pool) {
  CpuForward cpu(m);
  plan.kv_type = type;
  const int V = m.config().n_vocab;
  Run r;
  auto cache = cpu.new_cache(plan);
  std::vector<float> row(V);
  cpu.forward(*cache, prompt.data(), (int64_t)prompt.size(), row.data(), pool, false, 256);
  r.logits.push_back(row);
  std::unique_ptr<KvCache> own;
  std::vector<float> own_row = row;
  if (!forced.empty()) {
    own = cpu.new_cache(plan);
    cpu.forward(*own, prompt.data(), (int64_t)prompt.size(), own_row.data(), pool, false, 256);
  }
  for (int s = 0; s < kSteps; ++s) {
    const int32_t next = Sampler::argmax(own_row.data(), V);
    r.greedy.push_back(next);
    if (forced.empty()) {
      cpu.forward(*cache, &next, 1, row.data(), pool);
      r.logits.push_back(row);
      own_row = row;
      continue;
    }
    cpu.forward(*cache, &forced[s], 1, row.data(), pool);
    r.logits.push_back(row);
    cpu.forward(*own, &next, 1, own_row.data(), pool);
  }
  return r;
}

struct Stats {
  double rel_rms = 0, max_abs = 0;
  int top1_agree = 0, rows = 0, greedy_prefix = 0;
};

Stats compare(const Run& got, const Run& ref) {
  Stats st;
  for (size_t i = 0; i < ref.logits.size(); ++i) {
    const auto &a = got.logits[i], &b = ref.logits[i];
    double num = 0, den = 0;
    for (size_t j = 0; j < a.size(); ++j) {
      const double d = (double)a[j] - b[j];
      num += d * d, den += (double)b[j] * b[j];
      st.max_abs = std::max(st.max_abs, std::fabs(d));
    }
    st.rel_rms = std::max(st.rel_rms, std::sqrt(num / den));
    st.top1_agree += Sampler::argmax(a.data(), (int)a.size()) == Sampler::argmax(b.data(), (int)b.size());
    ++st.rows;
  }
  while (st.greedy_prefix < (int)ref.greedy.size() && got.greedy[st.greedy_prefix] == ref.greedy[st.greedy_prefix])
    ++st.greedy_prefix;
  return st;
}

void check(const std::string& mode) {
  DUO_REQUIRE_MODEL(path, test::kSmolLM2);
  std::ifstream f(test::fixture_path("models/smollm2.json"));
  ASSERT_TRUE(f.good());
  const auto j = nlohmann::json::parse(f);
  std::vector<int32_t> prompt;
  for (const auto& p : j["prompts"])
    if (p["ids"].size() >= 1000) prompt = p["ids"].get<std::vector<int32_t>>();
  ASSERT_EQ(prompt.size(), 1000u);
  auto model = Model::load(path);
  const ModelConfig& c = model->config();
  HeadPlan plan = HeadPlan::uniform(c.n_layers, c.n_kv_heads, HeadKind::Retrieval, {64, 256});
  if (mode == "duo") {
    const GateMatrix g = load_gates_tsv(std::string(DUO_FIXTURES_DIR) + "/../../patterns/SmolLM2-135M-Instruct/cpu_48steps.tsv");
    plan = model->reorder_heads(make_head_plan(binarize_ratio(g, 0.5), c.n_layers, c.n_kv_heads, plan.window, "pattern"));
  }
  ThreadPool pool(2);
  const Run ref = run(*model, plan, KvType::BF16, prompt, {}, pool);  // its greedy tokens force the others
  struct Limit {
    KvType type;
    double rel_rms, top1;  // worst row's relative RMS error; fraction of rows whose top-1 agrees
    int greedy_prefix;
  };
  // Measured (this test's printout, AVX-512 kernels): relative RMS error vs bf16 0.0128 (f32),
  // 0.0061 / 0.0068 (q8, full / duo), 0.1215 / 0.1179 (q4); top-1 agrees on 33/33 rows and the
  // whole 32-token greedy continuation is equal for every type. Limits: ~1.5x the measured
  // errors, and every top-1 and greedy token as measured.
  std::vector<Limit> limits = {Limit{KvType::Q8, 0.012, 1.0, kSteps}, Limit{KvType::Q4, 0.18, 1.0, kSteps}};
  if (mode == "full") limits.insert(limits.begin(), Limit{KvType::F32, 0.02, 1.0, kSteps});
  for (const Limit& lim : limits) {
    const Run r = run(*model, plan, lim.type, prompt, ref.greedy, pool);
    const Stats st = compare(r, ref);
    std::printf("  %s %s vs bf16 cache: logits rel RMS <= %.4f, max |diff| %.3f, top-1 agrees %d/%d, greedy equal for "
                "%d/%d tokens\n",
                mode.c_str(), to_string(lim.type), st.rel_rms, st.max_abs, st.top1_agree, st.rows, st.greedy_prefix,
                kSteps);
    EXPECT_LE(st.rel_rms, lim.rel_rms) << to_string(lim.type);
    EXPECT_GE(st.top1_agree, lim.top1 * st.rows) << to_string(lim.type);
    EXPECT_GE(st.greedy_prefix, lim.greedy_prefix) << to_string(lim.type);
  }
}

TEST(KvTypeReal, SmolLM2FullAttention) { check("full"); }
TEST(KvTypeReal, SmolLM2Duo) { check("duo"); }

}  // namespace
}  // namespace duo
