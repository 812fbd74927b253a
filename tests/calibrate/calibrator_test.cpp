// The optimizer pieces (AdamW, the reference lr schedule, clamping) against textbook formulas,
// and the calibration loop on a tiny random model: a resumed run equals an uninterrupted one,
// gradient steps reduce the distillation loss, checkpoints refuse other settings.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "calibrate/calibrator.h"
#include "calibrate/gated_model.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "io/head_pattern.h"
#include "model/model.h"

namespace duo {
namespace {

TEST(CalibOptimizer, AdamWFollowsTheTextbookUpdate) {
  AdamWConfig c;
  c.lr = 0.02;
  std::vector<double> p = {0.5, 0.9, 0.1}, q = p;
  AdamWState st;
  // Independent formulation: bias-corrected moments, p -= lr * mhat / (sqrt(vhat) + eps).
  std::vector<double> m(3, 0), v(3, 0);
  const std::vector<std::vector<double>> grads = {{0.3, -2.0, 1e-4}, {0.1, -1.0, -3e-4}, {-0.5, 0.2, 0.0}};
  for (size_t t = 1; t <= grads.size(); ++t) {
    const auto& g = grads[t - 1];
    const double lr = c.lr * (t == 2 ? 0.5 : 1.0);
    adamw_step(p, g, st, c, lr);
    for (int i = 0; i < 3; ++i) {
      m[i] = 0.9 * m[i] + 0.1 * g[i];
      v[i] = 0.999 * v[i] + 0.001 * g[i] * g[i];
      const double mh = m[i] / (1 - std::pow(0.9, t)), vh = v[i] / (1 - std::pow(0.999, t));
      q[i] -= lr * mh / (std::sqrt(vh) + 1e-8);
      EXPECT_NEAR(p[i], q[i], 1e-12) << "step " << t << " param " << i;
    }
    if (t == 1) {  // the first step moves every parameter by lr against the gradient's sign
      const double p0[] = {0.5, 0.9, 0.1};
      for (int i = 0; i < 3; ++i) EXPECT_NEAR(p[i], p0[i] - c.lr * (g[i] > 0 ? 1 : -1), 1e-3 * c.lr);
    }
  }
  EXPECT_EQ(st.t, 3);
  // Decoupled weight decay shrinks the parameter before the Adam step.
  AdamWConfig wd = c;
  wd.weight_decay = 0.1;
  std::vector<double> a = {1.0}, b = {1.0};
  AdamWState s1, s2;
  adamw_step(a, {0.0}, s1, wd, 0.02);
  adamw_step(b, {0.0}, s2, c, 0.02);
  EXPECT_NEAR(a[0], 1.0 * (1 - 0.02 * 0.1), 1e-15);
  EXPECT_EQ(b[0], 1.0);
  EXPECT_THROW(adamw_step(a, {0.0, 1.0}, s1, c, 0.02), Error);
}

TEST(CalibOptimizer, LearningRateScheduleWarmsUpAndCoolsDown) {
  // steps 2000: warm-up and cool-down over 400 steps each, floor 0.1.
  EXPECT_DOUBLE_EQ(lr_multiplier(0, 2000), 0.1);
  EXPECT_DOUBLE_EQ(lr_multiplier(39, 2000), 0.1);
  EXPECT_DOUBLE_EQ(lr_multiplier(200, 2000), 201.0 / 400);
  EXPECT_DOUBLE_EQ(lr_multiplier(399, 2000), 1.0);
  EXPECT_DOUBLE_EQ(lr_multiplier(1000, 2000), 1.0);
  EXPECT_DOUBLE_EQ(lr_multiplier(1700, 2000), 300.0 / 400);
  EXPECT_DOUBLE_EQ(lr_multiplier(1999, 2000), 0.1);
  // Fewer than 5 steps: the window is one step (the reference would divide by zero).
  EXPECT_DOUBLE_EQ(lr_multiplier(0, 3), 1.0);
  EXPECT_DOUBLE_EQ(lr_multiplier(2, 3), 1.0);
  // steps 12: window 2
  EXPECT_DOUBLE_EQ(lr_multiplier(0, 12), 0.5);
  EXPECT_DOUBLE_EQ(lr_multiplier(11, 12), 0.5);
  std::vector<double> g = {-0.3, 0.0, 0.4, 1.0, 1.7};
  clamp_all(g);
  EXPECT_EQ(g, (std::vector<double>{0.0, 0.0, 0.4, 1.0, 1.0}));
}

ModelConfig tiny() {
  ModelConfig c;
  c.arch = "llama";
  c.name = "tiny";
  c.n_layers = 2;
  c.n_embd = 32;
  c.n_ff = 48;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 16;
  c.n_rot = 16;
  c.n_vocab = 64;
  c.n_ctx_train = 4096;
  c.rope_style = RopeStyle::Neox;
  c.qkv_bias = true;
  return c;
}

// Random tokens of a random length; the last 6 positions are the "answer".
class RandomTokens : public SampleSource {
 public:
  PasskeySample next(std::mt19937_64& rng) override {
    PasskeySample s;
    const int64_t n = 120 + (int64_t)uniform_below(rng, 60);
    for (int64_t i = 0; i < n; ++i) s.tokens.push_back((int32_t)uniform_below(rng, 64));
    s.answer_mask.assign((size_t)n, 0);
    for (int64_t i = n - 6; i < n; ++i) s.loss_rows.push_back(i), s.answer_mask[i] = 1;
    return s;
  }
};

// Always the same sample.
class FixedSample : public SampleSource {
 public:
  explicit FixedSample(PasskeySample s) : s_(std::move(s)) {}
  PasskeySample next(std::mt19937_64&) override { return s_; }

 private:
  PasskeySample s_;
};

struct TinyRun {
  std::unique_ptr<Model> model = Model::synthetic(tiny(), 77);
  ThreadPool pool{2};
  FrozenWeights<float> weights{*model, size_t(1) << 30, pool};
  GatedModel<float> gm{weights, StreamingWindow{4, 32}, pool};
};

CalibrationConfig small_config() {
  CalibrationConfig c;
  c.steps = 8;
  c.lambda = 0.05;
  c.adamw.lr = 0.05;
  c.window = {4, 32};
  c.seed = 5;
  return c;
}

TEST(CalibCalibrator, ResumedRunEqualsUninterruptedRun) {
  TinyRun run;
  RandomTokens data;
  const CalibrationConfig cfg = small_config();
  const nlohmann::json info = {{"model", "tiny"}};
  Calibrator straight(2, 2, data, cpu_loss_backend(run.gm, cfg.lambda), cfg, info);
  while (!straight.done()) straight.step();

  const std::string ckpt = (std::filesystem::temp_directory_path() / "duo_calib_resume_test.json").string();
  {
    Calibrator first(2, 2, data, cpu_loss_backend(run.gm, cfg.lambda), cfg, info);
    for (int i = 0; i < 3; ++i) first.step();
    first.save_checkpoint(ckpt);
  }
  Calibrator resumed(2, 2, data, cpu_loss_backend(run.gm, cfg.lambda), cfg, info);
  resumed.load_checkpoint(ckpt);
  EXPECT_EQ(resumed.state().step, 3);
  while (!resumed.done()) resumed.step();
  std::filesystem::remove(ckpt);

  EXPECT_EQ(resumed.state().gates, straight.state().gates);
  EXPECT_EQ(resumed.state().adam.m, straight.state().adam.m);
  EXPECT_EQ(resumed.state().adam.v, straight.state().adam.v);
  ASSERT_EQ(resumed.history().size(), straight.history().size());
  for (size_t i = 0; i < straight.history().size(); ++i) {
    EXPECT_EQ(resumed.history()[i].loss.total, straight.history()[i].loss.total) << i;
    EXPECT_EQ(resumed.history()[i].tokens, straight.history()[i].tokens) << i;
  }
  // The gates moved, and stay in [0, 1].
  int moved = 0;
  for (double g : straight.state().gates) {
    EXPECT_LE(g, 1.0);
    EXPECT_GE(g, 0.0);
    moved += g < 1.0;
  }
  EXPECT_GT(moved, 0);
  EXPECT_THROW(straight.step(), Error);
}

TEST(CalibCalibrator, CheckpointOfOtherSettingsIsRefused) {
  TinyRun run;
  RandomTokens data;
  CalibrationConfig cfg = small_config();
  const std::string ckpt = (std::filesystem::temp_directory_path() / "duo_calib_settings_test.json").string();
  Calibrator a(2, 2, data, cpu_loss_backend(run.gm, cfg.lambda), cfg, {{"model", "tiny"}});
  a.step();
  a.save_checkpoint(ckpt);
  cfg.lambda = 0.1;
  Calibrator b(2, 2, data, cpu_loss_backend(run.gm, cfg.lambda), cfg, {{"model", "tiny"}});
  try {
    b.load_checkpoint(ckpt);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("lambda: checkpoint 0.05, now 0.1"), std::string::npos) << e.what();
  }
  Calibrator c(2, 2, data, cpu_loss_backend(run.gm, small_config().lambda), small_config(), {{"model", "other"}});
  EXPECT_THROW(c.load_checkpoint(ckpt), Error);
  Calibrator d(3, 2, data, cpu_loss_backend(run.gm, 0.05), small_config(), {{"model", "tiny"}});
  EXPECT_THROW(d.load_checkpoint(ckpt), Error);
  std::filesystem::remove(ckpt);
  EXPECT_THROW(a.load_checkpoint(ckpt), Error);  // missing file
}

TEST(CalibCalibrator, StepsReduceTheDistillationLossAndTheL1PushesGatesDown) {
  TinyRun run;
  std::mt19937_64 rng(9);
  RandomTokens random;
  FixedSample data(random.next(rng));
  // lambda 0, gates from 0.5: the only signal is distillation, which pulls gates towards 1.
  CalibrationConfig cfg = small_config();
  cfg.lambda = 0;
  cfg.init_gate = 0.5;
  cfg.steps = 25;
  Calibrator cal(2, 2, data, cpu_loss_backend(run.gm, cfg.lambda), cfg);
  const double first = cal.step().loss.distill;
  double last = first;
  while (!cal.done()) last = cal.step().loss.distill;
  EXPECT_GT(first, 0.0);
  EXPECT_LT(last, 0.5 * first) << "distill " << first << " -> " << last;
  // A large lambda with gates starting at 1 (no distillation gradient at first) drives them down.
  CalibrationConfig reg = small_config();
  reg.lambda = 10;
  reg.steps = 30;
  reg.adamw.lr = 0.1;
  Calibrator down(2, 2, data, cpu_loss_backend(run.gm, reg.lambda), reg);
  while (!down.done()) down.step();
  EXPECT_EQ(gate_sparsity(down.state().gates), 1.0);
  // The gate matrix round-trips through the pattern TSV the engine loads.
  const std::string tsv = (std::filesystem::temp_directory_path() / "duo_calib_gates.tsv").string();
  save_gates_tsv(cal.gate_matrix(), tsv);
  const GateMatrix g = load_gates_tsv(tsv);
  std::filesystem::remove(tsv);
  ASSERT_EQ(g.n_layers, 2);
  ASSERT_EQ(g.n_kv_heads, 2);
  for (int i = 0; i < 4; ++i) EXPECT_FLOAT_EQ(g.values[i], (float)cal.state().gates[i]);
}

}  // namespace
}  // namespace duo
