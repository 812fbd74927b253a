// Plain reference dequantizers, one per supported GGUF type. These define what a quantized
// tensor means; every optimized kernel is tested against them.
#pragma once
#include <cstdint>

#include "core/ggml_types.h"

namespace duo {

// Writes n floats decoded from `src` (which holds n elements of `type`; n a multiple of
// the block size). Throws duo::Error for a type without a dequantizer.
void dequantize_row(GgmlType type, const void* src, float* dst, int64_t n);

// 6-bit scale and min of sub-block j (0..7) from the 12 packed bytes of a Q4_K/Q5_K block.
void kquant_scale_min(int j, const uint8_t* scales, uint8_t& sc, uint8_t& m);

// The 16 signed sub-block scales (sc - 32, -32..31) of a Q3_K block from its 12 packed bytes.
void q3k_scales(const uint8_t* packed, int8_t out[16]);

// The signed scale (ls - 32, -32..31) of 32-block ib (0..7) of an IQ4_XS super-block.
int iq4xs_scale(uint16_t scales_h, const uint8_t* scales_l, int ib);

}  // namespace duo
