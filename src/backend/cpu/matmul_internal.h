// Pieces of the quantized matmul shared by its ISA-specific files (matmul.cpp: dispatch, AVX2
// and scalar kernels; matmul_avx512.cpp: AVX-512 kernels). Not part of the op interface.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "backend/cpu/simd_avx512.h"  // first: it includes <immintrin.h>
#include "backend/cpu/matmul.h"
#include "core/fp16.h"
#include "core/quant_blocks.h"

namespace duo {

// A quantized weight matrix rearranged once into the panels the AVX-512 many-token kernel
// reads (pack_weight), so its calls skip unpacking. Knows the matrix it was made from.
struct PackedWeight {
  const uint8_t* data = nullptr;
  GgmlType type = GgmlType::F32;
  int64_t rows = 0, cols = 0;
  int act_bits = 16;       // 16: panels of int16 pairs; 8: of u8 quads (matmul_act8_avx512.cpp)
  std::vector<int32_t> q;  // row blocks' panels of int16 pairs (u8 quads), one after another
  std::vector<float> dm;   // row blocks' scales then mins
};

}  // namespace duo

namespace duo::mm {

inline float h2f(uint16_t h) {
#if defined(__F16C__)
  return _cvtsh_ss(h);
#else
  return f16_to_f32(h);
#endif
}

// One 32-block of a token's activations quantized to 16 bits: x[j] ~ d * q[j].
struct ActQ16 {
  float d;  // scale
  float s;  // d * sum(q)
  int16_t q[QK];
};
void quantize_act_q16(const float* x, int64_t nb, ActQ16* out);

// Grow-only per-thread scratch.
template <typename T>
T* scratch(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
  return v.data();
}

// The calling thread's activation buffers (shared with the workers during a call): n tokens x
// nb blocks, token-major, and the blocks' s values on their own (the min terms' dot operand).
struct ActBuf {
  std::vector<ActQ16> q;
  std::vector<float> s;
};
ActBuf& act_buffer();
void quantize_acts(const float* x, int64_t n, int64_t cols, ActBuf& a, ThreadPool& pool);

// One 32-block of a token's activations quantized to 8 bits (as llama.cpp's q8_1):
// x[j] ~ d * q[j], |q| <= 127.
struct ActQ8 {
  float d;  // scale: amax / 127
  float s;  // d * sum(q)
  int8_t q[QK];
};
void quantize_act_q8(const float* x, int64_t nb, ActQ8* out);
// n tokens x (cols / 32) blocks, token-major, into the calling thread's buffer.
const ActQ8* quantize_acts8(const float* x, int64_t n, int64_t cols, ThreadPool& pool);
// The weight types the 8-bit kernel reads: Q4_0, Q4_1 (unsigned nibbles), Q8_0 (signed bytes).
bool act8_type(GgmlType t);
// A row of such a type as bytes in element order (q[nb*32]: Q4 nibbles 0..15, Q8_0's int8 as
// their two's complement bytes) and per block w[j] = dw * q[j] + mw (Q4_0: mw = -8 dw; Q8_0: 0).
void unpack_row_8(GgmlType type, const uint8_t* src, int64_t nb, uint8_t* q, float* dw, float* mw);

// Every quantized type as integer panels: within 32-block b of a row, w[j] = dw[b] * q[j] + mw[b]
// with int16 q (see matmul.cpp). A row of nb blocks: q[nb*32], dw[nb], mw[nb].
struct PanelRow {
  int16_t* q;
  float* dw;
  float* mw;
};
bool is_float_type(GgmlType t);
bool has_min(GgmlType t);
// Types whose many-token products dequantize rows to float (the float tile) rather than use
// integer panels: the float types, and Q2_K (a min per 16 elements; see dot_q2_k).
bool prefill_dequantizes(GgmlType t);
void unpack_row(GgmlType type, const uint8_t* src, int64_t nb, PanelRow p);

// AVX-512 kernels (matmul_avx512.cpp), callable when use_avx512().
// Every row block's pre-fill panel made once (matmul_avx512.cpp describes the layout).
std::shared_ptr<const PackedWeight> pack_weight_avx512(const WeightView& w, ThreadPool& pool);
// Pre-fill: y_i = W_i x for n tokens whose activations are already quantized (a: n x nb,
// token-major), all matrices in one parallel region.
void matmul_prefill_avx512(const MatmulOut* outs, int count, const ActQ16* a, int64_t n, ThreadPool& pool);
// The same for 8-bit activations and Q4_0/Q4_1/Q8_0 weights (matmul_act8_avx512.cpp): byte panels.
std::shared_ptr<const PackedWeight> pack_weight_act8_avx512(const WeightView& w, ThreadPool& pool);
void matmul_prefill_act8_avx512(const MatmulOut* outs, int count, const ActQ8* a, int64_t n, ThreadPool& pool);

}  // namespace duo::mm
