#include "core/ggml_types.h"

#include "core/error.h"

namespace duo {

namespace {
struct Entry {
  uint32_t id;
  TypeTraits traits;
};
// Block sizes follow the GGUF/ggml format definitions.
constexpr Entry kTypes[] = {
    {0, {"F32", 1, 4, true}},       {1, {"F16", 1, 2, true}},
    {2, {"Q4_0", 32, 18, true}},    {3, {"Q4_1", 32, 20, true}},
    {6, {"Q5_0", 32, 22, true}},    {7, {"Q5_1", 32, 24, true}},
    {8, {"Q8_0", 32, 34, true}},    {9, {"Q8_1", 32, 36, false}},
    {10, {"Q2_K", 256, 84, true}},  {11, {"Q3_K", 256, 110, true}},
    {12, {"Q4_K", 256, 144, true}}, {13, {"Q5_K", 256, 176, true}},
    {14, {"Q6_K", 256, 210, true}}, {15, {"Q8_K", 256, 292, false}},
    {20, {"IQ4_NL", 32, 18, true}}, {23, {"IQ4_XS", 256, 136, true}},
    {30, {"BF16", 1, 2, true}},
};
}  // namespace

const TypeTraits* type_traits(uint32_t raw_type) {
  for (const auto& e : kTypes)
    if (e.id == raw_type) return &e.traits;
  return nullptr;
}

const TypeTraits& type_traits(GgmlType t) {
  const TypeTraits* tt = type_traits(static_cast<uint32_t>(t));
  DUO_CHECK(tt != nullptr, "unknown tensor type id {}", static_cast<uint32_t>(t));
  return *tt;
}

size_t row_bytes(GgmlType t, int64_t n) {
  const TypeTraits& tt = type_traits(t);
  DUO_CHECK(n % tt.block_elems == 0, "row of {} elements is not a whole number of {} blocks ({})", n,
            tt.name, tt.block_elems);
  return static_cast<size_t>(n / tt.block_elems) * tt.block_bytes;
}

}  // namespace duo
