#include "core/nonfinite_scan.h"

#include <cstddef>
#include <cstring>

#include "core/quant_blocks.h"

namespace duo {
namespace {

// Exponent bits all ones: infinity or NaN, for an IEEE value of the given exponent mask.
template <class U, U kExp>
int64_t scan_plain(const void* data, int64_t n) {
  const auto* p = static_cast<const U*>(data);
  constexpr int64_t kChunk = 4096;  // branch-free inner loop (vectorised), early exit per chunk
  for (int64_t c = 0; c < n; c += kChunk) {
    const int64_t e = c + kChunk < n ? c + kChunk : n;
    bool bad = false;
    for (int64_t i = c; i < e; ++i) bad |= (p[i] & kExp) == kExp;
    if (bad)
      for (int64_t i = c; i < e; ++i)
        if ((p[i] & kExp) == kExp) return i;
  }
  return -1;
}

bool bad_half(const uint8_t* at) {
  uint16_t h;
  std::memcpy(&h, at, 2);
  return (h & 0x7c00) == 0x7c00;
}

bool bad_float(const uint8_t* at) {
  uint32_t f;
  std::memcpy(&f, at, 4);
  return (f & 0x7f800000u) == 0x7f800000u;
}

// The scales of each block: fp16 fields at the given offsets (a float one for Q8_K).
template <class Block>
int64_t scan_blocks(const void* data, int64_t n_blocks, int64_t block_elems, std::initializer_list<size_t> halves,
                    bool float_first = false) {
  const auto* p = static_cast<const uint8_t*>(data);
  for (int64_t b = 0; b < n_blocks; ++b) {
    const uint8_t* blk = p + (size_t)b * sizeof(Block);
    bool bad = float_first && bad_float(blk);
    for (size_t off : halves) bad |= bad_half(blk + off);
    if (bad) return b * block_elems;
  }
  return -1;
}

}  // namespace

int64_t first_nonfinite(GgmlType type, const void* data, int64_t n) {
  const int64_t nb32 = n / QK, nb256 = n / QK_K;
  switch (type) {
    case GgmlType::F32: return scan_plain<uint32_t, 0x7f800000u>(data, n);
    case GgmlType::F16: return scan_plain<uint16_t, 0x7c00>(data, n);
    case GgmlType::BF16: return scan_plain<uint16_t, 0x7f80>(data, n);
    case GgmlType::Q4_0: return scan_blocks<BlockQ4_0>(data, nb32, QK, {offsetof(BlockQ4_0, d)});
    case GgmlType::Q4_1: return scan_blocks<BlockQ4_1>(data, nb32, QK, {offsetof(BlockQ4_1, d), offsetof(BlockQ4_1, m)});
    case GgmlType::Q5_0: return scan_blocks<BlockQ5_0>(data, nb32, QK, {offsetof(BlockQ5_0, d)});
    case GgmlType::Q5_1: return scan_blocks<BlockQ5_1>(data, nb32, QK, {offsetof(BlockQ5_1, d), offsetof(BlockQ5_1, m)});
    case GgmlType::Q8_0: return scan_blocks<BlockQ8_0>(data, nb32, QK, {offsetof(BlockQ8_0, d)});
    case GgmlType::Q8_1: return scan_blocks<BlockQ8_1>(data, nb32, QK, {offsetof(BlockQ8_1, d), offsetof(BlockQ8_1, s)});
    case GgmlType::Q4_K:
      return scan_blocks<BlockQ4_K>(data, nb256, QK_K, {offsetof(BlockQ4_K, d), offsetof(BlockQ4_K, dmin)});
    case GgmlType::Q5_K:
      return scan_blocks<BlockQ5_K>(data, nb256, QK_K, {offsetof(BlockQ5_K, d), offsetof(BlockQ5_K, dmin)});
    case GgmlType::Q6_K: return scan_blocks<BlockQ6_K>(data, nb256, QK_K, {offsetof(BlockQ6_K, d)});
    case GgmlType::Q2_K:
      return scan_blocks<BlockQ2_K>(data, nb256, QK_K, {offsetof(BlockQ2_K, d), offsetof(BlockQ2_K, dmin)});
    case GgmlType::Q3_K: return scan_blocks<BlockQ3_K>(data, nb256, QK_K, {offsetof(BlockQ3_K, d)});
    case GgmlType::IQ4_NL: return scan_blocks<BlockIQ4_NL>(data, nb32, QK, {offsetof(BlockIQ4_NL, d)});
    case GgmlType::IQ4_XS: return scan_blocks<BlockIQ4_XS>(data, nb256, QK_K, {offsetof(BlockIQ4_XS, d)});
    case GgmlType::Q8_K: return scan_blocks<BlockQ8_K>(data, nb256, QK_K, {}, true);
    default: return -1;
  }
}

}  // namespace duo
