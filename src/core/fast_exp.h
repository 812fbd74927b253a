// exp of a row of floats in place, the vectorized polynomial (core/exp_avx2.h) where the build
// has AVX2 and FMA, std::exp elsewhere. Backend-neutral scalar math: the CPU backend's softmax
// and attention and the calibration's float attention and ops (calibrate/scalar_math.h) use the
// same one, so both compute the same exponentials.
#pragma once

namespace duo {

// exp of n values in place (max rel. error ~2e-7 on [-87, 88]).
void exp_inplace(float* x, int n);

}  // namespace duo
