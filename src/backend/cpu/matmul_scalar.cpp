// matmul_kernels.h compiled for any CPU (plain loops): the reference and fallback level.
#define DUO_ISA_NS scalar
#define DUO_ISA_AVX2 0
#include "backend/cpu/matmul_kernels.h"
