// The device seam of calibration: what `duo calibrate` needs from whatever runs the gated model
// (its loss and gate gradient, a description, memory and phase times), free of any device's
// types. The CPU gated model (cpu_calibration.cpp) and the CUDA one (cuda/cuda_calibration.cpp)
// implement it; calibrate/devices/calibration_devices.h picks one by the device's name.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "calibrate/calibrator.h"
#include "duo/head_plan.h"

namespace duo {

class Model;
class ThreadPool;

struct CalibrationDeviceOptions {
  StreamingWindow window{128, 256};  // streaming attention during calibration (sink, recent)
  // CPU: the threads, and how many bytes of dense (dequantized) weights stay resident (above
  // it layers are dequantized as the passes reach them). Other devices ignore both.
  ThreadPool* pool = nullptr;
  size_t weights_budget_bytes = size_t(4096) << 20;
};

// Milliseconds of one loss evaluation's phases.
struct CalibrationPhaseTimes {
  double full_forward = 0, gated_forward = 0, backward = 0, total = 0;
};

class CalibrationDevice {
 public:
  virtual ~CalibrationDevice() = default;
  // The Calibrator's loss backend; valid while this object lives.
  virtual LossBackend loss_backend(double lambda, DistillTarget target) = 0;
  // For the run's log: what runs the gated model and the memory it takes at samples of up to
  // max_len tokens.
  virtual std::string describe(int64_t max_len) const = 0;
  // Bytes of activations for a sample of n tokens.
  virtual size_t activation_bytes(int64_t n) const = 0;
  // The phases of the last loss evaluation, where the device times them (none on the CPU).
  virtual std::optional<CalibrationPhaseTimes> last_times() const { return std::nullopt; }
};

// The CPU gated model over the model's weights (options.pool is required).
std::unique_ptr<CalibrationDevice> make_cpu_calibration(const Model& model, const CalibrationDeviceOptions& options);

}  // namespace duo
