#include "duo/kv_type.h"

#include "core/error.h"

namespace duo {

KvType parse_kv_type(const std::string& s) {
  if (s == "default" || s.empty()) return KvType::Default;
  if (s == "f32") return KvType::F32;
  if (s == "bf16") return KvType::BF16;
  if (s == "f16") return KvType::F16;
  if (s == "q8") return KvType::Q8;
  if (s == "q4") return KvType::Q4;
  fail("unknown KV cache type '{}' (expected f32, bf16, f16, q8 or q4)", s);
}

const char* to_string(KvType t) {
  switch (t) {
    case KvType::Default: return "default";
    case KvType::F32: return "f32";
    case KvType::BF16: return "bf16";
    case KvType::F16: return "f16";
    case KvType::Q8: return "q8";
    case KvType::Q4: return "q4";
  }
  return "?";
}

}  // namespace duo
