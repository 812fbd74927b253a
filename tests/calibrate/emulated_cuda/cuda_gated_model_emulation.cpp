// CudaGatedModel (the CUDA calibration backend) run end to end on the CPU: its host code as
// built for the GPU (src/calibrate/cuda/cuda_gated_model.cpp, backend/cuda's GpuWeights, Gemm,
// DeviceBuffer) over a fake CUDA runtime and cuBLAS (fake_cuda.cpp), its kernels from their own
// source under the device emulation (emulated_launchers.cpp). Against the CPU gated model, as
// tests/cuda/calib_model_test.cpp does on the GPU, on the same tiny models and samples: this
// checks the orchestration (buffers, strides, GEMM layouts, the order of ops, the schedule) before
// any GPU run. The fake cuBLAS and backend kernels round where the real ones do, so the errors are
// those the GPU should show; the limits are the GPU test's.
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
#include "model/model.h"

namespace duo::cuda::calib {
namespace {

using namespace duo::calib_fixtures;

void compare(const Model& model, const std::vector<int32_t>& tokens, const std::vector<double>& gates,
             const std::string& what, DistillTarget target = DistillTarget::Hidden) {
  ThreadPool pool(2);
  FrozenWeights<float> w(model, size_t(1) << 30, pool);
  GatedModel<float> cpu(w, kWindow, pool);
  CudaGatedModel gpu(model, kWindow);
  std::vector<double> g_cpu, g_gpu;
  const LossValue v_cpu = calibration_loss_and_grad<float>(cpu, tokens, kRows, gates, 0.05, g_cpu, target);
  const LossValue v_gpu = gpu.loss_and_grad(tokens, kRows, gates, 0.05, g_gpu, target);
  ASSERT_EQ(g_gpu.size(), g_cpu.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < g_cpu.size(); ++i) num += (g_gpu[i] - g_cpu[i]) * (g_gpu[i] - g_cpu[i]), den += g_cpu[i] * g_cpu[i];
  const double grad_rel = std::sqrt(num / den);
  const double d_rel = std::fabs(v_gpu.distill - v_cpu.distill) / v_cpu.distill;
  std::printf("  %-36s distill cpu %.6g emulated gpu %.6g (rel %.2e) | grad rel L2 %.2e\n", what.c_str(),
              v_cpu.distill, v_gpu.distill, d_rel, grad_rel);
  EXPECT_LE(d_rel, 0.03) << what;
  EXPECT_LE(grad_rel, 0.05) << what;
  EXPECT_NEAR(v_gpu.reg, v_cpu.reg, 1e-12) << what;
  if (grad_rel > 0.05)
    for (size_t i = 0; i < g_cpu.size(); ++i) std::printf("    gate %zu: cpu %+.6e gpu %+.6e\n", i, g_cpu[i], g_gpu[i]);
}

TEST(CalibCudaModelEmulation, TinyModelsMatchCpu) {
  const struct {
    RopeStyle style;
    bool bias;
    int head_dim;
    const char* name;
  } variants[] = {{RopeStyle::Interleaved, false, 64, "interleaved, no bias, d 64"},
                  {RopeStyle::Interleaved, true, 128, "interleaved, bias, d 128"},
                  {RopeStyle::Neox, false, 128, "neox, no bias, d 128"},
                  {RopeStyle::Neox, true, 64, "neox, bias, d 64"}};
  for (const auto& v : variants) {
    SCOPED_TRACE(v.name);
    auto model = Model::synthetic(tiny(v.style, v.bias, v.head_dim), 21);
    std::mt19937_64 rng(23);
    std::uniform_real_distribution<double> ud(0.2, 0.9);
    std::vector<double> gates(4);
    for (auto& g : gates) g = ud(rng);
    compare(*model, random_tokens(kTokens, 64, 22), gates, v.name);
  }
}

// --loss kl: the LM head GEMMs (bf16, the gated rows as a difference from the frozen ones), the
// host KL and the backward GEMM, against the CPU model.
TEST(CalibCudaModelEmulation, LogitLossMatchesCpu) {
  auto model = Model::synthetic(tiny(RopeStyle::Neox, true, 64), 27);
  compare(*model, random_tokens(kTokens, 64, 28), {0.7, 0.2, 0.5, 0.9}, "kl, neox, bias, d 64", DistillTarget::Logits);
}

TEST(CalibCudaModelEmulation, GatesAtZeroAndOneMatchCpu) {
  auto model = Model::synthetic(tiny(RopeStyle::Neox, true, 64), 31);
  const auto tokens = random_tokens(kTokens, 64, 32);
  compare(*model, tokens, {0.0, 1.0, 0.4, 0.0}, "gates 0, 1, 0.4, 0");
  compare(*model, tokens, {1.0, 1.0, 0.0, 0.7}, "gates 1, 1, 0, 0.7");
  compare(*model, tokens, {0.0, 0.0, 0.0, 0.0}, "all gates 0");
}

TEST(CalibCudaModelEmulation, GatesAtOneAreExactAndStepsDeterministic) {
  auto model = Model::synthetic(tiny(RopeStyle::Interleaved, true, 64), 41);
  CudaGatedModel gpu(*model, kWindow);
  const auto tokens = random_tokens(kTokens, 64, 42);
  std::vector<float> hf, hg;
  gpu.forward_full(tokens, kRows, hf);
  gpu.forward_gated(tokens, std::vector<double>(4, 1.0), kRows, hg);
  EXPECT_EQ(hf, hg);
  std::vector<double> grad;
  EXPECT_EQ(gpu.loss_and_grad(tokens, kRows, std::vector<double>(4, 1.0), 0.05, grad).distill, 0.0);
  for (double g : grad) EXPECT_DOUBLE_EQ(g, 0.05 / 4);
  const std::vector<double> gates = {0.6, 0.3, 0.95, 0.1};
  std::vector<double> g1, g2;
  const double l1 = gpu.loss_and_grad(tokens, kRows, gates, 0.05, g1).total;
  gpu.loss_and_grad(random_tokens(300, 64, 43), {299}, gates, 0.05, g2);  // other shapes in between
  const double l2 = gpu.loss_and_grad(tokens, kRows, gates, 0.05, g2).total;
  EXPECT_EQ(l1, l2);
  EXPECT_EQ(g1, g2);
  EXPECT_THROW(gpu.loss_and_grad(tokens, {5, 5}, gates, 0.05, grad), Error);
}

// Three calibration steps from the same samples on both backends: the same gates to 2e-3.
TEST(CalibCudaModelEmulation, ThreeStepCalibrationMatchesCpu) {
  auto model = Model::synthetic(tiny(RopeStyle::Neox, true, 64), 81);
  CalibrationConfig cfg;
  cfg.steps = 3;
  cfg.lambda = 0.0;
  cfg.adamw.lr = 0.02;
  cfg.window = kWindow;
  cfg.init_gate = 0.5;
  cfg.seed = 9;
  RandomSamples data;
  ThreadPool pool(2);
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
    EXPECT_NEAR(b.loss.distill, a.loss.distill, 0.02 * a.loss.distill) << "step " << a.step;
  }
  for (size_t i = 0; i < 4; ++i) {
    std::printf("  gate %zu: cpu %.6f emulated gpu %.6f\n", i, cpu.state().gates[i], gpu.state().gates[i]);
    EXPECT_NEAR(gpu.state().gates[i], cpu.state().gates[i], 2e-3) << "gate " << i;
    EXPECT_GT(std::fabs(cpu.state().gates[i] - 0.5), 0.01) << "gate " << i << " did not move";
  }
}

}  // namespace
}  // namespace duo::cuda::calib
