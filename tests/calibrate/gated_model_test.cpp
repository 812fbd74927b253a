// The whole gated calibration model on tiny random llama-shaped models: gradients w.r.t. the
// gates and the embeddings against central finite differences in double (both RoPE styles,
// with and without QKV bias), and its forward against the inference engine (full attention
// and, with every gate at 0, streaming attention).
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "calibrate/dense_gemm.h"
#include "core/dequant.h"
#include "calibrate/gated_model.h"
#include "calibrate/loss.h"
#include "core/thread_pool.h"
#include "grad_check.h"
#include "backend/cpu/cpu_forward.h"
#include "model/model.h"
#include "test_support.h"

namespace duo {
namespace {

using test::check_gradient;
using test::random_vector;

ModelConfig tiny_config(RopeStyle style, bool bias) {
  ModelConfig c;
  c.arch = style == RopeStyle::Neox ? "qwen2" : "llama";
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
  c.rope_theta = 10000.0f;
  c.norm_eps = 1e-5f;
  c.rope_style = style;
  c.qkv_bias = bias;
  return c;
}

std::vector<int32_t> random_tokens(int64_t n, int vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> ud(0, vocab - 1);
  std::vector<int32_t> t((size_t)n);
  for (auto& x : t) x = ud(rng);
  return t;
}

struct Variant {
  RopeStyle style;
  bool bias;
  const char* name;
};
const Variant kVariants[] = {{RopeStyle::Interleaved, false, "interleaved, no bias"},
                             {RopeStyle::Interleaved, true, "interleaved, bias"},
                             {RopeStyle::Neox, false, "neox, no bias"},
                             {RopeStyle::Neox, true, "neox, bias"}};

// 140 tokens cross two 64-token blocks; the window (sink 4, recent 40) makes streaming
// attention differ from full attention in every layer.
// Gates uniform in [0.2, 0.9]: strictly inside the clamp, so every gate has a two-sided difference.
std::vector<double> random_gates(int n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> ud(0.2, 0.9);
  std::vector<double> gates((size_t)n);
  for (auto& g : gates) g = ud(rng);
  return gates;
}

constexpr int64_t kTokens = 140;
const StreamingWindow kWindow{4, 40};
const std::vector<int64_t> kRows = {70, 101, 102, 120, 131};

TEST(CalibGatedModel, GateGradientMatchesFiniteDifferences) {
  ThreadPool pool(2);
  for (const Variant& var : kVariants) {
    SCOPED_TRACE(var.name);
    auto model = Model::synthetic(tiny_config(var.style, var.bias), 21);
    FrozenWeights<double> w(*model, size_t(1) << 30, pool);
    GatedModel<double> gm(w, kWindow, pool);
    const auto tokens = random_tokens(kTokens, 64, 22);
    const std::vector<double> gates = random_gates(gm.n_gates(), 23);
    const double lambda = 0.05;
    std::vector<double> grad;
    const LossValue v = calibration_loss_and_grad<double>(gm, tokens, kRows, gates, lambda, grad);
    EXPECT_GT(v.distill, 0.0);
    EXPECT_NEAR(v.total, v.distill + lambda * v.reg, 1e-15);
    auto loss = [&](const std::vector<double>& g) {
      std::vector<double> unused;
      return calibration_loss_and_grad<double>(gm, tokens, kRows, g, lambda, unused).total;
    };
    check_gradient(loss, gates, grad, "d loss / d gates", 0, 1e-6, 1e-7);
    // The distillation part alone (lambda 0) is a non-trivial share of the gradient.
    std::vector<double> g0;
    calibration_loss_and_grad<double>(gm, tokens, kRows, gates, 0.0, g0);
    double mag = 0;
    for (double x : g0) mag += std::fabs(x);
    EXPECT_GT(mag, 1e-4);
  }
}

// The logit-distillation loss (--loss kl) through the whole gated model: the LM head projection,
// the KL and the backward into the hidden states, against finite differences of the total loss.
TEST(CalibGatedModel, LogitLossGateGradientMatchesFiniteDifferences) {
  ThreadPool pool(2);
  for (const Variant& var : {kVariants[0], kVariants[3]}) {
    SCOPED_TRACE(var.name);
    auto model = Model::synthetic(tiny_config(var.style, var.bias), 24);
    FrozenWeights<double> w(*model, size_t(1) << 30, pool);
    GatedModel<double> gm(w, kWindow, pool);
    const auto tokens = random_tokens(kTokens, 64, 25);
    const std::vector<double> gates = random_gates(gm.n_gates(), 26);
    const double lambda = 0.05;
    std::vector<double> grad;
    const LossValue v = calibration_loss_and_grad<double>(gm, tokens, kRows, gates, lambda, grad, DistillTarget::Logits);
    EXPECT_GT(v.distill, 0.0);
    // Not the hidden-state L2 under another name.
    std::vector<double> g_l2;
    EXPECT_NE(calibration_loss_and_grad<double>(gm, tokens, kRows, gates, lambda, g_l2).distill, v.distill);
    auto loss = [&](const std::vector<double>& g) {
      std::vector<double> unused;
      return calibration_loss_and_grad<double>(gm, tokens, kRows, g, lambda, unused, DistillTarget::Logits).total;
    };
    check_gradient(loss, gates, grad, "d KL loss / d gates", 0, 1e-6, 1e-7);
    // All gates at 1: the gated model is the frozen one, so the KL is exactly 0.
    std::vector<double> ones(gates.size(), 1.0), g1;
    EXPECT_EQ(calibration_loss_and_grad<double>(gm, tokens, kRows, ones, 0.0, g1, DistillTarget::Logits).distill, 0.0);
  }
}

TEST(CalibGatedModel, EmbeddingGradientMatchesFiniteDifferences) {
  ThreadPool pool(2);
  for (const Variant& var : kVariants) {
    SCOPED_TRACE(var.name);
    auto model = Model::synthetic(tiny_config(var.style, var.bias), 31);
    FrozenWeights<double> w(*model, size_t(1) << 30, pool);
    GatedModel<double> gm(w, kWindow, pool);
    const auto tokens = random_tokens(kTokens, 64, 32);
    const int64_t E = 32, R = (int64_t)kRows.size();
    const std::vector<double> gates = {0.7, 0.25, 0.5, 0.9};
    const std::vector<double> x0 = gm.embed(tokens);
    std::vector<double> h_full(R * E), h_mix(R * E), d_mix(R * E);
    gm.forward_full(x0.data(), kTokens, kRows, h_full.data());
    auto loss = [&](const std::vector<double>& x) {
      std::vector<double> h(R * E), d(R * E);
      gm.forward_gated(x.data(), kTokens, gates, kRows, h.data());
      return distill_loss<double>(h_full.data(), h.data(), R, E, d.data());
    };
    gm.forward_gated(x0.data(), kTokens, gates, kRows, h_mix.data());
    distill_loss<double>(h_full.data(), h_mix.data(), R, E, d_mix.data());
    std::vector<double> d_gates(4, 0.0), d_x0(x0.size());
    gm.backward_gated(d_mix.data(), d_gates, d_x0.data());
    // Coordinates of tokens before, inside and after the streaming windows of the rows.
    check_gradient(loss, x0, d_x0, "d loss / d x0", 48, 1e-6, 1e-6);
    // Tokens after the last row cannot influence the loss.
    for (int64_t i = (kRows.back() + 1) * E; i < kTokens * E; ++i) ASSERT_EQ(d_x0[i], 0.0);
  }
}

// Final hidden states of the calibration forward, put through the LM head, against the
// inference engine's logits for the same tokens.
std::vector<float> logits_from_hidden(const Model& m, const std::vector<float>& h, int64_t rows, ThreadPool& pool) {
  const WeightView& out = m.weights().output;
  std::vector<float> w((size_t)(out.rows * out.cols)), logits((size_t)(rows * out.rows));
  for (int64_t r = 0; r < out.rows; ++r)
    std::copy_n(reinterpret_cast<const float*>(out.data + r * out.row_stride), out.cols, w.begin() + r * out.cols);
  gemm<float>(h.data(), out.cols, w.data(), out.cols, true, logits.data(), out.rows, rows, out.rows, out.cols, false,
              pool);
  return logits;
}

TEST(CalibGatedModel, ForwardMatchesInferenceFullAndStreaming) {
  ThreadPool pool(2);
  for (const Variant& var : kVariants) {
    SCOPED_TRACE(var.name);
    auto model = Model::synthetic(tiny_config(var.style, var.bias), 41);
    CpuForward cpu(*model);
    FrozenWeights<float> w(*model, size_t(1) << 30, pool);
    GatedModel<float> gm(w, kWindow, pool);
    const auto tokens = random_tokens(kTokens, 64, 42);
    std::vector<int64_t> rows(kTokens);
    for (int64_t i = 0; i < kTokens; ++i) rows[i] = i;
    const std::vector<float> x0 = gm.embed(tokens);
    const int64_t E = 32;
    for (HeadKind kind : {HeadKind::Retrieval, HeadKind::Streaming}) {
      std::vector<float> h((size_t)(kTokens * E));
      if (kind == HeadKind::Retrieval)
        gm.forward_full(x0.data(), kTokens, rows, h.data());
      else
        gm.forward_gated(x0.data(), kTokens, std::vector<float>(4, 0.0f), rows, h.data());
      const auto mine = logits_from_hidden(*model, h, kTokens, pool);
      auto cache = cpu.new_cache(HeadPlan::uniform(2, 2, kind, kWindow));
      std::vector<float> ref((size_t)(kTokens * 64));
      cpu.forward(*cache, tokens.data(), kTokens, ref.data(), pool, true, 48);
      double worst = 0;
      for (size_t i = 0; i < ref.size(); ++i) worst = std::max(worst, (double)std::fabs(mine[i] - ref[i]));
      EXPECT_LT(worst, 2e-3) << (kind == HeadKind::Retrieval ? "full" : "streaming");
    }
    // Gates at 1 reproduce the full model exactly.
    std::vector<float> hf(5 * E), hg(5 * E);
    gm.forward_full(x0.data(), kTokens, kRows, hf.data());
    gm.forward_gated(x0.data(), kTokens, std::vector<float>(4, 1.0f), kRows, hg.data());
    EXPECT_EQ(hf, hg);
  }
}

TEST(CalibGatedModel, ThreadCountDoesNotChangeTheGradient) {
  auto model = Model::synthetic(tiny_config(RopeStyle::Neox, true), 51);
  const auto tokens = random_tokens(200, 64, 52);
  const std::vector<double> gates = {0.6, 0.3, 0.95, 0.1};
  std::vector<double> g1, g3;
  LossValue v1, v3;
  {
    ThreadPool pool(1);
    FrozenWeights<float> w(*model, size_t(1) << 30, pool);
    GatedModel<float> gm(w, kWindow, pool);
    v1 = calibration_loss_and_grad<float>(gm, tokens, {150, 199}, gates, 0.05, g1);
  }
  {
    ThreadPool pool(3);
    FrozenWeights<float> w(*model, 0, pool);  // and layers dequantized on demand
    GatedModel<float> gm(w, kWindow, pool);
    EXPECT_FALSE(w.all_resident());
    v3 = calibration_loss_and_grad<float>(gm, tokens, {150, 199}, gates, 0.05, g3);
  }
  EXPECT_EQ(v1.total, v3.total);
  EXPECT_EQ(g1, g3);
}

// The float gradient of the real SmolLM2 (quantized weights, dequantized for calibration)
// agrees with the double one, and the float forward with the inference engine's logits.
TEST(CalibGatedModel, RealModelFloatAgreesWithDoubleAndInference) {
  DUO_REQUIRE_MODEL(path, test::kSmolLM2);
  auto model = Model::load(path);
  CpuForward cpu(*model);
  ThreadPool pool(2);
  constexpr int64_t n = 72;
  const auto tokens = random_tokens(n, 49152, 61);
  const std::vector<int64_t> rows = {60, 66, 71};
  const StreamingWindow win{4, 16};
  std::vector<double> gates((size_t)model->config().n_layers * model->config().n_kv_heads);
  std::mt19937_64 rng(62);
  std::uniform_real_distribution<double> ud(0.3, 1.0);
  for (auto& g : gates) g = ud(rng);
  std::vector<double> gf, gd;
  LossValue vf, vd;
  {
    FrozenWeights<float> w(*model, size_t(1) << 31, pool);
    GatedModel<float> gm(w, win, pool);
    vf = calibration_loss_and_grad<float>(gm, tokens, rows, gates, 0.05, gf);
    // logits of the full forward vs inference
    std::vector<int64_t> all(n);
    for (int i = 0; i < n; ++i) all[i] = i;
    const int64_t E = model->config().n_embd, V = model->config().n_vocab;
    std::vector<float> h((size_t)(n * E));
    const auto x0 = gm.embed(tokens);
    gm.forward_full(x0.data(), n, all, h.data());
    std::vector<float> wout((size_t)(V * E)), mine((size_t)(n * V)), ref((size_t)(n * V));
    const WeightView& out = model->weights().output;
    for (int64_t r = 0; r < V; ++r) dequantize_row(out.type, out.data + r * out.row_stride, wout.data() + r * E, E);
    gemm<float>(h.data(), E, wout.data(), E, true, mine.data(), V, n, V, E, false, pool);
    auto cache = cpu.new_cache(HeadPlan::uniform(model->config().n_layers, model->config().n_kv_heads,
                                                    HeadKind::Retrieval));
    cpu.forward(*cache, tokens.data(), n, ref.data(), pool, true);
    double worst = 0, scale = 0;
    for (size_t i = 0; i < ref.size(); ++i)
      worst = std::max(worst, (double)std::fabs(mine[i] - ref[i])), scale = std::max(scale, (double)std::fabs(ref[i]));
    EXPECT_LT(worst, 0.02 * scale) << "max |logit| " << scale;
    RecordProperty("logit_max_abs_diff", std::to_string(worst));
    RecordProperty("logit_max_abs", std::to_string(scale));
  }
  {
    FrozenWeights<double> w(*model, size_t(1) << 31, pool);
    GatedModel<double> gm(w, win, pool);
    vd = calibration_loss_and_grad<double>(gm, tokens, rows, gates, 0.05, gd);
  }
  EXPECT_NEAR(vf.distill, vd.distill, 1e-3 * vd.distill + 1e-9);
  double gmax = 0, err = 0;
  for (size_t i = 0; i < gd.size(); ++i) gmax = std::max(gmax, std::fabs(gd[i])), err = std::max(err, std::fabs(gf[i] - gd[i]));
  EXPECT_GT(gmax, 0.0);
  EXPECT_LT(err, 1e-3 * gmax) << "max |grad| " << gmax;
  RecordProperty("grad_float_vs_double_rel", std::to_string(err / gmax));
  RecordProperty("distill_float_vs_double", std::to_string(vf.distill) + " " + std::to_string(vd.distill));
}

}  // namespace
}  // namespace duo
