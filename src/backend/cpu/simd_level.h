// Which SIMD kernels the CPU ops run. The build compiles the widest kernels its target flags
// allow (DUO_NATIVE: -march=native; the AVX-512 kernels need AVX-512 F/BW/VL/VNNI) next to the
// AVX2 ones, and picks the widest at run time. The level can be lowered (never raised past
// what was compiled) so that one binary on an AVX-512 machine also runs and tests the AVX2
// kernels: tests call set_simd_level, benchmarks and tools read DUO_SIMD=avx2|avx512 from
// the environment. Without AVX2 (no -march) only the plain scalar loops exist.
#pragma once

namespace duo {

enum class SimdLevel { Scalar = 0, Avx2 = 1, Avx512 = 2 };

// The widest level this build has kernels for.
SimdLevel simd_compiled();
// The level the kernels use now: simd_compiled(), or lower as set by DUO_SIMD or set_simd_level.
SimdLevel simd_level();
// Lowers (or restores) the level, clamped to [AVX2, simd_compiled()] in builds with AVX2 (the
// scalar loops are compiled only without it). Returns the level in effect. Not for use while other threads run CPU ops.
SimdLevel set_simd_level(SimdLevel level);
const char* simd_name(SimdLevel level);

inline bool use_avx512() { return simd_level() == SimdLevel::Avx512; }

}  // namespace duo
