#include "sample/logprobs.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace duo {

TokenLogprobs token_logprobs(const float* logits, int n_vocab, int32_t picked, int top) {
  float mx = -INFINITY;
  for (int i = 0; i < n_vocab; ++i) mx = std::max(mx, logits[i]);
  double sum = 0.0;
  for (int i = 0; i < n_vocab; ++i) sum += std::exp((double)logits[i] - mx);
  const double log_z = mx + std::log(sum);
  auto lp = [&](int32_t id) { return (float)((double)logits[id] - log_z); };
  TokenLogprobs out;
  out.id = picked;
  out.logprob = picked >= 0 && picked < n_vocab ? lp(picked) : -INFINITY;
  top = std::clamp(top, 0, n_vocab);
  if (top > 0) {
    std::vector<int32_t> ids(n_vocab);
    std::iota(ids.begin(), ids.end(), 0);
    std::partial_sort(ids.begin(), ids.begin() + top, ids.end(), [&](int32_t a, int32_t b) {
      return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    });
    for (int i = 0; i < top; ++i) out.top.push_back({ids[i], lp(ids[i])});
  }
  return out;
}

}  // namespace duo
