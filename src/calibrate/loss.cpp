#include "calibrate/loss.h"

#include <cmath>

#include "calibrate/dense_gemm.h"
#include "calibrate/frozen_weights.h"
#include "calibrate/gated_model.h"
#include "calibrate/logit_loss.h"
#include "core/error.h"

namespace duo {

template <typename T>
double distill_loss(const T* full, const T* mix, int64_t rows, int64_t dim, T* d_mix) {
  DUO_CHECK(rows > 0 && dim > 0, "distillation loss over {} rows of {}", rows, dim);
  double total = 0;
  const double scale = 1.0 / ((double)rows * (double)dim);
  for (int64_t i = 0; i < rows * dim; ++i) {
    const double d = (double)mix[i] - (double)full[i];
    total += d * d;
    d_mix[i] = (T)(2.0 * d * scale);
  }
  return total * scale;
}

double gate_l1_mean(const std::vector<double>& gates, double lambda, std::vector<double>& grad) {
  DUO_CHECK(!gates.empty() && grad.size() == gates.size(), "L1 of {} gates with {} gradients", gates.size(),
            grad.size());
  double s = 0;
  const double inv = 1.0 / (double)gates.size();
  for (size_t i = 0; i < gates.size(); ++i) {
    s += std::fabs(gates[i]);
    grad[i] += lambda * inv * (gates[i] > 0 ? 1.0 : gates[i] < 0 ? -1.0 : 0.0);
  }
  return s * inv;
}

const char* to_string(DistillTarget t) { return t == DistillTarget::Logits ? "kl" : "hidden"; }

DistillTarget parse_distill_target(const std::string& s) {
  if (s == "hidden") return DistillTarget::Hidden;
  if (s == "kl") return DistillTarget::Logits;
  fail("unknown distillation loss '{}' (hidden or kl)", s);
}

namespace {

// KL distillation of the logits H W_out^T at the answer rows; writes d loss / d h_mix.
template <typename T>
double logits_distill(GatedModel<T>& model, const T* h_full, const T* h_mix, int64_t R, T* d_mix) {
  FrozenWeights<T>& w = model.weights();
  const std::vector<T>& W = w.output();
  const int64_t E = model.config().n_embd, V = model.config().n_vocab;
  std::vector<T> z_full((size_t)(R * V)), z_mix((size_t)(R * V)), d_z((size_t)(R * V));
  gemm<T>(h_full, E, W.data(), E, true, z_full.data(), V, R, V, E, false, model.pool());
  gemm<T>(h_mix, E, W.data(), E, true, z_mix.data(), V, R, V, E, false, model.pool());
  const double kl = logit_kl<T>(z_full.data(), z_mix.data(), R, V, d_z.data(), &model.pool());
  gemm<T>(d_z.data(), V, W.data(), E, false, d_mix, E, R, E, V, false, model.pool());  // d h = d z W
  return kl;
}

}  // namespace

template <typename T>
LossValue calibration_loss_and_grad(GatedModel<T>& model, const std::vector<int32_t>& tokens,
                                    const std::vector<int64_t>& rows, const std::vector<double>& gates, double lambda,
                                    std::vector<double>& grad, DistillTarget target) {
  DUO_CHECK((int)gates.size() == model.n_gates(), "{} gates for a model with {}", gates.size(), model.n_gates());
  const int64_t n = (int64_t)tokens.size(), E = model.config().n_embd, R = (int64_t)rows.size();
  const std::vector<T> x0 = model.embed(tokens);
  std::vector<T> h_full((size_t)(R * E)), h_mix((size_t)(R * E)), d_mix((size_t)(R * E));
  model.forward_full(x0.data(), n, rows, h_full.data());
  const std::vector<T> g(gates.begin(), gates.end());
  model.forward_gated(x0.data(), n, g, rows, h_mix.data());
  LossValue v;
  v.distill = target == DistillTarget::Logits ? logits_distill<T>(model, h_full.data(), h_mix.data(), R, d_mix.data())
                                              : distill_loss<T>(h_full.data(), h_mix.data(), R, E, d_mix.data());
  grad.assign(gates.size(), 0.0);
  model.backward_gated(d_mix.data(), grad);
  v.reg = gate_l1_mean(gates, lambda, grad);
  v.total = v.distill + lambda * v.reg;
  return v;
}

template double distill_loss<float>(const float*, const float*, int64_t, int64_t, float*);
template double distill_loss<double>(const double*, const double*, int64_t, int64_t, double*);
template LossValue calibration_loss_and_grad<float>(GatedModel<float>&, const std::vector<int32_t>&,
                                                    const std::vector<int64_t>&, const std::vector<double>&, double,
                                                    std::vector<double>&, DistillTarget);
template LossValue calibration_loss_and_grad<double>(GatedModel<double>&, const std::vector<int32_t>&,
                                                     const std::vector<int64_t>&, const std::vector<double>&, double,
                                                     std::vector<double>&, DistillTarget);

}  // namespace duo
