// Small helpers shared by the templated calibration ops: vectorized exp for float (the
// inference kernel's polynomial, core/fast_exp.h), std::exp for double.
#pragma once
#include <cmath>
#include <cstdint>

#include "core/fast_exp.h"

namespace duo::calib_detail {

template <typename T>
inline void exp_inplace_t(T* x, int n) {
  for (int i = 0; i < n; ++i) x[i] = std::exp(x[i]);
}
template <>
inline void exp_inplace_t<float>(float* x, int n) {
  exp_inplace(x, n);
}

// Rows per task of the row-wise ops and per partial sum of token reductions: a constant, so
// sums are grouped the same way whatever the thread count.
constexpr int64_t kRowChunk = 64;

}  // namespace duo::calib_detail
