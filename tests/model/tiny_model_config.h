// The small random model of the CPU forward-pass property tests (chunked pre-fill, attention
// modes, batched forward): 3 layers, GQA 6/2, head dim 16; llama-like or qwen2-like (NeoX RoPE,
// QKV bias, untied embeddings).
#pragma once
#include "model/config.h"

namespace duo::test {

inline ModelConfig tiny_config(bool qwen_like) {
  ModelConfig c;
  c.arch = qwen_like ? "qwen2" : "llama";
  c.n_layers = 3;
  c.n_embd = 96;
  c.n_heads = 6;
  c.n_kv_heads = 2;
  c.head_dim = 16;
  c.n_ff = 160;
  c.n_vocab = 300;
  c.n_ctx_train = 4096;
  c.rope_theta = 10000.0f;
  c.norm_eps = 1e-5f;
  c.rope_style = qwen_like ? RopeStyle::Neox : RopeStyle::Interleaved;
  c.qkv_bias = qwen_like;
  c.tied_embeddings = !qwen_like;
  return c;
}

}  // namespace duo::test
