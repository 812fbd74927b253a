// Token sampling: greedy, or temperature with optional top-k, top-p (nucleus) and min-p, seeded;
// optionally after logit adjustments (bias, repetition / presence / frequency penalties) over
// the tokens the sampler has seen.
//
// Device-side sampling (the CUDA backend's forward_pick and step) implements temperature,
// top-k and top-p only: a config with host_only() set must be sampled here, on the host, from
// the logits (the server's scheduler does so).
#pragma once
#include <cstdint>
#include <random>
#include <vector>

#include "duo/logit_adjust.h"

namespace duo {

struct SamplerConfig {
  float temperature = 0.0f;  // <= 0: greedy (argmax)
  int top_k = 0;             // 0: no top-k cut
  float top_p = 1.0f;        // 1: no nucleus cut
  uint64_t seed = 0;
  // Host-only options (after seed: positional initializers of the fields above keep meaning).
  float min_p = 0.0f;        // 0: off; else drop tokens below min_p x the top token's probability
  LogitAdjust adjust{};      // applied to the logits first (penalties see the sampler's history)
  bool host_only() const { return min_p > 0.0f || adjust.active(); }
};

class Sampler {
 public:
  explicit Sampler(SamplerConfig cfg);
  // Picks a token from the row; with penalties on, the pick joins the output history.
  int32_t sample(const float* logits, int n_vocab);
  // Prompt tokens the repetition penalty counts as seen.
  void add_prompt(const int32_t* ids, int64_t n) { history_.add_prompt(ids, n); }
  const SamplerConfig& config() const { return cfg_; }
  // A uniform number in [0, 1) from this sampler's generator: device-side sampling (CUDA)
  // draws its random number here, so a seed still makes a run reproducible.
  double uniform01();

  // Index of the largest value (the first one on ties), as greedy decoding uses.
  static int32_t argmax(const float* logits, int n);

 private:
  int32_t pick(const float* logits, int n_vocab);
  SamplerConfig cfg_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> cand_;
  std::vector<float> adjusted_;
  TokenHistory history_;
};

}  // namespace duo
