// The calibration objective (docs/calibration.md "Loss"): distillation of the frozen full-attention
// model's final hidden states into the gated model's over the answer tokens, plus an L1 push
// of the gates towards streaming (or, with DistillTarget::Logits, a KL divergence of the logits
// in place of the L2):
//   distill = sum over rows of mean over the hidden dim of (H_full - H_mix)^2, / rows
//   reg     = mean |a| over all gates
//   L       = distill + lambda * reg
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace duo {

template <typename T>
class GatedModel;

// What the distillation compares: the final hidden states (docs/calibration.md "Loss", the reference's), or
// the logits through the frozen LM head (KL divergence; calibrate/logit_loss.h).
enum class DistillTarget { Hidden, Logits };
const char* to_string(DistillTarget t);
DistillTarget parse_distill_target(const std::string& s);  // "hidden" | "kl"

struct LossValue {
  double total = 0, distill = 0, reg = 0;
};

// Returns distill and writes d distill / d mix (rows x dim).
template <typename T>
double distill_loss(const T* full, const T* mix, int64_t rows, int64_t dim, T* d_mix);

// Returns mean |a| and adds lambda * d(mean |a|)/da to grad (sign(a) / count; 0 at a = 0).
double gate_l1_mean(const std::vector<double>& gates, double lambda, std::vector<double>& grad);

// One sample: runs the frozen reference and the gated model on `tokens`, and writes
// dL/d gates into grad (n_gates values, overwritten). rows: the answer positions. With
// DistillTarget::Logits, `distill` is the mean KL of the answer rows' next-token distributions.
template <typename T>
LossValue calibration_loss_and_grad(GatedModel<T>& model, const std::vector<int32_t>& tokens,
                                    const std::vector<int64_t>& rows, const std::vector<double>& gates, double lambda,
                                    std::vector<double>& grad, DistillTarget target = DistillTarget::Hidden);

}  // namespace duo
