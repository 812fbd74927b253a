// The SIMD level picked at run time: the widest this CPU runs, as the kernel's own flag list in
// /proc/cpuinfo says (an independent source: the code asks the cpuid instruction), and every
// level at or below it selectable.
#include <gtest/gtest.h>

#include <fstream>
#include <set>
#include <sstream>
#include <string>

#include "simd_levels.h"

namespace duo {
namespace {

std::set<std::string> cpuinfo_flags() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("flags", 0) == 0) {
      std::istringstream words(line.substr(line.find(':') + 1));
      std::set<std::string> out;
      for (std::string w; words >> w;) out.insert(w);
      return out;
    }
  return {};
}

TEST(SimdLevel, WidestIsWhatTheCpuRuns) {
#if !DUO_SIMD_X86
  EXPECT_EQ(simd_compiled(), SimdLevel::Scalar);
#else
  const auto flags = cpuinfo_flags();
  if (flags.empty()) GTEST_SKIP() << "no /proc/cpuinfo";
  auto has = [&](const char* f) { return flags.count(f) > 0; };
  const bool avx2 = has("avx2") && has("fma") && has("f16c");
  const bool avx512 = avx2 && has("avx512f") && has("avx512bw") && has("avx512vl") && has("avx512_vnni");
  EXPECT_EQ(simd_compiled(), avx512 ? SimdLevel::Avx512 : avx2 ? SimdLevel::Avx2 : SimdLevel::Scalar);
#endif
}

TEST(SimdLevel, EveryLevelUpToTheWidestIsSelectable) {
  const auto levels = test::simd_levels();
  ASSERT_FALSE(levels.empty());
  EXPECT_EQ(levels.front(), simd_compiled());
  EXPECT_EQ(levels.back(), SimdLevel::Scalar);  // the reference loops exist in every build
  for (SimdLevel l : levels) {
    test::ScopedSimdLevel scoped(l);
    EXPECT_EQ(simd_level(), l) << simd_name(l);
    EXPECT_EQ(use_avx512(), l == SimdLevel::Avx512);
  }
  // Never raised past what the CPU runs.
  test::ScopedSimdLevel scoped(SimdLevel::Avx512);
  EXPECT_EQ(simd_level(), simd_compiled());
}

}  // namespace
}  // namespace duo
