#include "duo/logit_adjust.h"

namespace duo {

void TokenHistory::add_prompt(const int32_t* ids, int64_t n) {
  for (int64_t i = 0; i < n; ++i) ++prompt_[ids[i]];
}

void apply_logit_adjust(const LogitAdjust& a, const TokenHistory& h, float* logits, int n_vocab) {
  if (a.repetition_penalty != 1.0f) {
    auto penalize = [&](int32_t id) {
      if (id < 0 || id >= n_vocab) return;
      float& x = logits[id];
      x = x > 0.0f ? x / a.repetition_penalty : x * a.repetition_penalty;
    };
    // Each distinct token once, whether it came from the prompt, the output or both.
    for (const auto& [id, c] : h.prompt()) penalize(id);
    for (const auto& [id, c] : h.output())
      if (!h.prompt().count(id)) penalize(id);
  }
  if (a.presence_penalty != 0.0f || a.frequency_penalty != 0.0f)
    for (const auto& [id, c] : h.output())
      if (id >= 0 && id < n_vocab) logits[id] -= a.presence_penalty + a.frequency_penalty * (float)c;
  for (const auto& [id, b] : a.logit_bias)
    if (id >= 0 && id < n_vocab) logits[id] += b;
}

}  // namespace duo
