// The calibration objective (DESIGN.md "Loss"): distillation of the frozen full-attention
// model's final hidden states into the gated model's over the answer tokens, plus an L1 push
// of the gates towards streaming:
//   distill = sum over rows of mean over the hidden dim of (H_full - H_mix)^2, / rows
//   reg     = mean |a| over all gates
//   L       = distill + lambda * reg
#pragma once
#include <cstdint>
#include <vector>

namespace duo {

template <typename T>
class GatedModel;

struct LossValue {
  double total = 0, distill = 0, reg = 0;
};

// Returns distill and writes d distill / d mix (rows x dim).
template <typename T>
double distill_loss(const T* full, const T* mix, int64_t rows, int64_t dim, T* d_mix);

// Returns mean |a| and adds lambda * d(mean |a|)/da to grad (sign(a) / count; 0 at a = 0).
double gate_l1_mean(const std::vector<double>& gates, double lambda, std::vector<double>& grad);

// One sample: runs the frozen reference and the gated model on `tokens`, and writes
// dL/d gates into grad (n_gates values, overwritten). rows: the answer positions.
template <typename T>
LossValue calibration_loss_and_grad(GatedModel<T>& model, const std::vector<int32_t>& tokens,
                                    const std::vector<int64_t>& rows, const std::vector<double>& gates, double lambda,
                                    std::vector<double>& grad);

}  // namespace duo
