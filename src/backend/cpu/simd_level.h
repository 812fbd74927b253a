// Which SIMD kernels the CPU ops run: scalar (plain loops, any CPU), AVX2 (AVX2+FMA+F16C) or
// AVX-512 (F/BW/VL/VNNI, with the AVX2 kernels for what it has none of its own).
//
// Every build has all three on x86-64 (only scalar elsewhere): the kernels of each level are
// separate files compiled with that level's target flags (cmake/duo_simd.cmake), the scalar
// and AVX2 ones from one source each (matmul_kernels.h, attention_kernels.h). The level is
// picked at run time: the widest this CPU runs (__builtin_cpu_supports), lowered by DUO_SIMD=
// scalar|avx2|avx512 in the environment or by set_simd_level (tests run every level). The
// default build (DUO_NATIVE) compiles the rest of the engine with -march=native as well; a
// portable one (-DDUO_NATIVE=OFF) compiles it for the baseline x86-64, so its binary starts on
// any x86-64 CPU and takes the widest kernels that CPU has.
//
// No AVX instruction runs before the level is checked: the dispatching code is generic, and the
// files built with AVX flags define nothing the linker could take for a generic copy (all their
// code has internal linkage or lives in a namespace of their level; shared templates are
// instantiated in generic files): tests/backend/check_simd_objects.py checks it on the library.
#pragma once
#include <fmt/format.h>

#include <string>

#if defined(__x86_64__)
#define DUO_SIMD_X86 1  // the AVX2 and AVX-512 kernels are built (and dispatched to)
#else
#define DUO_SIMD_X86 0
#endif

namespace duo {

enum class SimdLevel { Scalar = 0, Avx2 = 1, Avx512 = 2 };

// The widest level usable here: built into this binary and supported by this CPU (and OS).
SimdLevel simd_compiled();
// The level the kernels use now: simd_compiled(), or lower as set by DUO_SIMD or set_simd_level.
SimdLevel simd_level();
// Lowers (or restores) the level, clamped to [Scalar, simd_compiled()]. Returns the level in
// effect. Not for use while other threads run CPU ops.
SimdLevel set_simd_level(SimdLevel level);
const char* simd_name(SimdLevel level);
// One line for `duo --version`: the level in use, the widest here, and how the rest was built.
std::string simd_summary();

// Throws duo::Error(message). The files built with AVX flags report errors through this (and
// DUO_SIMD_FAIL, DUO_SIMD_CHECK) rather than duo::fail, whose template instantiations there would be weak
// symbols with AVX code (checked by tests/backend/check_simd_objects.py).
[[noreturn]] void simd_fail_message(const std::string& message);
#define DUO_SIMD_FAIL(...) ::duo::simd_fail_message(fmt::format(__VA_ARGS__))
#define DUO_SIMD_CHECK(cond, ...)                 \
  do {                                            \
    if (!(cond)) DUO_SIMD_FAIL(__VA_ARGS__);     \
  } while (0)

inline bool use_avx512() { return simd_level() == SimdLevel::Avx512; }

}  // namespace duo
