// Tensor element types as numbered by the GGUF format, with their block geometry.
// A quantized row of n elements is n / block_elems blocks of block_bytes each.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace duo {

enum class GgmlType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  IQ4_NL = 20,
  IQ4_XS = 23,
  BF16 = 30,
};

struct TypeTraits {
  const char* name;
  int64_t block_elems;   // elements per block (1 for plain float types)
  size_t block_bytes;    // bytes per block
  bool can_dequantize;   // the engine has a dequantizer for it
};

// Traits of a raw GGUF type id, or nullptr when the id is unknown to us.
const TypeTraits* type_traits(uint32_t raw_type);
const TypeTraits& type_traits(GgmlType t);
inline const char* type_name(GgmlType t) { return type_traits(t).name; }

// Bytes of a row of n elements; n must be a multiple of the block size (checked by callers
// that read untrusted input, e.g. the GGUF reader).
size_t row_bytes(GgmlType t, int64_t n);

}  // namespace duo
