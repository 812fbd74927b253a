// The gate optimizer of the reference calibration (mit-han-lab/duo-attention, train.py):
// AdamW with weight decay 0 by default, a learning-rate multiplier that warms up over the
// first 20% of the steps and cools down over the last 20%, and gates clamped to [0, 1] after
// every step. Pure host code on a few hundred doubles, shared by the CPU and CUDA calibrations.
#pragma once
#include <cstdint>
#include <vector>

namespace duo {

struct AdamWConfig {
  double lr = 0.02;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  double weight_decay = 0.0;
};

struct AdamWState {
  std::vector<double> m, v;  // first and second moments, one per parameter
  int64_t t = 0;             // steps taken
};

// One AdamW update at learning rate `lr` (PyTorch's formula: decoupled decay, bias-corrected
// moments, eps added to sqrt(v) / sqrt(1 - beta2^t)).
void adamw_step(std::vector<double>& params, const std::vector<double>& grad, AdamWState& state,
                const AdamWConfig& cfg, double lr);

// min(1, max((step + 1) / w, 0.1), max((steps - step) / w, 0.1)) with w = steps / 5 (integer
// division, at least 1); step counts from 0.
double lr_multiplier(int64_t step, int64_t total_steps);

// Every value into [lo, hi].
void clamp_all(std::vector<double>& v, double lo = 0.0, double hi = 1.0);

}  // namespace duo
