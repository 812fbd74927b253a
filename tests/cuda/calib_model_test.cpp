// The CUDA calibration backend (CudaGatedModel) against the CPU gated model (GatedModel<float>,
// itself checked against finite differences in double): the loss and the gate gradient on tiny
// random models (both RoPE styles, QKV bias, GQA, gates at exactly 0 and 1 among them) and on
// SmolLM2 with a short sample, the exactness of gates at 1, determinism, and a 3-step
// calibration giving close gates on both devices.
//
// The GPU keeps bf16 weights and rounds GEMM and attention operands to bf16; the CPU works in
// fp32 on the dequantized weights. bench/calib_bf16_emulation.cpp (the CPU model with the CUDA
// backend's rounding points, no GPU) predicts for these very samples:
//   tiny (4 variants + gates at 0/1)  distill rel <= 6.2e-3, gradient rel L2 <= 4.7e-3, hidden rel RMS <= 1.1e-2
//   SmolLM2, 300 tokens               distill rel 2.2e-2,    gradient rel L2 1.9e-2,    hidden rel RMS 4.6e-3
// to which the attention kernels' internal rounding adds ~1e-3 (tests/calibrate/
// flash_cuda_emulation_test.cpp). Tolerances (about 5x the prediction, 10x for the gradient):
//   tiny      gradient 0.05, distill 0.03, hidden rel RMS 0.05
//   SmolLM2   gradient 0.10, distill 0.10, hidden rel RMS 0.03
// Every comparison prints what it measured.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <random>

#include "calibrate/calibrator.h"
#include "calibrate/cuda/cuda_gated_model.h"
#include "calibrate/gated_model.h"
#include "calibrate/gated_model_fixtures.h"
#include "calibrate/loss.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "cuda_test_util.h"
#include "model/model.h"
#include "test_support.h"

namespace duo::cuda::calib {
namespace {

using namespace duo::calib_fixtures;

struct GradCompare {
  double rel_l2 = 0, max_rel = 0, cosine = 0;
};

GradCompare compare_grads(const std::vector<double>& got, const std::vector<double>& want) {
  GradCompare c;
  double num = 0, den = 0, dot = 0, gg = 0, mx = 0, scale = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double d = got[i] - want[i];
    num += d * d, den += want[i] * want[i], dot += got[i] * want[i], gg += got[i] * got[i];
    mx = std::max(mx, std::fabs(d)), scale = std::max(scale, std::fabs(want[i]));
  }
  c.rel_l2 = std::sqrt(num / std::max(den, 1e-300));
  c.max_rel = mx / std::max(scale, 1e-300);
  c.cosine = dot / std::sqrt(std::max(den * gg, 1e-300));
  return c;
}

double rel_rms(const std::vector<float>& got, const std::vector<float>& want) {
  return test::error_stats(got.data(), want.data(), want.size()).rel_rms;
}

struct Tolerance {
  double grad_rel_l2, distill_rel, hidden_rel_rms;
};

// Loss, gradient and hidden states of both backends on one sample; prints and checks.
void compare_backends(const Model& model, const std::vector<int32_t>& tokens, const std::vector<int64_t>& rows,
                      const std::vector<double>& gates, StreamingWindow win, const Tolerance& tol,
                      const std::string& what, DistillTarget target = DistillTarget::Hidden) {
  ThreadPool pool(4);
  FrozenWeights<float> w(model, size_t(1) << 32, pool);
  GatedModel<float> cpu(w, win, pool);
  CudaGatedModel gpu(model, win);
  gpu.set_sync_checks(true);  // a failing op names itself
  const double lambda = 0.05;
  std::vector<double> g_cpu, g_gpu;
  const LossValue v_cpu = calibration_loss_and_grad<float>(cpu, tokens, rows, gates, lambda, g_cpu, target);
  const LossValue v_gpu = gpu.loss_and_grad(tokens, rows, gates, lambda, g_gpu, target);
  ASSERT_EQ(g_gpu.size(), g_cpu.size());
  // Hidden states of the gated forward at the rows.
  const int64_t E = model.config().n_embd;
  std::vector<float> h_cpu(rows.size() * E), h_gpu;
  const std::vector<float> x0 = cpu.embed(tokens);
  cpu.forward_gated(x0.data(), (int64_t)tokens.size(), std::vector<float>(gates.begin(), gates.end()), rows,
                    h_cpu.data());
  gpu.forward_gated(tokens, gates, rows, h_gpu);
  const double h_err = rel_rms(h_gpu, h_cpu);
  const GradCompare gc = compare_grads(g_gpu, g_cpu);
  const double d_err = std::fabs(v_gpu.distill - v_cpu.distill) / std::max(v_cpu.distill, 1e-300);
  std::printf(
      "  %-40s distill cpu %.6g gpu %.6g (rel %.2e) | grad rel L2 %.2e, max %.2e of max, cos %.6f | "
      "hidden rel RMS %.2e\n",
      what.c_str(), v_cpu.distill, v_gpu.distill, d_err, gc.rel_l2, gc.max_rel, gc.cosine, h_err);
  EXPECT_GT(v_cpu.distill, 0.0) << what;
  EXPECT_LE(d_err, tol.distill_rel) << what;
  EXPECT_LE(gc.rel_l2, tol.grad_rel_l2) << what;
  EXPECT_LE(h_err, tol.hidden_rel_rms) << what;
  EXPECT_NEAR(v_gpu.reg, v_cpu.reg, 1e-12) << what;
  for (size_t i = 0; i < g_cpu.size(); ++i)
    if (gc.rel_l2 > tol.grad_rel_l2) std::printf("    gate %2zu: cpu %+.6e gpu %+.6e\n", i, g_cpu[i], g_gpu[i]);
}

struct Variant {
  RopeStyle style;
  bool bias;
  int head_dim;
  const char* name;
};
const Variant kVariants[] = {{RopeStyle::Interleaved, false, 64, "interleaved, no bias, d 64"},
                             {RopeStyle::Interleaved, true, 128, "interleaved, bias, d 128"},
                             {RopeStyle::Neox, false, 128, "neox, no bias, d 128"},
                             {RopeStyle::Neox, true, 64, "neox, bias, d 64"}};

TEST(CalibCudaModel, TinyModelLossAndGradientMatchCpu) {
  for (const Variant& var : kVariants) {
    SCOPED_TRACE(var.name);
    auto model = Model::synthetic(tiny(var.style, var.bias, var.head_dim), 21);
    const auto tokens = random_tokens(kTokens, 64, 22);
    std::mt19937_64 rng(23);
    std::uniform_real_distribution<double> ud(0.2, 0.9);
    std::vector<double> gates(4);
    for (auto& g : gates) g = ud(rng);
    compare_backends(*model, tokens, kRows, gates, kWindow, {0.05, 0.03, 0.05}, var.name);
  }
}

// The logit-distillation loss (--loss kl): LM head GEMMs on the GPU, KL on the host.
TEST(CalibCudaModel, TinyModelLogitLossMatchesCpu) {
  for (const Variant& var : {kVariants[0], kVariants[3]}) {
    SCOPED_TRACE(var.name);
    auto model = Model::synthetic(tiny(var.style, var.bias, var.head_dim), 27);
    const auto tokens = random_tokens(kTokens, 64, 28);
    compare_backends(*model, tokens, kRows, {0.7, 0.2, 0.5, 0.9}, kWindow, {0.05, 0.03, 0.05}, var.name,
                     DistillTarget::Logits);
  }
  auto model = Model::synthetic(tiny(RopeStyle::Neox, true, 128), 29);
  CudaGatedModel gpu(*model, kWindow);
  std::vector<double> grad;
  const LossValue v = gpu.loss_and_grad(random_tokens(kTokens, 64, 30), kRows, std::vector<double>(4, 1.0), 0.05, grad,
                                        DistillTarget::Logits);
  EXPECT_EQ(v.distill, 0.0);  // every gate 1: the gated model is the frozen one
}

// Gates at exactly 0 and 1 skip a branch's attention backward for that head (a zero gradient):
// the result must still match the CPU, which computes those zeros.
TEST(CalibCudaModel, GatesAtZeroAndOneMatchCpu) {
  auto model = Model::synthetic(tiny(RopeStyle::Neox, true, 64), 31);
  const auto tokens = random_tokens(kTokens, 64, 32);
  compare_backends(*model, tokens, kRows, {0.0, 1.0, 0.4, 0.0}, kWindow, {0.05, 0.03, 0.05}, "gates 0, 1, 0.4, 0");
  compare_backends(*model, tokens, kRows, {1.0, 1.0, 0.0, 0.7}, kWindow, {0.05, 0.03, 0.05}, "gates 1, 1, 0, 0.7");
  compare_backends(*model, tokens, kRows, {0.0, 0.0, 0.0, 0.0}, kWindow, {0.05, 0.03, 0.05}, "all gates 0");
}

// Every gate at 1: the gated forward is the full forward bit for bit, so the distillation loss
// and its gradient are exactly 0 and the gradient is the L1 term alone.
TEST(CalibCudaModel, GatesAtOneReproduceTheFullModelExactly) {
  auto model = Model::synthetic(tiny(RopeStyle::Interleaved, true, 128), 41);
  CudaGatedModel gpu(*model, kWindow);
  const auto tokens = random_tokens(kTokens, 64, 42);
  const std::vector<double> ones(4, 1.0);
  std::vector<float> hf, hg;
  gpu.forward_full(tokens, kRows, hf);
  gpu.forward_gated(tokens, ones, kRows, hg);
  EXPECT_EQ(hf, hg);
  std::vector<double> grad;
  const LossValue v = gpu.loss_and_grad(tokens, kRows, ones, 0.05, grad);
  EXPECT_EQ(v.distill, 0.0);
  for (double g : grad) EXPECT_DOUBLE_EQ(g, 0.05 / 4);
}

// The same inputs give the same bits (no atomics anywhere), also after a longer sample grew the
// buffers in between.
TEST(CalibCudaModel, LossAndGradientAreDeterministic) {
  auto model = Model::synthetic(tiny(RopeStyle::Neox, true, 128), 51);
  CudaGatedModel gpu(*model, kWindow);
  const std::vector<double> gates = {0.6, 0.3, 0.95, 0.1};
  const auto tokens = random_tokens(kTokens, 64, 52);
  std::vector<double> g1, g2, g3;
  const LossValue v1 = gpu.loss_and_grad(tokens, kRows, gates, 0.05, g1);
  const LossValue v2 = gpu.loss_and_grad(tokens, kRows, gates, 0.05, g2);
  gpu.loss_and_grad(random_tokens(5000, 64, 53), {4000, 4999}, gates, 0.05, g3);
  std::vector<double> g4;
  const LossValue v4 = gpu.loss_and_grad(tokens, kRows, gates, 0.05, g4);
  EXPECT_EQ(v1.total, v2.total);
  EXPECT_EQ(g1, g2);
  EXPECT_EQ(v1.total, v4.total);
  EXPECT_EQ(g1, g4);
  // Positions after the last row do not matter (causality): a longer tail changes nothing.
  auto longer = tokens;
  for (int i = 0; i < 50; ++i) longer.push_back(i % 64);
  std::vector<double> g5;
  const LossValue v5 = gpu.loss_and_grad(longer, kRows, gates, 0.05, g5);
  EXPECT_EQ(v1.total, v5.total);
  EXPECT_EQ(g1, g5);
}

TEST(CalibCudaModel, RejectsBadInput) {
  auto model = Model::synthetic(tiny(RopeStyle::Neox, false, 64), 61);
  CudaGatedModel gpu(*model, kWindow);
  const auto tokens = random_tokens(100, 64, 62);
  std::vector<double> grad;
  const std::vector<double> gates(4, 0.5);
  EXPECT_THROW(gpu.loss_and_grad(tokens, {}, gates, 0.05, grad), Error);         // no rows
  EXPECT_THROW(gpu.loss_and_grad(tokens, {100}, gates, 0.05, grad), Error);      // row past the end
  EXPECT_THROW(gpu.loss_and_grad(tokens, {5, 5}, gates, 0.05, grad), Error);     // repeated row
  EXPECT_THROW(gpu.loss_and_grad(tokens, {50}, {0.5, 0.5}, 0.05, grad), Error);  // wrong gate count
  auto bad = tokens;
  bad[3] = 64;
  EXPECT_THROW(gpu.loss_and_grad(bad, {50}, gates, 0.05, grad), Error);          // token outside vocab
  EXPECT_THROW(gpu.backward_gated(std::vector<float>(128, 0.0f), grad), Error);  // no forward_gated yet
  auto odd = tiny(RopeStyle::Neox, false, 64);
  odd.head_dim = 32, odd.n_rot = 32;  // the attention kernels take 64 or 128
  auto odd_model = Model::synthetic(odd, 1);
  EXPECT_THROW({ CudaGatedModel g(*odd_model, kWindow); }, Error);
  EXPECT_THROW({ CudaGatedModel g(*model, StreamingWindow{4, 0}); }, Error);
  // qwen3's per-head q/k norm has no gradient here: refused, naming the architecture.
  auto qwen3 = Model::load(duo::test::fixture_path("hf/tiny-qwen3-d64"));
  try {
    CudaGatedModel g(*qwen3, kWindow);
    ADD_FAILURE() << "qwen3 was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("qwen3"), std::string::npos) << e.what();
  }
}

// SmolLM2 (30 layers, 9 / 3 heads, d 64, quantized weights) on a 300-token sample.
TEST(CalibCudaModel, SmolLM2MatchesCpu) {
  DUO_REQUIRE_MODEL(path, duo::test::kSmolLM2);
  auto model = Model::load(path);
  const ModelConfig& c = model->config();
  const auto tokens = random_tokens(300, c.n_vocab, 71);
  std::vector<int64_t> rows = {150};
  for (int64_t r = 280; r < 300; ++r) rows.push_back(r);
  std::vector<double> gates((size_t)c.n_layers * c.n_kv_heads);
  std::mt19937_64 rng(72);
  std::uniform_real_distribution<double> ud(0.3, 1.0);
  for (auto& g : gates) g = ud(rng);
  compare_backends(*model, tokens, rows, gates, {16, 64}, {0.10, 0.10, 0.03}, "SmolLM2, 300 tokens");
}

// Three calibration steps on each device from the same samples: the losses agree and so do the
// gates. AdamW's first steps move every gate by about lr whatever the gradient's size, so the
// gates agree where the gradients' signs do: gates start at 0.5 with lambda 0 (no L1 term to
// cancel against), where the distillation gradient is large and its sign clear.
TEST(CalibCudaModel, ThreeStepCalibrationMatchesCpu) {
  auto model = Model::synthetic(tiny(RopeStyle::Neox, true, 64), 81);
  CalibrationConfig cfg;
  cfg.steps = 3;
  cfg.lambda = 0.0;
  cfg.adamw.lr = 0.02;
  cfg.window = kWindow;
  cfg.init_gate = 0.5;
  cfg.seed = 9;
  RandomSamples data;
  ThreadPool pool(4);
  FrozenWeights<float> w(*model, size_t(1) << 30, pool);
  GatedModel<float> cpu_model(w, cfg.window, pool);
  CudaGatedModel gpu_model(*model, cfg.window);
  LossBackend gpu_loss = [&](const PasskeySample& s, const std::vector<double>& g, std::vector<double>& grad) {
    return gpu_model.loss_and_grad(s.tokens, s.loss_rows, g, cfg.lambda, grad);
  };
  Calibrator cpu(2, 2, data, cpu_loss_backend(cpu_model, cfg.lambda), cfg);
  Calibrator gpu(2, 2, data, gpu_loss, cfg);
  while (!cpu.done()) {
    const StepReport a = cpu.step(), b = gpu.step();
    ASSERT_EQ(a.tokens, b.tokens);
    std::printf("  step %lld: loss cpu %.6g gpu %.6g\n", (long long)a.step, a.loss.total, b.loss.total);
    EXPECT_NEAR(b.loss.distill, a.loss.distill, 0.02 * a.loss.distill) << "step " << a.step;
  }
  const auto& gc = cpu.state().gates;
  const auto& gg = gpu.state().gates;
  double worst = 0;
  int moved = 0;
  for (size_t i = 0; i < gc.size(); ++i) {
    worst = std::max(worst, std::fabs(gc[i] - gg[i]));
    moved += std::fabs(gc[i] - 0.5) > 0.01;
    std::printf("  gate %zu: cpu %.6f gpu %.6f\n", i, gc[i], gg[i]);
  }
  EXPECT_GT(moved, 0);
  EXPECT_LT(worst, 2e-3) << "3 steps of lr 0.02 move a gate by up to 0.06";
}

}  // namespace
}  // namespace duo::cuda::calib
