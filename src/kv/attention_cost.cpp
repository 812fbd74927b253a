#include "kv/attention_cost.h"

#include <algorithm>

namespace duo {

namespace {
// sum_{k = a + 1}^{b} k for 0 <= a <= b, in double (exact below 2^53).
double arith(int64_t a, int64_t b) { return b <= a ? 0.0 : ((double)b * (b + 1) - (double)a * (a + 1)) / 2.0; }
}  // namespace

double visible_pairs(HeadKind kind, const StreamingWindow& w, int64_t pos0, int64_t n) {
  // Query i sees keys 0..i (retrieval) or min(i + 1, W) of them (streaming, W = sink + recent);
  // with k = i + 1 running over (pos0, pos0 + n]: sum of k, or of min(k, W).
  const int64_t a = pos0, b = pos0 + n;
  if (kind == HeadKind::Retrieval) return arith(a, b);
  const int64_t W = w.rows();
  const int64_t mid = std::clamp(W, a, b);  // k <= mid counts k, k > mid counts W
  return arith(a, mid) + (double)W * (double)(b - mid);
}

double prefill_attention_flops(const ModelConfig& c, const HeadPlan& plan, int64_t length, int64_t chunk) {
  double pairs = 0;
  const int g = c.group_size();
  for (int64_t p0 = 0; p0 < length; p0 += chunk) {
    const int64_t n = std::min(chunk, length - p0);
    const double r = visible_pairs(HeadKind::Retrieval, plan.window, p0, n);
    const double s = visible_pairs(HeadKind::Streaming, plan.window, p0, n);
    for (const auto& layer : plan.kinds)
      for (HeadKind k : layer) pairs += g * (k == HeadKind::Retrieval ? r : s);
  }
  return 4.0 * c.head_dim * pairs;
}

double decode_attention_bytes(const ModelConfig& c, const HeadPlan& plan, int64_t n_past, int elem_bytes) {
  const int64_t W = plan.window.rows();
  double rows = 0;
  for (const auto& layer : plan.kinds)
    for (HeadKind k : layer) rows += (double)(k == HeadKind::Retrieval ? n_past : std::min(n_past, W));
  return rows * 2.0 * elem_bytes * c.head_dim;
}

}  // namespace duo
