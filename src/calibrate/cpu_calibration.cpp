// make_cpu_calibration (calibrate/calibration_device.h): the CPU gated model over dense copies
// of the frozen weights.
#include <fmt/format.h>

#include "calibrate/calibration_device.h"
#include "calibrate/frozen_weights.h"
#include "calibrate/gated_model.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "model/model.h"

namespace duo {

namespace {

class CpuCalibration final : public CalibrationDevice {
 public:
  CpuCalibration(const Model& model, const CalibrationDeviceOptions& o)
      : n_layers_(model.config().n_layers),
        pool_(*o.pool),
        weights_(model, o.weights_budget_bytes, pool_),
        gm_(weights_, o.window, pool_) {}

  LossBackend loss_backend(double lambda, DistillTarget target) override {
    return cpu_loss_backend(gm_, lambda, target);
  }
  std::string describe(int64_t max_len) const override {
    return fmt::format("memory: dense weights {:.0f} MiB ({}), activations at {} tokens ~{:.0f} MiB; {} threads",
                       weights_.layer_bytes() * (weights_.all_resident() ? n_layers_ : 1) / 1048576.0,
                       weights_.all_resident() ? "all layers resident" : "one layer at a time", max_len,
                       gm_.activation_bytes(max_len) / 1048576.0, pool_.size());
  }
  size_t activation_bytes(int64_t n) const override { return gm_.activation_bytes(n); }

 private:
  int n_layers_;
  ThreadPool& pool_;
  FrozenWeights<float> weights_;
  GatedModel<float> gm_;
};

}  // namespace

std::unique_ptr<CalibrationDevice> make_cpu_calibration(const Model& model, const CalibrationDeviceOptions& options) {
  DUO_CHECK(options.pool != nullptr, "the CPU calibration needs a thread pool");
  return std::make_unique<CpuCalibration>(model, options);
}

}  // namespace duo
