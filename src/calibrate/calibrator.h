// The gate-calibration loop (backend independent): draw a sample, get the loss and the gate
// gradient from a loss backend (the CPU gated model, or a CUDA one), take an AdamW step at the
// scheduled learning rate, clamp the gates to [0, 1]. Resumable: a checkpoint holds the gates,
// the AdamW moments, the step, the sampling generator's state and the run's settings, so a
// resumed run continues exactly as if it had not stopped.
#pragma once
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "calibrate/loss.h"
#include "calibrate/optimizer.h"
#include "calibrate/passkey_data.h"
#include "io/head_pattern.h"
#include "duo/head_plan.h"

namespace duo {

struct CalibrationConfig {
  int64_t steps = 2000;
  double lambda = 0.05;
  AdamWConfig adamw;               // lr 0.02, weight decay 0
  StreamingWindow window{128, 256};  // during calibration (the reference's training window)
  double init_gate = 1.0;
  uint64_t seed = 42;
  DistillTarget distill = DistillTarget::Hidden;  // --loss hidden | kl
  nlohmann::json to_json() const;
};

struct CalibrationState {
  int64_t step = 0;  // steps done
  std::vector<double> gates;
  AdamWState adam;
  std::mt19937_64 rng;
};

struct StepReport {
  int64_t step = 0, steps = 0;  // step just done (1-based) of steps
  LossValue loss;
  double lr = 0;
  double sparsity = 0;  // fraction of gates below 0.5 after the step
  int64_t tokens = 0, answer_tokens = 0;  // sample length; rows the loss compared (the name is the
                                          // checkpoint and log column it always had)
  double seconds = 0;
};

// The loss of one sample under the given gates; writes dL/d gates into grad.
using LossBackend =
    std::function<LossValue(const PasskeySample& sample, const std::vector<double>& gates, std::vector<double>& grad)>;

class Calibrator {
 public:
  // run_info: what else identifies the run (model, data settings); stored in checkpoints and
  // compared on resume together with `cfg`.
  Calibrator(int n_layers, int n_kv_heads, SampleSource& data, LossBackend loss, CalibrationConfig cfg,
             nlohmann::json run_info = nlohmann::json::object());

  // One step. Throws when all steps are done.
  StepReport step();
  bool done() const { return state_.step >= cfg_.steps; }

  const CalibrationState& state() const { return state_; }
  const std::vector<StepReport>& history() const { return history_; }
  GateMatrix gate_matrix() const;

  // Checkpoint as JSON (written to path + ".tmp", then renamed over path).
  void save_checkpoint(const std::string& path) const;
  // Restores a checkpoint of a run with the same settings; errors name what differs.
  void load_checkpoint(const std::string& path);

 private:
  int n_layers_, n_kv_heads_;
  SampleSource& data_;
  LossBackend loss_;
  CalibrationConfig cfg_;
  nlohmann::json run_info_;
  CalibrationState state_;
  std::vector<StepReport> history_;
};

template <typename T>
class GatedModel;
// The CPU loss backend: the gated model in float on the sample's answer rows.
LossBackend cpu_loss_backend(GatedModel<float>& model, double lambda, DistillTarget target = DistillTarget::Hidden);

// Fraction of gates below `threshold` (streaming heads at that threshold).
double gate_sparsity(const std::vector<double>& gates, double threshold = 0.5);

}  // namespace duo
