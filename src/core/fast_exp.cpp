#include "core/fast_exp.h"

#include <cmath>

#include "core/exp_avx2.h"

namespace duo {

void exp_inplace(float* x, int n) {
  int i = 0;
#if defined(__AVX2__) && defined(__FMA__)
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, exp256(_mm256_loadu_ps(x + i)));
#endif
  for (; i < n; ++i) x[i] = std::exp(x[i]);
}

}  // namespace duo
