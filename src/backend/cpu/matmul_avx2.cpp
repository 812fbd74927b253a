// matmul_kernels.h compiled for AVX2+FMA+F16C (cmake/duo_simd.cmake gives this file those flags).
#if defined(__x86_64__)  // elsewhere only the scalar kernels exist (simd_level.h)
#if !defined(__AVX2__) || !defined(__FMA__) || !defined(__F16C__)
#error "this file needs -mavx2 -mfma -mf16c (cmake/duo_simd.cmake)"
#endif
#define DUO_ISA_NS avx2
#define DUO_ISA_AVX2 1
#include "backend/cpu/matmul_kernels.h"
#endif
