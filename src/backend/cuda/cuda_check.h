// Error checks for the host code of the CUDA backend: every CUDA runtime and cuBLAS call goes
// through DUO_CUDA_TRY, which throws duo::Error naming the call, the error and where.
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>

namespace duo::cuda {

[[noreturn]] void fail_call(const char* call, const char* error, const char* file, int line);

inline void check_call(cudaError_t e, const char* call, const char* file, int line) {
  if (e != cudaSuccess) fail_call(call, cudaGetErrorString(e), file, line);
}
void check_call(cublasStatus_t s, const char* call, const char* file, int line);

}  // namespace duo::cuda

#define DUO_CUDA_TRY(call) ::duo::cuda::check_call((call), #call, __FILE__, __LINE__)
