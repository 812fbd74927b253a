// Matrix multiplication of quantized weights by float activations: the hot path of the
// CPU forward. Weights stay quantized in memory; activations are quantized to 16 bits per
// 32-element block and multiplied with integer SIMD dot products (matmul.cpp explains why 16).
#pragma once
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>

#include "core/ggml_types.h"
#include "model/weight_view.h"

namespace duo {

class ThreadPool;

struct PackedWeight;

// A weight matrix (model/weight_view.h) as the matmul's operand: the stored view, plus what the
// CPU forward adds to it (CpuForward::pack_weights, set_act_bits). An aggregate:
// MatmulWeight{view} or MatmulWeight{{type, data, rows, cols, row_stride}}.
struct MatmulWeight : WeightView {
  // Optional: the same matrix in the layout of the many-token kernel (pack_weight). Read by
  // matmul calls of more than 4 tokens; the few-token path always reads `data`.
  const PackedWeight* packed = nullptr;
  // Activation integers of the many-token kernel: 16 (default; see matmul.cpp) or 8. With 8,
  // Q4_0/Q4_1/Q8_0 weights at the AVX-512 level multiply their bytes by int8 activations
  // (q8_1-style blocks, vpdpbusd: twice the products an instruction of the 16-bit kernel);
  // other types, other levels and the few-token path stay on 16 bits. Packing (pack_weight)
  // follows it.
  int act_bits = 16;
};

// Makes `w`'s many-token panels once, so that matmuls of many tokens (pre-fill chunks, a
// batch of decoding sequences) skip unpacking the quantized blocks on every call. Costs
// ~2 bytes per weight plus 8 bytes per 32-block (about 4x a Q4 matrix). Returns nullptr
// where the kernel that would run reads no packed form (float weights, or below the AVX-512
// SIMD level). Set the result's pointer in MatmulWeight::packed; it must outlive the view.
std::shared_ptr<const PackedWeight> pack_weight(const MatmulWeight& w, ThreadPool& pool);
size_t packed_bytes(const PackedWeight& p);
// True when matmuls of more than kMatmulFewTokens tokens by `w` would take the 8-bit
// activation kernel (w.act_bits == 8, a Q4_0/Q4_1/Q8_0 matrix, the AVX-512 SIMD level).
bool matmul_uses_act8(const MatmulWeight& w);

// Calls of up to this many tokens take the few-token path (one pass over each weight row per
// token); more take the many-token kernel.
inline constexpr int64_t kMatmulFewTokens = 4;
// True when the many-token kernel computes each token's outputs from that token alone, with
// the same numbers whichever other tokens share the call (quantized weights, every SIMD
// level): callers may then merge many-token calls without changing any result.
bool matmul_tokens_independent(const MatmulWeight& w);

// Y[t][r] = sum_c W[r][c] * X[t][c] for t in [0, n_tokens). X is n_tokens x cols, Y is
// n_tokens x rows, both row-major float.
// Reference: dequantizes one row at a time and accumulates in double.
void matmul_ref(const MatmulWeight& w, const float* x, int64_t n_tokens, float* y);
// Reference of the 8-bit activation kernel (Q4_0/Q4_1/Q8_0 only, any SIMD level): activations
// quantized per 32-block to int8 as that kernel does (scale amax / 127), exact integer block
// sums, then per block y += dw * xd * isum + mw * xd * sum(xq), in double.
void matmul_act8_ref(const MatmulWeight& w, const float* x, int64_t n_tokens, float* y);
// Optimized, multithreaded.
void matmul(const MatmulWeight& w, const float* x, int64_t n_tokens, float* y, ThreadPool& pool);

// Several matrices applied to the same X (Q/K/V, gate/up): y_i = W_i X, as matmul() each, but
// with one quantization of X and one parallel region (fewer thread-pool round trips per token
// in decode). Every W_i must have X's number of columns.
struct MatmulOut {
  const MatmulWeight& w;
  float* y;
};
void matmul_multi(std::initializer_list<MatmulOut> outs, const float* x, int64_t n_tokens, ThreadPool& pool);

}  // namespace duo
