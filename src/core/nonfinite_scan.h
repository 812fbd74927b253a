// Finds a non-finite value (NaN or infinity) a weight tensor holds, cheaply enough to run on every
// weight at load: every value of F32 / F16 / BF16 tensors (one pass over the bytes), the
// floating-point scales of quantized blocks (their codes are integers, so a block decodes to
// non-finite values only through a non-finite scale). A NaN weight would otherwise turn every
// activation it touches into NaN with no error.
#pragma once
#include <cstdint>

#include "core/ggml_types.h"

namespace duo {

// Index of the first element (or of the first element of the first block) found non-finite, or
// -1. Types with no rule here (none that the engine can dequantize) return -1.
int64_t first_nonfinite(GgmlType type, const void* data, int64_t n_elements);

}  // namespace duo
