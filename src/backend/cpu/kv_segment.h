// What a KV head exposes to attention: KvSegments, runs of consecutive positions whose keys and
// values are stored in one format. Attention reads f32 segments in place and converts the others
// a block of rows at a time (segment_rows), never a whole cache.
#pragma once
#include <cstdint>

#include "duo/kv_type.h"

namespace duo {

// Keys and values of positions [pos0, pos0 + n) of one head.
//  - type F32: row r is at k + r * stride, v + r * stride (floats);
//  - BF16 / F16: row r at kx, vx + r * stride (16-bit elements);
//  - Q8 / Q4: one complete quantized group (n = 64) of a page (kv_quant.h): kx, vx are the K and V
//    pages' bytes and `group` the group's index in them (0..3).
struct KvSegment {
  const float* k = nullptr;
  const float* v = nullptr;
  int64_t pos0 = 0;
  int64_t n = 0;
  int64_t stride = 0;  // elements between consecutive rows (F32, BF16, F16)
  KvType type = KvType::F32;
  const void* kx = nullptr;
  const void* vx = nullptr;
  int group = 0;
};

// Rows [r0, r0 + n) of a segment as float rows of d values (k and v: n * d floats each).
void segment_rows(const KvSegment& s, int64_t r0, int64_t n, int d, float* k, float* v);

}  // namespace duo
