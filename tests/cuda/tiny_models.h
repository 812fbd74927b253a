// Small random model shapes for the GPU forward tests (forward_test, batch_step_test): every
// code path of the forward at a size that runs in milliseconds.
#pragma once
#include <cstdint>
#include <random>
#include <vector>

#include "model/config.h"

namespace duo::cuda::test {

// Llama-like (interleaved RoPE, tied embeddings) or Qwen-like (neox RoPE, QKV bias), GQA 8/2,
// head dim 64 (the CUDA attention kernels take 64 or 128).
inline ModelConfig tiny_model(bool qwen_like) {
  ModelConfig c;
  c.arch = qwen_like ? "qwen2" : "llama";
  c.name = qwen_like ? "tiny-qwen" : "tiny-llama";
  c.n_layers = 3;
  c.n_embd = 256;
  c.n_heads = 8;
  c.n_kv_heads = 2;
  c.head_dim = 64;
  c.n_ff = 512;
  c.n_vocab = 512;
  c.n_ctx_train = 4096;
  c.rope_theta = qwen_like ? 1e6f : 10000.0f;
  c.rope_style = qwen_like ? RopeStyle::Neox : RopeStyle::Interleaved;
  c.qkv_bias = qwen_like;
  c.tied_embeddings = !qwen_like;
  return c;
}

// n seeded random token ids below vocab.
inline std::vector<int32_t> random_tokens(int n, int vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> u(0, vocab - 1);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = u(rng);
  return t;
}

}  // namespace duo::cuda::test
