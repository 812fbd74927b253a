// Changes to a sequence's logits before a token is picked, as the OpenAI and vLLM APIs define
// them: a per-token bias (logit_bias), the repetition penalty (HF transformers / vLLM: a seen
// token's positive logit is divided by the penalty, a negative one multiplied, over prompt and
// output tokens), and the presence and frequency penalties (OpenAI: subtracted once for an
// output token seen at all, and once per time it was seen; output tokens only).
#pragma once
#include <cstdint>
#include <unordered_map>
#include <utility>
#include <vector>

namespace duo {

struct LogitAdjust {
  float repetition_penalty = 1.0f;  // > 0; 1: off
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  std::vector<std::pair<int32_t, float>> logit_bias;  // token id, added to its logit
  bool active() const {
    return repetition_penalty != 1.0f || presence_penalty != 0.0f || frequency_penalty != 0.0f || !logit_bias.empty();
  }
};

// The tokens a sequence has seen: prompt tokens (repetition penalty only) and output tokens
// with their counts.
class TokenHistory {
 public:
  void add_prompt(const int32_t* ids, int64_t n);
  void add_output(int32_t id) { ++output_[id]; }
  const std::unordered_map<int32_t, int>& output() const { return output_; }
  const std::unordered_map<int32_t, int>& prompt() const { return prompt_; }

 private:
  std::unordered_map<int32_t, int> prompt_, output_;
};

// Applies `a` to logits[0..n_vocab) in place. Bias entries outside the vocabulary are skipped
// (the request parser refuses them before they get here).
void apply_logit_adjust(const LogitAdjust& a, const TokenHistory& h, float* logits, int n_vocab);

}  // namespace duo
