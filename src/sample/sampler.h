// Token sampling: greedy, or temperature with optional top-k and top-p (nucleus), seeded.
#pragma once
#include <cstdint>
#include <random>
#include <vector>

namespace duo {

struct SamplerConfig {
  float temperature = 0.0f;  // <= 0: greedy (argmax)
  int top_k = 0;             // 0: no top-k cut
  float top_p = 1.0f;        // 1: no nucleus cut
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(SamplerConfig cfg);
  int32_t sample(const float* logits, int n_vocab);
  const SamplerConfig& config() const { return cfg_; }
  // A uniform number in [0, 1) from this sampler's generator: device-side sampling (CUDA)
  // draws its random number here, so a seed still makes a run reproducible.
  double uniform01();

  // Index of the largest value (the first one on ties), as greedy decoding uses.
  static int32_t argmax(const float* logits, int n);

 private:
  SamplerConfig cfg_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> cand_;
};

}  // namespace duo
