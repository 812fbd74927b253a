// Linear layers: bf16 weights and activations, fp32 accumulation and fp32 output. cuBLAS for
// several tokens; one token (n = 1, decode) runs gemv_bf16 (kernels.h), which streams the weights
// at the read bandwidth, unless DUO_GEMV=0 (cuBLAS for every shape, for comparison).
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "backend/cuda/attention.cuh"
#include "backend/cuda/device_memory.h"

namespace duo::cuda {

class Gemm {
 public:
  explicit Gemm(cudaStream_t stream);
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  // Y[t][r] = sum_c W[r][c] * X[t][c] (+ Y[t][r] when accumulate) for t < n, r < rows, c < cols.
  // W: bf16 [rows][cols] row-major (a GGUF weight's layout); X: bf16 [n][cols], rows ldx apart;
  // Y: fp32 [n][rows], rows ldy apart.
  void linear(const bf16* W, int64_t rows, int64_t cols, const bf16* X, int64_t ldx, int64_t n, float* Y,
              int64_t ldy, bool accumulate = false);
  // The input gradient of that linear layer (calibration backward; weights frozen):
  // dX[t][c] = sum_r dY[t][r] * W[r][c] (+ dX[t][c] when accumulate) for t < n, c < cols.
  // W: bf16 [rows][cols] as above; dY: bf16 [n][rows], rows lddy apart; dX: fp32 [n][cols],
  // rows lddx apart. Always cuBLAS (no GEMV path).
  void linear_input_grad(const bf16* W, int64_t rows, int64_t cols, const bf16* dY, int64_t lddy, int64_t n,
                         float* dX, int64_t lddx, bool accumulate = false);
  // Whether linear() takes the one-token GEMV path (gemv_bf16) for these operands.
  bool uses_gemv(int64_t n, const bf16* W, int64_t cols, const bf16* X) const;

 private:
  cublasHandle_t handle_ = nullptr;
  cudaStream_t stream_ = nullptr;
  bool gemv_ = true;
  DeviceBuffer workspace_;
};

}  // namespace duo::cuda
