#include "backend/cpu/simd_level.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

#include "core/error.h"

namespace duo {

namespace {

// What this CPU runs, asked once. libgcc's __builtin_cpu_supports also checks that the OS
// saves the AVX (and AVX-512) registers.
SimdLevel cpu_level() {
#if DUO_SIMD_X86
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("f16c");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
  return avx512 ? SimdLevel::Avx512 : avx2 ? SimdLevel::Avx2 : SimdLevel::Scalar;
#else
  return SimdLevel::Scalar;
#endif
}

SimdLevel from_env() {
  SimdLevel level = simd_compiled();
  if (const char* s = std::getenv("DUO_SIMD")) {
    if (std::strcmp(s, "avx512") == 0) {
      level = SimdLevel::Avx512;
    } else if (std::strcmp(s, "avx2") == 0) {
      level = SimdLevel::Avx2;
    } else if (std::strcmp(s, "scalar") == 0) {
      level = SimdLevel::Scalar;
    } else {
      fail("DUO_SIMD='{}': expected scalar, avx2 or avx512", s);
    }
  }
  // DUO_SIMD lowers the level, never raises it past what this CPU runs.
  return level < simd_compiled() ? level : simd_compiled();
}

std::atomic<int>& current() {
  static std::atomic<int> level{(int)from_env()};
  return level;
}

}  // namespace

SimdLevel simd_compiled() {
  static const SimdLevel level = cpu_level();
  return level;
}

SimdLevel simd_level() { return (SimdLevel)current().load(std::memory_order_relaxed); }

SimdLevel set_simd_level(SimdLevel level) {
  if (level > simd_compiled()) level = simd_compiled();
  if (level < SimdLevel::Scalar) level = SimdLevel::Scalar;
  current().store((int)level, std::memory_order_relaxed);
  return level;
}

void simd_fail_message(const std::string& message) { throw Error(message); }

const char* simd_name(SimdLevel level) {
  switch (level) {
    case SimdLevel::Avx512: return "avx512";
    case SimdLevel::Avx2: return "avx2";
    default: return "scalar";
  }
}

std::string simd_summary() {
#ifdef DUO_BUILD_NATIVE
  constexpr const char* build = "-march=native build";
#else
  constexpr const char* build = "portable build";
#endif
  return std::string("CPU kernels: ") + simd_name(simd_level()) + " (this CPU: up to " + simd_name(simd_compiled()) +
         "; DUO_SIMD=scalar|avx2|avx512 lowers it), " + build;
}

}  // namespace duo
