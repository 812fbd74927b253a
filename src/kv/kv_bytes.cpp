#include "kv/kv_bytes.h"

#include <algorithm>

#include "core/error.h"
#include "kv/kv_quant.h"

namespace duo {

size_t kv_page_bytes(KvType type, int head_dim) {
  DUO_CHECK(type != KvType::Default, "KV byte accounting: resolve the KV type first");
  if (is_quantized(type)) return (size_t)kvq::QuantLayout{head_dim, quant_bits(type)}.page_bytes();
  return (size_t)row_elem_bytes(type) * kPageTokens * head_dim;
}

size_t kv_head_bytes(HeadKind kind, int head_dim, StreamingWindow w, int64_t n_past, KvType type) {
  const size_t row = (size_t)row_elem_bytes(type) * head_dim;
  if (kind == HeadKind::Retrieval) {
    const size_t pages = (size_t)((std::max<int64_t>(n_past, 0) + kPageTokens - 1) / kPageTokens);
    size_t b = pages * 2 * kv_page_bytes(type, head_dim);
    if (is_quantized(type)) b += 2 * row * (size_t)(kvq::sink16(w.sink) + kvq::kGroup);  // bf16 sink + residual rows
    return b;
  }
  return 2 * row * (size_t)w.rows();
}

size_t kv_plan_bytes(const HeadPlan& plan, KvType type, int head_dim, int64_t n_past, HeadKind kind,
                     const std::vector<int>& layer_window) {
  DUO_CHECK(layer_window.empty() || layer_window.size() == plan.kinds.size(),
            "KV byte accounting: one layer window a layer");
  size_t b = 0;
  for (size_t l = 0; l < plan.kinds.size(); ++l) {
    const auto& layer = plan.kinds[l];
    const int w = layer_window.empty() ? 0 : layer_window[l];
    if (w > 0) {  // as the cache builds such a layer: every head a no-sink streaming head of w rows
      if (kind == HeadKind::Streaming)
        b += layer.size() * kv_head_bytes(kind, head_dim, StreamingWindow{0, w}, n_past, type);
    } else {
      b += (size_t)std::count(layer.begin(), layer.end(), kind) *
           kv_head_bytes(kind, head_dim, plan.window, n_past, type);
    }
  }
  return b;
}

size_t kv_plan_bytes(const HeadPlan& plan, KvType type, int head_dim, int64_t n_past,
                     const std::vector<int>& layer_window) {
  return kv_plan_bytes(plan, type, head_dim, n_past, HeadKind::Retrieval, layer_window) +
         kv_plan_bytes(plan, type, head_dim, n_past, HeadKind::Streaming, layer_window);
}

}  // namespace duo
