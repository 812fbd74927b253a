#include "backend/cuda/gemm.h"

#include <limits>

#include "backend/cuda/cuda_check.h"
#include "core/error.h"

namespace duo::cuda {

namespace {
constexpr size_t kWorkspaceBytes = 32ull << 20;  // what cuBLAS recommends for Hopper
}

Gemm::Gemm(cudaStream_t stream) {
  DUO_CUDA_TRY(cublasCreate(&handle_));
  DUO_CUDA_TRY(cublasSetStream(handle_, stream));
  // An explicit workspace keeps cuBLAS from allocating its own (counted memory; capturable).
  workspace_ = DeviceBuffer(kWorkspaceBytes, "cuBLAS workspace");
  DUO_CUDA_TRY(cublasSetWorkspace(handle_, workspace_.get(), workspace_.bytes()));
  // Plain fp32 accumulation of bf16 products (tensor cores), no reduced-precision reductions.
  DUO_CUDA_TRY(cublasSetMathMode(handle_, CUBLAS_DEFAULT_MATH));
}

Gemm::~Gemm() {
  if (handle_) cublasDestroy(handle_);
}

void Gemm::linear(const bf16* W, int64_t rows, int64_t cols, const bf16* X, int64_t ldx, int64_t n, float* Y,
                  int64_t ldy, bool accumulate) {
  if (n <= 0) return;
  constexpr int64_t kMax = std::numeric_limits<int>::max();
  DUO_CHECK(rows > 0 && cols > 0 && rows <= kMax && cols <= kMax && n <= kMax && ldx >= cols && ldy >= rows &&
                ldx <= kMax && ldy <= kMax,
            "gemm: unsupported shape rows {} cols {} n {} ldx {} ldy {}", rows, cols, n, ldx, ldy);
  // cuBLAS is column-major. A row-major matrix M[a][b] with row stride ld is, read
  // column-major, the matrix M^T of shape (b x a) with leading dimension ld. So:
  //   W row-major [rows][cols], ld cols  ==  column-major W^T (cols x rows), lda = cols
  //   X row-major [n][cols],    ld ldx   ==  column-major X^T (cols x n),    ldb = ldx
  //   Y row-major [n][rows],    ld ldy   ==  column-major Y^T (rows x n),    ldc = ldy
  // and Y = X W^T  <=>  Y^T = W X^T: C (m = rows, n = n) = op(A) (rows x cols) * op(B) (cols x n)
  // with A = the W^T buffer transposed (CUBLAS_OP_T), B = the X^T buffer as is (CUBLAS_OP_N), k = cols.
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  DUO_CUDA_TRY(cublasGemmEx(handle_, CUBLAS_OP_T, CUBLAS_OP_N, (int)rows, (int)n, (int)cols, &alpha, W, CUDA_R_16BF,
                            (int)cols, X, CUDA_R_16BF, (int)ldx, &beta, Y, CUDA_R_32F, (int)ldy, CUBLAS_COMPUTE_32F,
                            CUBLAS_GEMM_DEFAULT));
}

}  // namespace duo::cuda
