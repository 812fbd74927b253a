// The SIMD levels a test should run the CPU kernels at: every level this binary runs here
// (on an AVX-512 machine AVX-512, AVX2 and the scalar reference loops, so all stay tested).
#pragma once
#include <vector>

#include "backend/cpu/simd_level.h"

namespace duo::test {

inline std::vector<SimdLevel> simd_levels() {
  std::vector<SimdLevel> out;
  for (SimdLevel l : {SimdLevel::Avx512, SimdLevel::Avx2, SimdLevel::Scalar})
    if (l <= simd_compiled()) out.push_back(l);
  return out;
}

// Sets a level for one scope and restores the previous one.
class ScopedSimdLevel {
 public:
  explicit ScopedSimdLevel(SimdLevel l) : prev_(simd_level()) { set_simd_level(l); }
  ~ScopedSimdLevel() { set_simd_level(prev_); }
  ScopedSimdLevel(const ScopedSimdLevel&) = delete;
  ScopedSimdLevel& operator=(const ScopedSimdLevel&) = delete;

 private:
  SimdLevel prev_;
};

}  // namespace duo::test
