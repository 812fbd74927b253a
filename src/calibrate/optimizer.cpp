#include "calibrate/optimizer.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace duo {

void adamw_step(std::vector<double>& p, const std::vector<double>& g, AdamWState& s, const AdamWConfig& c, double lr) {
  DUO_CHECK(g.size() == p.size(), "AdamW: {} gradients for {} parameters", g.size(), p.size());
  if (s.m.empty()) s.m.assign(p.size(), 0.0), s.v.assign(p.size(), 0.0);
  DUO_CHECK(s.m.size() == p.size() && s.v.size() == p.size(), "AdamW: state for {} parameters, given {}", s.m.size(),
            p.size());
  s.t += 1;
  const double bc1 = 1.0 - std::pow(c.beta1, (double)s.t), bc2 = 1.0 - std::pow(c.beta2, (double)s.t);
  const double step_size = lr / bc1, bc2_sqrt = std::sqrt(bc2);
  for (size_t i = 0; i < p.size(); ++i) {
    p[i] *= 1.0 - lr * c.weight_decay;
    s.m[i] = c.beta1 * s.m[i] + (1.0 - c.beta1) * g[i];
    s.v[i] = c.beta2 * s.v[i] + (1.0 - c.beta2) * g[i] * g[i];
    const double denom = std::sqrt(s.v[i]) / bc2_sqrt + c.eps;
    p[i] -= step_size * s.m[i] / denom;
  }
}

double lr_multiplier(int64_t step, int64_t total_steps) {
  const double w = (double)std::max<int64_t>(1, total_steps / 5);
  const double up = std::max((double)(step + 1) / w, 0.1), down = std::max((double)(total_steps - step) / w, 0.1);
  return std::min({1.0, up, down});
}

void clamp_all(std::vector<double>& v, double lo, double hi) {
  for (double& x : v) x = std::clamp(x, lo, hi);
}

}  // namespace duo
