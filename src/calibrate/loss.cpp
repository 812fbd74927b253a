#include "calibrate/loss.h"

#include <cmath>

#include "calibrate/gated_model.h"
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

template <typename T>
LossValue calibration_loss_and_grad(GatedModel<T>& model, const std::vector<int32_t>& tokens,
                                    const std::vector<int64_t>& rows, const std::vector<double>& gates, double lambda,
                                    std::vector<double>& grad) {
  DUO_CHECK((int)gates.size() == model.n_gates(), "{} gates for a model with {}", gates.size(), model.n_gates());
  const int64_t n = (int64_t)tokens.size(), E = model.config().n_embd, R = (int64_t)rows.size();
  const std::vector<T> x0 = model.embed(tokens);
  std::vector<T> h_full((size_t)(R * E)), h_mix((size_t)(R * E)), d_mix((size_t)(R * E));
  model.forward_full(x0.data(), n, rows, h_full.data());
  const std::vector<T> g(gates.begin(), gates.end());
  model.forward_gated(x0.data(), n, g, rows, h_mix.data());
  LossValue v;
  v.distill = distill_loss<T>(h_full.data(), h_mix.data(), R, E, d_mix.data());
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
                                                    std::vector<double>&);
template LossValue calibration_loss_and_grad<double>(GatedModel<double>&, const std::vector<int32_t>&,
                                                     const std::vector<int64_t>&, const std::vector<double>&, double,
                                                     std::vector<double>&);

}  // namespace duo
