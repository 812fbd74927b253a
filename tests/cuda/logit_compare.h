// Logit rows of the CUDA forward against a reference (the CPU forward, or transformers' logits of
// an HF fixture): relative RMS error of each row and top-1 agreement where the reference's top-1 /
// top-2 gap leaves room for bf16 rounding (forward_test.cpp, hf_forward_test.cpp).
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "duo/sampler.h"

namespace duo::cuda::test {

struct Tolerance {
  double rel_rms;    // per logit row
  double top1_gap;   // top-1 must agree where the reference's top-1 / top-2 gap is above this
};

inline double top_gap(const float* row, int V) {
  float a = -INFINITY, b = -INFINITY;
  for (int i = 0; i < V; ++i) {
    if (row[i] > a)
      b = a, a = row[i];
    else if (row[i] > b)
      b = row[i];
  }
  return (double)a - b;
}

// Compares logit rows; prints the worst row's error and fails on rows over the tolerance or
// top-1 changes above the gap.
inline void expect_rows_close(const std::vector<float>& gpu, const std::vector<float>& ref, int V,
                              const Tolerance& tol, const std::string& what) {
  ASSERT_EQ(gpu.size(), ref.size());
  const size_t rows = ref.size() / V;
  double worst = 0, worst_abs = 0;
  size_t worst_row = 0, disagree = 0;
  for (size_t r = 0; r < rows; ++r) {
    const ErrorStats e = error_stats(&gpu[r * V], &ref[r * V], V);
    if (e.rel_rms > worst) worst = e.rel_rms, worst_row = r;
    worst_abs = std::max(worst_abs, e.max_abs);
    const int32_t g = Sampler::argmax(&gpu[r * V], V), c = Sampler::argmax(&ref[r * V], V);
    if (g != c && top_gap(&ref[r * V], V) > tol.top1_gap) {
      if (disagree++ < 3)
        ADD_FAILURE() << what << ": row " << r << " top-1 " << g << " vs reference " << c << " (reference gap "
                      << top_gap(&ref[r * V], V) << ")";
    }
  }
  std::printf("  %-58s %4zu rows: worst rel RMS %.4f (row %zu), max |d| %.4f\n", what.c_str(), rows, worst,
              worst_row, worst_abs);
  EXPECT_LE(worst, tol.rel_rms) << what << ": row " << worst_row;
  EXPECT_EQ(disagree, 0u) << what;
}

}  // namespace duo::cuda::test
