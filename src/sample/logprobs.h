// Log-probabilities of a logit row (log-softmax, in double for the sum), as the OpenAI
// `logprobs` fields report them: the picked token's and the `top` most likely tokens'.
#pragma once
#include <cstdint>
#include <utility>
#include <vector>

namespace duo {

struct TokenLogprobs {
  int32_t id = -1;
  float logprob = 0.0f;
  std::vector<std::pair<int32_t, float>> top;  // most likely first (lower id first on ties)
};

TokenLogprobs token_logprobs(const float* logits, int n_vocab, int32_t picked, int top);

}  // namespace duo
