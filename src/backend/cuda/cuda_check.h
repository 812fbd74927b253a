// The one error convention of the CUDA code (backend and calibration; host code and the
// launchers in .cu files): failures throw duo::Error, through these helpers.
//  - DUO_CUDA_TRY(call): a CUDA runtime or cuBLAS call (kernel launches: DUO_CUDA_TRY(cudaGetLastError()))
//    that must succeed; the error names the call, the error string and where;
//  - fail_arg(what): a launcher's arguments it cannot run.
// Without fmt (core/error.h), so nvcc compiles this header as it is.
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <string>

namespace duo::cuda {

[[noreturn]] void fail_call(const char* call, const char* error, const char* file, int line);
[[noreturn]] void fail_arg(const std::string& what);

inline void check_call(cudaError_t e, const char* call, const char* file, int line) {
  if (e != cudaSuccess) fail_call(call, cudaGetErrorString(e), file, line);
}
void check_call(cublasStatus_t s, const char* call, const char* file, int line);

}  // namespace duo::cuda

#define DUO_CUDA_TRY(call) ::duo::cuda::check_call((call), #call, __FILE__, __LINE__)
