// The CUDA calibration device (src/calibrate/cuda/, compiled with -DDUO_CUDA=ON): the gated
// model's forward and backward on one GPU (calibrate/cuda/cuda_gated_model.h), behind the
// device-neutral CalibrationDevice (calibration_device.h). Without CUDA the factory is a stub
// (cuda_calibration_stub.cpp) that fails saying how to build it. Callers pick devices by name
// through calibrate/devices/calibration_devices.h, not through this header.
#pragma once
#include <memory>

#include "calibrate/calibration_device.h"

namespace duo {

// Uploads the model's weights (bf16) to the current GPU; options.window is the streaming
// attention of calibration.
std::unique_ptr<CalibrationDevice> make_cuda_calibration(const Model& model, const CalibrationDeviceOptions& options);

}  // namespace duo
