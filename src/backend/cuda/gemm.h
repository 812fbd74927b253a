// Linear layers: bf16 weights and activations, fp32 accumulation and fp32 output. cuBLAS for
// several tokens; one token (n = 1, decode) runs gemv_bf16 (kernels.h), which streams the weights
// at the read bandwidth, unless DUO_GEMV=0 (cuBLAS for every shape, for comparison).
// int8 weight-only matrices (GpuMatrix with q / scale, --gpu-weights int8): one token runs
// gemv_int8 (always: half the bytes of bf16); several tokens dequantize the weights a block of
// rows at a time into a bf16 scratch tile (at most kDequantTileBytes) and run cuBLAS on it.
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "backend/cuda/attention.cuh"
#include "backend/cuda/device_memory.h"
#include "backend/cuda/kernels.h"

namespace duo::cuda {

// A weight matrix [rows][cols] row-major on the device: bf16 (w), or int8 with a fp32 scale an
// output row (q, scale: W[r][c] ~ scale[r] * q[r][c]).
struct GpuMatrix {
  const bf16* w = nullptr;
  const int8_t* q = nullptr;
  const float* scale = nullptr;
  bool int8() const { return q != nullptr; }
};

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

  // The same for a bf16 or int8 matrix.
  void linear(const GpuMatrix& W, int64_t rows, int64_t cols, const bf16* X, int64_t ldx, int64_t n, float* Y,
              int64_t ldy, bool accumulate = false);
  bool uses_gemv(int64_t n, const GpuMatrix& W, int64_t cols, const bf16* X) const;
  // One token's FFN input projection with SwiGLU (or act's GeGLU) fused (Wgu: 2F rows, gate then
  // up), for a matrix where uses_gemv(1, Wgu, cols, x) holds: gemv_swiglu_bf16 or gemv_swiglu_int8.
  void swiglu_gemv(const GpuMatrix& Wgu, int64_t F, int64_t cols, const bf16* x, bf16* h, Glu act = Glu::Silu);
  // Sizes the int8 dequantization tile for a rows x cols matrix now (a captured graph must not
  // see it grow, which would move it); returns where it is.
  const void* reserve_dequant_tile(int64_t rows, int64_t cols);

  // 256 MiB holds every Llama-3-8B matrix (the fused gate/up one is 224 MiB) whole, so a pre-fill
  // chunk runs the same GEMM shapes as with bf16 weights.
  static constexpr size_t kDequantTileBytes = 256ull << 20;

 private:
  cublasHandle_t handle_ = nullptr;
  cudaStream_t stream_ = nullptr;
  bool gemv_ = true;
  DeviceBuffer workspace_;
  ScratchBuffer dequant_{"the dequantized int8 weight tile"};
  // Rows of a rows x cols matrix dequantized at a time.
  static int64_t dequant_block(int64_t rows, int64_t cols);
};

}  // namespace duo::cuda
