// DUO_HD marks small functions in headers shared by CUDA kernels and host code (CPU references,
// emulation, tests): host+device and inlined under nvcc, plain inline functions elsewhere.
#pragma once

#if defined(__CUDACC__)
#define DUO_HD __host__ __device__ __forceinline__
#else
#define DUO_HD inline
#endif
