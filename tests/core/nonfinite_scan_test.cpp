// first_nonfinite: every value of plain float tensors, the scales of quantized blocks, against
// buffers with one NaN / infinity planted at a known place (and none: -1).
#include <gtest/gtest.h>

#include <cstring>
#include <limits>
#include <vector>

#include "core/nonfinite_scan.h"
#include "core/quant_blocks.h"

namespace duo {
namespace {

constexpr uint16_t kHalfNan = 0x7e00, kHalfInf = 0x7c00, kHalfOne = 0x3c00, kHalfMax = 0x7bff;

TEST(NonFiniteScan, PlainFloatTypes) {
  std::vector<float> f(10000, 1.0f);
  EXPECT_EQ(first_nonfinite(GgmlType::F32, f.data(), (int64_t)f.size()), -1);
  f[9000] = std::numeric_limits<float>::infinity();
  f[9500] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(first_nonfinite(GgmlType::F32, f.data(), (int64_t)f.size()), 9000);
  f[9000] = std::numeric_limits<float>::max();  // large but finite
  EXPECT_EQ(first_nonfinite(GgmlType::F32, f.data(), (int64_t)f.size()), 9500);

  std::vector<uint16_t> h(5000, kHalfMax);
  EXPECT_EQ(first_nonfinite(GgmlType::F16, h.data(), (int64_t)h.size()), -1);
  h[4097] = kHalfInf;
  EXPECT_EQ(first_nonfinite(GgmlType::F16, h.data(), (int64_t)h.size()), 4097);
  EXPECT_EQ(first_nonfinite(GgmlType::F16, h.data(), 4097), -1);  // only the first n elements

  std::vector<uint16_t> b(300, 0x7f7f);  // bf16's largest finite
  EXPECT_EQ(first_nonfinite(GgmlType::BF16, b.data(), (int64_t)b.size()), -1);
  b[3] = 0xffc0;  // a negative NaN
  EXPECT_EQ(first_nonfinite(GgmlType::BF16, b.data(), (int64_t)b.size()), 3);
}

// Codes are integers: any byte pattern in them is finite; only the scales matter.
template <class Block>
void check_blocks(GgmlType type, int block_elems, std::vector<size_t> scale_offsets) {
  std::vector<Block> blocks(5);
  std::memset(blocks.data(), 0xff, sizeof(Block) * blocks.size());  // codes all ones
  auto set_half = [&](int blk, size_t off, uint16_t v) {
    std::memcpy(reinterpret_cast<uint8_t*>(&blocks[blk]) + off, &v, 2);
  };
  for (int i = 0; i < 5; ++i)
    for (size_t off : scale_offsets) set_half(i, off, kHalfOne);
  const int64_t n = 5 * (int64_t)block_elems;
  EXPECT_EQ(first_nonfinite(type, blocks.data(), n), -1) << type_name(type);
  for (size_t off : scale_offsets) {
    set_half(3, off, kHalfNan);
    EXPECT_EQ(first_nonfinite(type, blocks.data(), n), 3 * (int64_t)block_elems) << type_name(type) << " @" << off;
    set_half(3, off, kHalfOne);
  }
}

TEST(NonFiniteScan, QuantizedBlockScales) {
  check_blocks<BlockQ4_0>(GgmlType::Q4_0, QK, {offsetof(BlockQ4_0, d)});
  check_blocks<BlockQ4_1>(GgmlType::Q4_1, QK, {offsetof(BlockQ4_1, d), offsetof(BlockQ4_1, m)});
  check_blocks<BlockQ5_0>(GgmlType::Q5_0, QK, {offsetof(BlockQ5_0, d)});
  check_blocks<BlockQ5_1>(GgmlType::Q5_1, QK, {offsetof(BlockQ5_1, d), offsetof(BlockQ5_1, m)});
  check_blocks<BlockQ8_0>(GgmlType::Q8_0, QK, {offsetof(BlockQ8_0, d)});
  check_blocks<BlockQ4_K>(GgmlType::Q4_K, QK_K, {offsetof(BlockQ4_K, d), offsetof(BlockQ4_K, dmin)});
  check_blocks<BlockQ5_K>(GgmlType::Q5_K, QK_K, {offsetof(BlockQ5_K, d), offsetof(BlockQ5_K, dmin)});
  check_blocks<BlockQ6_K>(GgmlType::Q6_K, QK_K, {offsetof(BlockQ6_K, d)});
  check_blocks<BlockQ2_K>(GgmlType::Q2_K, QK_K, {offsetof(BlockQ2_K, d), offsetof(BlockQ2_K, dmin)});
  check_blocks<BlockQ3_K>(GgmlType::Q3_K, QK_K, {offsetof(BlockQ3_K, d)});
  check_blocks<BlockIQ4_NL>(GgmlType::IQ4_NL, QK, {offsetof(BlockIQ4_NL, d)});
  check_blocks<BlockIQ4_XS>(GgmlType::IQ4_XS, QK_K, {offsetof(BlockIQ4_XS, d)});
}

}  // namespace
}  // namespace duo
