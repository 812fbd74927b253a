// Calibration's devices by name (calibrate/devices/calibration_devices.h): the CPU device is the
// CPU gated model with the options it was given, "cuda" without CUDA says how to build it, and
// unknown names are refused.
#include <gtest/gtest.h>

#include <random>

#include "calibrate/devices/calibration_devices.h"
#include "calibrate/frozen_weights.h"
#include "calibrate/gated_model.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "engine/backend.h"
#include "model/model.h"

namespace duo {
namespace {

ModelConfig tiny() {
  ModelConfig c;
  c.arch = "llama";
  c.name = "tiny";
  c.n_layers = 2;
  c.n_embd = 32;
  c.n_ff = 48;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 8;
  c.n_rot = 8;
  c.n_vocab = 64;
  c.n_ctx_train = 512;
  return c;
}

PasskeySample sample() {
  std::mt19937_64 rng(3);
  PasskeySample s;
  for (int i = 0; i < 120; ++i) s.tokens.push_back((int32_t)uniform_below(rng, 64));
  s.answer_mask.assign(120, 0);
  for (int i = 112; i < 120; ++i) s.loss_rows.push_back(i), s.answer_mask[i] = 1;
  return s;
}

TEST(CalibDevices, Names) {
  EXPECT_EQ(calibration_device_names(), (std::vector<std::string>{"cpu", "cuda"}));
}

TEST(CalibDevices, CpuDeviceIsTheGatedModelWithItsOptions) {
  auto model = Model::synthetic(tiny(), 11);
  ThreadPool pool(2);
  CalibrationDeviceOptions o;
  o.window = {4, 16};
  o.pool = &pool;
  o.weights_budget_bytes = 0;  // one layer at a time: must not change the numbers
  auto dev = make_calibration_device("cpu", *model, o);
  EXPECT_FALSE(dev->last_times().has_value());
  EXPECT_NE(dev->describe(120).find("one layer at a time"), std::string::npos) << dev->describe(120);

  const std::vector<double> gates = {0.9, 0.2, 0.5, 0.7};
  std::vector<double> grad, want_grad;
  const LossValue got = dev->loss_backend(0.05, DistillTarget::Logits)(sample(), gates, grad);

  // The reference: the CPU gated model built here with the same window, all weights resident.
  FrozenWeights<float> w(*model, size_t(1) << 30, pool);
  GatedModel<float> gm(w, StreamingWindow{4, 16}, pool);
  const LossValue want = cpu_loss_backend(gm, 0.05, DistillTarget::Logits)(sample(), gates, want_grad);
  EXPECT_EQ(got.total, want.total);
  EXPECT_EQ(grad, want_grad);
  EXPECT_EQ(dev->activation_bytes(120), gm.activation_bytes(120));

  // The window reaches the device: another one gives another loss.
  GatedModel<float> other(w, StreamingWindow{4, 64}, pool);
  std::vector<double> g2;
  EXPECT_NE(cpu_loss_backend(other, 0.05, DistillTarget::Logits)(sample(), gates, g2).total, got.total);
}

TEST(CalibDevices, UnknownAndUnavailableDevices) {
  auto model = Model::synthetic(tiny(), 11);
  ThreadPool pool(1);
  CalibrationDeviceOptions o;
  o.pool = &pool;
  try {
    make_calibration_device("tpu", *model, o);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("expected cpu or cuda"), std::string::npos) << e.what();
  }
  if (cuda_compiled()) GTEST_SKIP() << "this build has the CUDA calibration (tested by duo_cuda_tests)";
  try {
    make_calibration_device("cuda", *model, o);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("DUO_CUDA=ON"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace duo
