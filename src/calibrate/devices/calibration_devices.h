// Where `duo calibrate` picks the device that runs the gated model: one table from a device's
// name ("cpu", "cuda") to its CalibrationDevice factory (calibrate/calibration_device.h). A layer
// of its own (duo_calibrate_devices), above the CPU calibration and, with CUDA, the CUDA one.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "calibrate/calibration_device.h"

namespace duo {

// The names make_calibration_device knows, in the order a help text lists them.
const std::vector<std::string>& calibration_device_names();
// The device of that name over the model. Fails on an unknown name, and for "cuda" in a build
// without CUDA (saying how to build with it).
std::unique_ptr<CalibrationDevice> make_calibration_device(const std::string& name, const Model& model,
                                                           const CalibrationDeviceOptions& options);

}  // namespace duo
