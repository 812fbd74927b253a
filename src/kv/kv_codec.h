// CPU encoders and decoders of KV rows: 16-bit rows, and KIVI groups in the page layout of
// kv_quant.h (the CUDA kernels write the same bytes; kv_quant.h holds the shared arithmetic).
#pragma once
#include <cstdint>

#include "duo/kv_type.h"

namespace duo {

// n float rows (src_stride floats apart) -> rows of `type` (F32, BF16 or F16) at dst, d elements
// each, packed (row stride d).
void encode_rows(KvType type, const float* src, int64_t src_stride, int64_t n, int d, void* dst);
// n rows of `type` (stride elements apart) -> packed float rows of d values.
void decode_rows(KvType type, const void* src, int64_t stride, int64_t n, int d, float* dst);

// Quantizes one complete group of kvq::kGroup positions (float rows of d values, packed) into
// group gi (0..3) of a K page and a V page of `bits` (8 or 4). d must be a multiple of 64.
void quantize_group(const float* k, const float* v, int d, int bits, int gi, uint8_t* kpage, uint8_t* vpage);
// Rows [r0, r0 + n) of group gi back to float rows (packed, d values each).
void dequantize_group(const uint8_t* kpage, const uint8_t* vpage, int d, int bits, int gi, int r0, int n, float* k,
                      float* v);

}  // namespace duo
