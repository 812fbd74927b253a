// Matrix multiplication of quantized weights by float activations: the hot path of the
// CPU forward. Weights stay quantized in memory; activations are quantized to 16 bits per
// 32-element block and multiplied with integer SIMD dot products (matmul.cpp explains why 16).
#pragma once
#include <cstddef>
#include <cstdint>
#include <initializer_list>

#include "core/ggml_types.h"

namespace duo {

class ThreadPool;

// A weight matrix as stored in GGUF: `rows` output features, each a contiguous row of
// `cols` input features encoded in `type` (`row_stride` bytes apart).
struct WeightView {
  GgmlType type = GgmlType::F32;
  const uint8_t* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  size_t row_stride = 0;
};

// Y[t][r] = sum_c W[r][c] * X[t][c] for t in [0, n_tokens). X is n_tokens x cols, Y is
// n_tokens x rows, both row-major float.
// Reference: dequantizes one row at a time and accumulates in double.
void matmul_ref(const WeightView& w, const float* x, int64_t n_tokens, float* y);
// Optimized, multithreaded.
void matmul(const WeightView& w, const float* x, int64_t n_tokens, float* y, ThreadPool& pool);

// Several matrices applied to the same X (Q/K/V, gate/up): y_i = W_i X, as matmul() each, but
// with one quantization of X and one parallel region (fewer thread-pool round trips per token
// in decode). Every W_i must have X's number of columns.
struct MatmulOut {
  const WeightView& w;
  float* y;
};
void matmul_multi(std::initializer_list<MatmulOut> outs, const float* x, int64_t n_tokens, ThreadPool& pool);

}  // namespace duo
