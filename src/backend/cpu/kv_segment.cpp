#include "backend/cpu/kv_segment.h"

#include "core/error.h"
#include "kv/kv_codec.h"

namespace duo {

void segment_rows(const KvSegment& s, int64_t r0, int64_t n, int d, float* k, float* v) {
  DUO_CHECK(r0 >= 0 && n >= 0 && r0 + n <= s.n, "segment_rows: rows [{}, {}) outside a segment of {}", r0, r0 + n,
            s.n);
  switch (s.type) {
    case KvType::F32:
      decode_rows(KvType::F32, s.k + r0 * s.stride, s.stride, n, d, k);
      decode_rows(KvType::F32, s.v + r0 * s.stride, s.stride, n, d, v);
      return;
    case KvType::BF16:
    case KvType::F16:
      decode_rows(s.type, static_cast<const uint16_t*>(s.kx) + r0 * s.stride, s.stride, n, d, k);
      decode_rows(s.type, static_cast<const uint16_t*>(s.vx) + r0 * s.stride, s.stride, n, d, v);
      return;
    case KvType::Q8:
    case KvType::Q4:
      dequantize_group(static_cast<const uint8_t*>(s.kx), static_cast<const uint8_t*>(s.vx), d, quant_bits(s.type),
                       s.group, (int)r0, (int)n, k, v);
      return;
    case KvType::Default: break;
  }
  fail("segment_rows: segment without a format");
}

}  // namespace duo
