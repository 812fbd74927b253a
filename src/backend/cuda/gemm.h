// Linear layers on cuBLAS: bf16 weights and activations, fp32 accumulation and fp32 output.
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

 private:
  cublasHandle_t handle_ = nullptr;
  DeviceBuffer workspace_;
};

}  // namespace duo::cuda
