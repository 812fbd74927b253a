// Inputs shared by the two runs of the CUDA calibration backend against the CPU gated model:
// on the GPU (tests/cuda/calib_model_test.cpp) and under the CPU emulation of the CUDA runtime
// (tests/calibrate/emulated_cuda/cuda_gated_model_emulation.cpp). Both must see the same tiny
// models, tokens and samples, since the emulation exists to predict the GPU run.
#pragma once
#include <cstdint>
#include <random>
#include <vector>

#include "calibrate/calibrator.h"
#include "duo/head_plan.h"
#include "model/config.h"

namespace duo::calib_fixtures {

inline ModelConfig tiny(RopeStyle style, bool bias, int head_dim) {
  ModelConfig c;
  c.arch = style == RopeStyle::Neox ? "qwen2" : "llama";
  c.name = "tiny";
  c.n_layers = 2;
  c.n_embd = 128;
  c.n_ff = 192;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = head_dim;  // the CUDA attention kernels take 64 or 128
  c.n_rot = head_dim;
  c.n_vocab = 64;
  c.n_ctx_train = 4096;
  c.rope_theta = style == RopeStyle::Neox ? 1e6f : 10000.0f;
  c.norm_eps = 1e-5f;
  c.rope_style = style;
  c.qkv_bias = bias;
  return c;
}

inline std::vector<int32_t> random_tokens(int64_t n, int vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> t((size_t)n);
  for (auto& x : t) x = (int32_t)(rng() % (uint64_t)vocab);
  return t;
}

// 200 tokens cross 64- and 128-row blocks (not a multiple of either); the window (sink 4,
// recent 40) makes streaming attention differ from full attention in every layer.
constexpr int64_t kTokens = 200;
inline const StreamingWindow kWindow{4, 40};
inline const std::vector<int64_t> kRows = {70, 101, 102, 150, 199};

// Random-token samples of 150-249 tokens whose last 8 are the answer, for short calibrations.
class RandomSamples : public SampleSource {
 public:
  PasskeySample next(std::mt19937_64& rng) override {
    PasskeySample s;
    const int64_t n = 150 + (int64_t)uniform_below(rng, 100);
    for (int64_t i = 0; i < n; ++i) s.tokens.push_back((int32_t)uniform_below(rng, 64));
    s.answer_mask.assign((size_t)n, 0);
    for (int64_t i = n - 8; i < n; ++i) s.loss_rows.push_back(i), s.answer_mask[i] = 1;
    return s;
  }
};

}  // namespace duo::calib_fixtures
