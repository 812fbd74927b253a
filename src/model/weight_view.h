// A weight matrix of the model's description, as stored (GGUF or safetensors, or a synthetic
// model's floats): what both backends read. The CPU matmul's operand (backend/cpu/matmul.h,
// MatmulWeight) adds its packed panels and activation width to this view.
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/ggml_types.h"

namespace duo {

// `rows` output features, each a contiguous row of `cols` input features encoded in `type`
// (`row_stride` bytes apart).
struct WeightView {
  GgmlType type = GgmlType::F32;
  const uint8_t* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  size_t row_stride = 0;
};

}  // namespace duo
