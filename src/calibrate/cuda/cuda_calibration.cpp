// make_cuda_calibration (calibrate/cuda_calibration.h) over CudaGatedModel.
#include "calibrate/cuda_calibration.h"

#include <fmt/format.h>

#include "backend/cuda/cuda_backend.h"
#include "calibrate/cuda/cuda_gated_model.h"

namespace duo {

namespace {

class CudaCalibrationImpl final : public CudaCalibration {
 public:
  CudaCalibrationImpl(const Model& model, StreamingWindow window) : device_(cuda::device_info()), gm_(model, window) {}

  LossBackend loss_backend(double lambda, DistillTarget target) override {
    return [this, lambda, target](const PasskeySample& s, const std::vector<double>& gates, std::vector<double>& grad) {
      return gm_.loss_and_grad(s.tokens, s.loss_rows, gates, lambda, grad, target);
    };
  }
  std::string description() const override {
    return fmt::format("{} ({} SMs, {:.1f} GiB), bf16 weights {:.2f} GiB", device_.name, device_.sm_count,
                       device_.total_memory / 1073741824.0, gm_.weight_bytes() / 1073741824.0);
  }
  size_t activation_bytes(int64_t n) const override { return gm_.activation_bytes(n); }
  void last_times(double& full_fwd, double& gated_fwd, double& backward, double& total) const override {
    const cuda::calib::PhaseTimes& t = gm_.last_times();
    full_fwd = t.full_forward, gated_fwd = t.gated_forward, backward = t.backward, total = t.total;
  }

 private:
  cuda::DeviceInfo device_;
  cuda::calib::CudaGatedModel gm_;
};

}  // namespace

std::unique_ptr<CudaCalibration> make_cuda_calibration(const Model& model, StreamingWindow window) {
  return std::make_unique<CudaCalibrationImpl>(model, window);
}

}  // namespace duo
