// make_cuda_calibration (calibrate/cuda_calibration.h): the CalibrationDevice over CudaGatedModel.
#include "calibrate/cuda_calibration.h"

#include <fmt/format.h>

#include "backend/cuda/cuda_backend.h"
#include "calibrate/cuda/cuda_gated_model.h"

namespace duo {

namespace {

class CudaCalibration final : public CalibrationDevice {
 public:
  CudaCalibration(const Model& model, StreamingWindow window) : device_(cuda::device_info()), gm_(model, window) {}

  LossBackend loss_backend(double lambda, DistillTarget target) override {
    return [this, lambda, target](const PasskeySample& s, const std::vector<double>& gates, std::vector<double>& grad) {
      return gm_.loss_and_grad(s.tokens, s.loss_rows, gates, lambda, grad, target);
    };
  }
  std::string describe(int64_t max_len) const override {
    return fmt::format("device: {} ({} SMs, {:.1f} GiB), bf16 weights {:.2f} GiB; activations at {} tokens ~{:.2f} GiB",
                       device_.name, device_.sm_count, device_.total_memory / 1073741824.0,
                       gm_.weight_bytes() / 1073741824.0, max_len, activation_bytes(max_len) / 1073741824.0);
  }
  size_t activation_bytes(int64_t n) const override { return gm_.activation_bytes(n); }
  std::optional<CalibrationPhaseTimes> last_times() const override {
    const cuda::calib::PhaseTimes& t = gm_.last_times();
    return CalibrationPhaseTimes{t.full_forward, t.gated_forward, t.backward, t.total};
  }

 private:
  cuda::DeviceInfo device_;
  cuda::calib::CudaGatedModel gm_;
};

}  // namespace

std::unique_ptr<CalibrationDevice> make_cuda_calibration(const Model& model, const CalibrationDeviceOptions& options) {
  return std::make_unique<CudaCalibration>(model, options.window);
}

}  // namespace duo
