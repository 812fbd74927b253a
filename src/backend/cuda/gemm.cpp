#include "backend/cuda/gemm.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels.h"
#include "core/error.h"

namespace duo::cuda {

namespace {
constexpr size_t kWorkspaceBytes = 32ull << 20;  // what cuBLAS recommends for Hopper
}

Gemm::Gemm(cudaStream_t stream) : stream_(stream) {
  const char* env = std::getenv("DUO_GEMV");
  gemv_ = !(env && !std::strcmp(env, "0"));
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

bool Gemm::uses_gemv(int64_t n, const bf16* W, int64_t cols, const bf16* X) const {
  return n == 1 && gemv_ && gemv_bf16_supported(W, cols, X);
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
  if (uses_gemv(n, W, cols, X)) return gemv_bf16(W, rows, cols, X, Y, accumulate, stream_);
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  DUO_CUDA_TRY(cublasGemmEx(handle_, CUBLAS_OP_T, CUBLAS_OP_N, (int)rows, (int)n, (int)cols, &alpha, W, CUDA_R_16BF,
                            (int)cols, X, CUDA_R_16BF, (int)ldx, &beta, Y, CUDA_R_32F, (int)ldy, CUBLAS_COMPUTE_32F,
                            CUBLAS_GEMM_DEFAULT));
}

void Gemm::linear_input_grad(const bf16* W, int64_t rows, int64_t cols, const bf16* dY, int64_t lddy, int64_t n,
                             float* dX, int64_t lddx, bool accumulate) {
  if (n <= 0) return;
  constexpr int64_t kMax = std::numeric_limits<int>::max();
  DUO_CHECK(rows > 0 && cols > 0 && rows <= kMax && cols <= kMax && n <= kMax && lddy >= rows && lddx >= cols &&
                lddy <= kMax && lddx <= kMax,
            "input-gradient gemm: unsupported shape rows {} cols {} n {} lddy {} lddx {}", rows, cols, n, lddy, lddx);
  // Column-major views of the row-major buffers (as in linear()):
  //   W  row-major [rows][cols], ld cols  ==  column-major W^T  (cols x rows), lda = cols
  //   dY row-major [n][rows],    ld lddy  ==  column-major dY^T (rows x n),    ldb = lddy
  //   dX row-major [n][cols],    ld lddx  ==  column-major dX^T (cols x n),    ldc = lddx
  // dX = dY W  <=>  dX^T = W^T dY^T: C (m = cols, n = n) = A (cols x rows) * B (rows x n), k = rows,
  // both buffers taken as they are (CUBLAS_OP_N, CUBLAS_OP_N).
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  DUO_CUDA_TRY(cublasGemmEx(handle_, CUBLAS_OP_N, CUBLAS_OP_N, (int)cols, (int)n, (int)rows, &alpha, W, CUDA_R_16BF,
                            (int)cols, dY, CUDA_R_16BF, (int)lddy, &beta, dX, CUDA_R_32F, (int)lddx, CUBLAS_COMPUTE_32F,
                            CUBLAS_GEMM_DEFAULT));
}

bool Gemm::uses_gemv(int64_t n, const GpuMatrix& W, int64_t cols, const bf16* X) const {
  if (!W.int8()) return uses_gemv(n, W.w, cols, X);
  return n == 1 && gemv_int8_supported(W.q, cols, X);  // int8: GEMV regardless of DUO_GEMV
}

void Gemm::linear(const GpuMatrix& W, int64_t rows, int64_t cols, const bf16* X, int64_t ldx, int64_t n, float* Y,
                  int64_t ldy, bool accumulate) {
  if (!W.int8()) return linear(W.w, rows, cols, X, ldx, n, Y, ldy, accumulate);
  if (n <= 0) return;
  if (uses_gemv(n, W, cols, X)) return gemv_int8(W.q, W.scale, rows, cols, X, Y, accumulate, stream_);
  // Several tokens: bf16 tiles of whole rows, each a GEMM writing its columns of Y.
  const int64_t block = dequant_block(rows, cols);
  bf16* tile = dequant_.ensure_n<bf16>(block * cols);
  for (int64_t r0 = 0; r0 < rows; r0 += block) {
    const int64_t m = std::min(block, rows - r0);
    dequant_int8_rows(W.q + r0 * cols, W.scale + r0, m, cols, tile, stream_);
    linear(tile, m, cols, X, ldx, n, Y + r0, ldy, accumulate);
  }
}

// A matrix larger than the tile is cut into equal tiles of a multiple of 128 rows (cuBLAS's tile
// height), not into full tiles and a ragged rest.
int64_t Gemm::dequant_block(int64_t rows, int64_t cols) {
  const int64_t max_rows = std::max<int64_t>(1, (int64_t)(kDequantTileBytes / (2 * cols)));
  const int64_t tiles = (rows + max_rows - 1) / max_rows;
  int64_t block = (rows + tiles - 1) / tiles;
  if (tiles > 1) block = std::min(max_rows, (block + 127) / 128 * 128);
  return block;
}

const void* Gemm::reserve_dequant_tile(int64_t rows, int64_t cols) {
  return dequant_.ensure_n<bf16>(dequant_block(rows, cols) * cols);
}

void Gemm::swiglu_gemv(const GpuMatrix& Wgu, int64_t F, int64_t cols, const bf16* x, bf16* h, Glu act) {
  if (Wgu.int8())
    gemv_swiglu_int8(Wgu.q, Wgu.scale, F, cols, x, h, stream_, act);
  else
    gemv_swiglu_bf16(Wgu.w, F, cols, x, h, stream_, act);
}

}  // namespace duo::cuda
