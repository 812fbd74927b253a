#include "backend/cuda/cuda_check.h"

#include "core/error.h"

namespace duo::cuda {

[[noreturn]] void fail_call(const char* call, const char* error, const char* file, int line) {
  fail("CUDA call failed: {} -> {} ({}:{})", call, error, file, line);
}

[[noreturn]] void fail_arg(const std::string& what) { throw Error(what); }

void check_call(cublasStatus_t s, const char* call, const char* file, int line) {
  if (s != CUBLAS_STATUS_SUCCESS) fail_call(call, cublasGetStatusString(s), file, line);
}

}  // namespace duo::cuda
