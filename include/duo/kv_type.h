// How a KV cache stores its keys and values (`--kv-type`). Plain enum and constexpr helpers,
// usable from host and device code alike.
//  - f32:  float rows (the CPU cache's default; exact).
//  - bf16, f16: 16-bit rows (bf16 is the CUDA cache's default).
//  - q8, q4: KIVI-style grouped quantization of the retrieval heads' pages (kv/kv_quant.h): keys
//    per channel over groups of 64 tokens, values per token over groups of 64 channels. The
//    first ceil(sink / 64) * 64 positions (attention sinks) and the last, incomplete group (the
//    residual) stay in bf16 rows, as do streaming heads' sink + ring buffers (small, constant).
#pragma once
#include <cstdint>
#include <string>

namespace duo {

enum class KvType : uint8_t { Default, F32, BF16, F16, Q8, Q4 };

// "f32" | "bf16" | "f16" | "q8" | "q4" | "default" (fails on anything else).
KvType parse_kv_type(const std::string& s);
const char* to_string(KvType t);

constexpr bool is_quantized(KvType t) { return t == KvType::Q8 || t == KvType::Q4; }
constexpr int quant_bits(KvType t) { return t == KvType::Q8 ? 8 : t == KvType::Q4 ? 4 : 0; }
// The format of the rows a cache of type t keeps unquantized (streaming heads' buffers, the
// pages of unquantized types, the sink rows and the residual group of quantized ones).
constexpr KvType row_type(KvType t) { return is_quantized(t) ? KvType::BF16 : t; }
// Bytes of one element of such rows.
constexpr int row_elem_bytes(KvType t) { return row_type(t) == KvType::F32 ? 4 : 2; }

}  // namespace duo
