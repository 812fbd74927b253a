// Finite-difference gradient checks in double precision for the calibration backward passes.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <string>
#include <vector>

namespace duo::test {

inline std::vector<double> random_vector(size_t n, std::mt19937_64& rng, double sd = 1.0, double mean = 0.0) {
  std::normal_distribution<double> nd(mean, sd);
  std::vector<double> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

// Compares grad[i] with the central difference (loss(x + h e_i) - loss(x - h e_i)) / 2h for
// `max_coords` coordinates chosen at random (all when max_coords <= 0 or >= x.size()).
// The tolerance is relative to the largest gradient entry, so tiny entries are judged on the
// scale of the whole gradient. Returns the largest error found (also asserted).
inline double check_gradient(const std::function<double(const std::vector<double>&)>& loss, std::vector<double> x,
                             const std::vector<double>& grad, const std::string& what, int max_coords = 0,
                             double h = 1e-6, double tol = 1e-6, uint64_t seed = 5) {
  EXPECT_EQ(x.size(), grad.size()) << what;
  std::vector<size_t> coords(x.size());
  for (size_t i = 0; i < x.size(); ++i) coords[i] = i;
  if (max_coords > 0 && (size_t)max_coords < x.size()) {
    std::mt19937_64 rng(seed);
    std::shuffle(coords.begin(), coords.end(), rng);
    coords.resize((size_t)max_coords);
  }
  double gmax = 0;
  for (double g : grad) gmax = std::max(gmax, std::fabs(g));
  EXPECT_GT(gmax, 0.0) << what << ": the gradient is identically zero (the check would be vacuous)";
  double worst = 0;
  for (size_t i : coords) {
    const double x0 = x[i];
    x[i] = x0 + h;
    const double lp = loss(x);
    x[i] = x0 - h;
    const double lm = loss(x);
    x[i] = x0;
    const double fd = (lp - lm) / (2 * h);
    const double err = std::fabs(fd - grad[i]);
    worst = std::max(worst, err / std::max(1.0, gmax));
    EXPECT_LE(err, tol * std::max(1.0, gmax)) << what << ": coordinate " << i << " analytic " << grad[i]
                                              << " finite difference " << fd;
  }
  return worst;
}

inline double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

}  // namespace duo::test
