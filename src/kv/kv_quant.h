// KIVI-style KV quantization (Liu et al., 2024: keys per channel, values per token), shared by
// the CPU cache (kv_cache.cpp) and the CUDA kernels (backend/cuda/kv_quant.cu, decode_mma.cu,
// prefill.cu): the same functions compute the scales and codes on both, so a page written on the
// GPU is byte-for-byte the page the CPU writes for the same bf16 rows (tests/cuda compare them).
//
// Groups (G = kGroup = 64):
//  - keys: one (scale, min) per channel per group of 64 consecutive positions. Key outliers sit
//    in fixed channels, so a channel's range over 64 tokens is much tighter than a token's range
//    over its channels;
//  - values: one (scale, min) per position per group of 64 channels.
// Codes are unsigned, x ~ min + scale * q with q in [0, 2^bits - 1]. (scale, min) are stored as
// two IEEE halves in one 32-bit word (scale in the low half, min in the high half) with min
// rounded down and scale rounded up, so every x of the group lies in [min, min + levels * scale]
// and the round trip error is |x - x^| <= scale / 2 (up to float rounding of the arithmetic) in
// terms of the stored scale. Inputs are clamped to the half range +-65504 first.
//
// Page layout of one retrieval head (kPageTokens = 256 positions = 4 groups, defined with
// kGroup, sink16 and QuantLayout in duo/duo_policy.h; rb = d * bits / 8
// bytes of codes a position; q4 packs element 2i in the low nibble of byte i, 2i + 1 in the high):
//   K page: [256][rb] codes (position-major) | [4 groups][d channels] params
//   V page: [256][rb] codes                  | [256 positions][d / 64 channel groups] params
// Both pages are page_bytes() = 256 rb + 16 d bytes: with d = 128, q4 pages are 18432 bytes and
// q8 pages 34816 where a bf16 page is 65536: 4.5 and 8.5 bits an element (3.56x and 1.88x less).
// Only complete groups are quantized; positions < sink16(sink) and the positions of the last,
// incomplete group stay in 16-bit rows elsewhere (see kv_type.h).
#pragma once
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "duo/duo_policy.h"
#include "duo/host_device.h"
#if defined(__CUDACC__)
#include <cuda_fp16.h>
#endif

#if !defined(__CUDA_ARCH__)
#include "core/fp16.h"
#endif

namespace duo::kvq {

constexpr float kHalfMax = 65504.0f;

DUO_HD float half_to_float(uint16_t h) {
#if defined(__CUDA_ARCH__)
  return __half2float(__ushort_as_half(h));
#else
  return f16_to_f32(h);
#endif
}

// The neighbouring half values of bit pattern h (toward -inf / +inf); +-0 step to the smallest
// subnormal of the other sign.
DUO_HD uint16_t half_next_down(uint16_t h) {
  if (h == 0x0000) return 0x8001;
  return (h & 0x8000) ? (uint16_t)(h + 1) : (uint16_t)(h - 1);
}
DUO_HD uint16_t half_next_up(uint16_t h) {
  if (h == 0x8000) return 0x0001;
  return (h & 0x8000) ? (uint16_t)(h - 1) : (uint16_t)(h + 1);
}

// The largest half <= f, and the smallest half >= f (f finite, |f| <= 65504).
DUO_HD uint16_t half_round_down(float f) {
#if defined(__CUDA_ARCH__)
  return __half_as_ushort(__float2half_rd(f));
#else
  uint16_t h = f32_to_f16(f);
  if (f16_to_f32(h) > f) h = half_next_down(h);
  return h;
#endif
}
DUO_HD uint16_t half_round_up(float f) {
#if defined(__CUDA_ARCH__)
  return __half_as_ushort(__float2half_ru(f));
#else
  uint16_t h = f32_to_f16(f);
  if (f16_to_f32(h) < f) h = half_next_up(h);
  return h;
#endif
}

DUO_HD int levels(int bits) { return (1 << bits) - 1; }

// The params word of a group whose values lie in [lo, hi] (NaN-free min and max of the group).
DUO_HD uint32_t make_params(float lo, float hi, int bits) {
  lo = fminf(fmaxf(lo, -kHalfMax), kHalfMax);
  hi = fminf(fmaxf(hi, lo), kHalfMax);
  const uint16_t mb = half_round_down(lo);
  const float m = half_to_float(mb);
  const uint16_t sb = half_round_up((hi - m) / (float)levels(bits));
  return (uint32_t)sb | ((uint32_t)mb << 16);
}
DUO_HD float params_scale(uint32_t w) { return half_to_float((uint16_t)(w & 0xffffu)); }
DUO_HD float params_min(uint32_t w) { return half_to_float((uint16_t)(w >> 16)); }

// The code of x: round((x - min) / scale) clamped to [0, levels] (0 for NaN or a zero scale).
DUO_HD int encode(float x, float scale, float min, int bits) {
  if (!(scale > 0.0f)) return 0;
  const float t = (x - min) / scale;
  const int top = levels(bits);
  return t > 0.0f ? (t < (float)top ? (int)rintf(t) : top) : 0;
}
DUO_HD float decode(int code, float scale, float min) { return min + scale * (float)code; }

// Code of element c of a row of codes.
DUO_HD int code_at(const uint8_t* row, int c, int bits) {
  return bits == 8 ? row[c] : (row[c >> 1] >> ((c & 1) * 4)) & 15;
}

}  // namespace duo::kvq
