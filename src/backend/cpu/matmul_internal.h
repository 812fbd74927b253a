// Pieces of the quantized matmul shared by its ISA-specific files (matmul.cpp: dispatch;
// matmul_kernels.h: scalar and AVX2 kernels; matmul_avx512.cpp: AVX-512 kernels). Not part of
// the op interface. The files compiled with AVX target flags include this header too: what it
// defines inline has internal linkage (static) or no SIMD in it, so no copy built with those
// flags can stand in for the generic one (simd_level.h).
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

// static: under F16C (the AVX2 and AVX-512 files) this is another function than in the others.
static inline float h2f(uint16_t h) {
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

// Grows v to n elements. Defined in matmul.cpp (and instantiated there for the element types
// below) so that the files built with AVX target flags instantiate no std::vector code of their
// own, which the linker could otherwise keep for every file.
template <typename T>
void grow(std::vector<T>& v, size_t n);
// Grow-only per-thread scratch.
template <typename T>
static inline T* scratch(std::vector<T>& v, size_t n) {
  if (v.size() < n) grow(v, n);
  return v.data();
}

// The calling thread's activation buffers (shared with the workers during a call): n tokens x
// nb blocks, token-major, and the blocks' s values on their own (the min terms' dot operand).
struct ActBuf {
  std::vector<ActQ16> q;
  std::vector<float> s;
};
ActBuf& act_buffer();

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
// Many-token activations of the AVX2 tile (matmul_kernels.h): token pairs of one 32-block with
// kTokenGroup tokens in the lanes.
inline constexpr int kTokenGroup = 8;
struct ActGroupBlock {
  int32_t q[QK / 2][kTokenGroup];  // token pairs, lanes = tokens
  float d[kTokenGroup];            // activation scales
  float s[kTokenGroup];            // d * sum(q)
};

[[noreturn]] void fail_no_integer_path(GgmlType type);

// The kernels below the AVX-512 level (matmul_kernels.h), one table per instruction set:
// scalar (plain loops, every CPU) and, on x86-64, avx2 (AVX2+FMA+F16C). matmul.cpp calls the
// table of the current SIMD level; the AVX-512 kernels use avx2's unpack_row.
struct MatmulKernels {
  // a's activations of n tokens (cols wide) quantized to 16 bits, token-major.
  void (*quantize_acts)(const float* x, int64_t n, int64_t cols, ActBuf& a, ThreadPool& pool);
  // Few tokens: one pass over each weight row, every matrix in one parallel region.
  void (*rows)(const MatmulOut* outs, int count, const float* x, int64_t n, ThreadPool& pool);
  // Many tokens: integer panels (quantized weights) or the float tile (prefill_dequantizes).
  void (*tiled_int)(const MatmulWeight& w, const float* x, int64_t n, float* y, ThreadPool& pool);
  void (*tiled_float)(const MatmulWeight& w, const float* x, int64_t n, float* y, ThreadPool& pool);
  void (*unpack_row)(GgmlType type, const uint8_t* src, int64_t nb, PanelRow p);
};
namespace scalar {
extern const MatmulKernels kernels;
}
namespace avx2 {
extern const MatmulKernels kernels;
}

// AVX-512 kernels (matmul_avx512.cpp), callable when use_avx512().
// Every row block's pre-fill panel made once (matmul_avx512.cpp describes the layout).
std::shared_ptr<const PackedWeight> pack_weight_avx512(const MatmulWeight& w, ThreadPool& pool);
// Pre-fill: y_i = W_i x for n tokens whose activations are already quantized (a: n x nb,
// token-major), all matrices in one parallel region.
void matmul_prefill_avx512(const MatmulOut* outs, int count, const ActQ16* a, int64_t n, ThreadPool& pool);
// The same for 8-bit activations and Q4_0/Q4_1/Q8_0 weights (matmul_act8_avx512.cpp): byte panels.
std::shared_ptr<const PackedWeight> pack_weight_act8_avx512(const MatmulWeight& w, ThreadPool& pool);
void matmul_prefill_act8_avx512(const MatmulOut* outs, int count, const ActQ8* a, int64_t n, ThreadPool& pool);

}  // namespace duo::mm
