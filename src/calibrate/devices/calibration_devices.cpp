#include "calibrate/devices/calibration_devices.h"

#include <fmt/ranges.h>

#include <utility>

#include "calibrate/cuda_calibration.h"
#include "core/error.h"

namespace duo {

namespace {

using Factory = std::unique_ptr<CalibrationDevice> (*)(const Model&, const CalibrationDeviceOptions&);

// Every device, once. make_cuda_calibration is the stub in a build without CUDA: the name stays
// known and choosing it says how to get it.
const std::vector<std::pair<std::string, Factory>>& devices() {
  static const std::vector<std::pair<std::string, Factory>> table = {{"cpu", &make_cpu_calibration},
                                                                     {"cuda", &make_cuda_calibration}};
  return table;
}

}  // namespace

const std::vector<std::string>& calibration_device_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> n;
    for (const auto& d : devices()) n.push_back(d.first);
    return n;
  }();
  return names;
}

std::unique_ptr<CalibrationDevice> make_calibration_device(const std::string& name, const Model& model,
                                                           const CalibrationDeviceOptions& options) {
  for (const auto& [known, make] : devices())
    if (known == name) return make(model, options);
  fail("unknown calibration device '{}' (expected {})", name, fmt::join(calibration_device_names(), " or "));
}

}  // namespace duo
