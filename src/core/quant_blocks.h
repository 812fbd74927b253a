// Memory layout of the GGUF quantized blocks (the on-disk format; see the GGUF spec).
// Scales are IEEE half stored as raw uint16 (convert with f16_to_f32).
#pragma once
#include <cstdint>

namespace duo {

constexpr int QK = 32;     // elements per block of the 32-element formats
constexpr int QK_K = 256;  // elements per super-block of the k-quant formats

struct BlockQ4_0 { uint16_t d; uint8_t qs[QK / 2]; };
struct BlockQ4_1 { uint16_t d, m; uint8_t qs[QK / 2]; };
struct BlockQ5_0 { uint16_t d; uint8_t qh[4]; uint8_t qs[QK / 2]; };
struct BlockQ5_1 { uint16_t d, m; uint8_t qh[4]; uint8_t qs[QK / 2]; };
struct BlockQ8_0 { uint16_t d; int8_t qs[QK]; };
struct BlockQ8_1 { uint16_t d, s; int8_t qs[QK]; };  // s = d * sum(qs)
struct BlockQ4_K { uint16_t d, dmin; uint8_t scales[12]; uint8_t qs[QK_K / 2]; };
struct BlockQ5_K { uint16_t d, dmin; uint8_t scales[12]; uint8_t qh[QK_K / 8]; uint8_t qs[QK_K / 2]; };
struct BlockQ6_K { uint8_t ql[QK_K / 2]; uint8_t qh[QK_K / 4]; int8_t scales[QK_K / 16]; uint16_t d; };
struct BlockQ8_K { float d; int8_t qs[QK_K]; int16_t bsums[QK_K / 16]; };
// Q2_K: 16 sub-blocks of 16, each a 4-bit scale (low nibble) and 4-bit min (high nibble) of
// scales[i]; w = d * sc * q - dmin * m with 2-bit q.
struct BlockQ2_K { uint8_t scales[QK_K / 16]; uint8_t qs[QK_K / 4]; uint16_t d, dmin; };
// Q3_K: 16 sub-blocks of 16 with 6-bit scales packed in 12 bytes; w = d * (sc - 32) * q with
// q = (2 low bits from qs) - (4 unless the hmask bit is set), -4..3.
struct BlockQ3_K { uint8_t hmask[QK_K / 8]; uint8_t qs[QK_K / 4]; uint8_t scales[12]; uint16_t d; };
// IQ4_NL: nibbles index kIq4nlValues (a non-uniform 4-bit grid); w = d * value.
struct BlockIQ4_NL { uint16_t d; uint8_t qs[QK / 2]; };
// IQ4_XS: IQ4_NL's grid in a 256 super-block with a 6-bit scale per 32 (low 4 bits in
// scales_l, high 2 in scales_h); w = d * (ls - 32) * value.
struct BlockIQ4_XS { uint16_t d; uint16_t scales_h; uint8_t scales_l[QK_K / 64]; uint8_t qs[QK_K / 2]; };
// The IQ4 grid (ggml's kvalues_iq4nl).
inline constexpr int8_t kIq4nlValues[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

static_assert(sizeof(BlockQ4_0) == 18 && sizeof(BlockQ4_1) == 20 && sizeof(BlockQ5_0) == 22 &&
              sizeof(BlockQ5_1) == 24 && sizeof(BlockQ8_0) == 34 && sizeof(BlockQ8_1) == 36);
static_assert(sizeof(BlockQ4_K) == 144 && sizeof(BlockQ5_K) == 176 && sizeof(BlockQ6_K) == 210 &&
              sizeof(BlockQ8_K) == 292);
static_assert(sizeof(BlockQ2_K) == 84 && sizeof(BlockQ3_K) == 110 && sizeof(BlockIQ4_NL) == 18 &&
              sizeof(BlockIQ4_XS) == 136);

}  // namespace duo
