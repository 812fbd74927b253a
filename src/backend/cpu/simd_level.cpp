#include "backend/cpu/simd_level.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

#include "backend/cpu/simd_avx512.h"
#include "core/error.h"

namespace duo {

namespace {

SimdLevel from_env() {
  SimdLevel level = simd_compiled();
  if (const char* s = std::getenv("DUO_SIMD")) {
    if (std::strcmp(s, "avx512") == 0) {
      level = SimdLevel::Avx512;
    } else if (std::strcmp(s, "avx2") == 0) {
      level = SimdLevel::Avx2;
    } else if (std::strcmp(s, "scalar") == 0) {
      // The scalar loops are the #else branches of the AVX2 kernels: not selectable at run time.
      fail("DUO_SIMD=scalar: the scalar kernels exist only in builds without AVX2 (-DDUO_NATIVE=OFF)");
    } else {
      fail("DUO_SIMD='{}': expected avx2 or avx512", s);
    }
  }
  return level < simd_compiled() ? level : simd_compiled();
}

std::atomic<int>& current() {
  static std::atomic<int> level{(int)from_env()};
  return level;
}

}  // namespace

SimdLevel simd_compiled() {
#if DUO_HAVE_AVX512
  return SimdLevel::Avx512;
#elif defined(__AVX2__) && defined(__FMA__)
  return SimdLevel::Avx2;
#else
  return SimdLevel::Scalar;
#endif
}

SimdLevel simd_level() { return (SimdLevel)current().load(std::memory_order_relaxed); }

SimdLevel set_simd_level(SimdLevel level) {
  if (level > simd_compiled()) level = simd_compiled();
  if (simd_compiled() >= SimdLevel::Avx2 && level < SimdLevel::Avx2) level = SimdLevel::Avx2;
  current().store((int)level, std::memory_order_relaxed);
  return level;
}

const char* simd_name(SimdLevel level) {
  switch (level) {
    case SimdLevel::Avx512: return "avx512";
    case SimdLevel::Avx2: return "avx2";
    default: return "scalar";
  }
}

}  // namespace duo
