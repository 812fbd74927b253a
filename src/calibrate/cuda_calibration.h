// The seam between `duo calibrate` and the CUDA calibration (src/calibrate/cuda/, compiled with
// -DDUO_CUDA=ON): a loss backend that runs the gated model's forward and backward on one GPU
// (calibrate/cuda/cuda_gated_model.h), behind a header free of CUDA types. Without CUDA the
// factory fails saying how to build it.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "calibrate/calibrator.h"
#include "duo/head_plan.h"

namespace duo {

class Model;

class CudaCalibration {
 public:
  virtual ~CudaCalibration() = default;
  // The Calibrator's loss backend; valid while this object lives.
  virtual LossBackend loss_backend(double lambda, DistillTarget target) = 0;
  // The GPU, and what the weights take on it.
  virtual std::string description() const = 0;
  // Device bytes of activations for a sample of n tokens.
  virtual size_t activation_bytes(int64_t n) const = 0;
  // Milliseconds of the last loss evaluation: full forward, gated forward, backward, total.
  virtual void last_times(double& full_fwd, double& gated_fwd, double& backward, double& total) const = 0;
};

// Uploads the model's weights (bf16) to the current GPU. window: the streaming attention of
// calibration (sink, recent).
std::unique_ptr<CudaCalibration> make_cuda_calibration(const Model& model, StreamingWindow window);

}  // namespace duo
