// make_cuda_calibration of a build without the CUDA backend (the real one is in
// src/calibrate/cuda/cuda_calibration.cpp, compiled with -DDUO_CUDA=ON).
#ifndef DUO_HAVE_CUDA
#include "calibrate/cuda_calibration.h"
#include "core/error.h"

namespace duo {

std::unique_ptr<CalibrationDevice> make_cuda_calibration(const Model&, const CalibrationDeviceOptions&) {
  fail(
      "device 'cuda' is not available: this duo was built without the CUDA backend "
      "(configure with -DDUO_CUDA=ON on a machine with nvcc, e.g. cmake -S . -B build -DDUO_CUDA=ON)");
}

}  // namespace duo
#endif
