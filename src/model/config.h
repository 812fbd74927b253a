// Hyper-parameters of a llama-family model, read from GGUF metadata and checked for sanity.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace duo {

class GgufFile;
class HfCheckpoint;

// How RoPE pairs the dimensions of a head: llama GGUF files use adjacent pairs (2i, 2i+1)
// (the converter permutes Q/K for it); qwen2 keeps HF's rotate-half layout (i, i + d/2).
enum class RopeStyle { Interleaved, Neox };

struct ModelConfig {
  std::string arch;  // "llama", "qwen2", "qwen3", "gemma3" or (HF directories) "mistral"
  std::string name;
  int n_layers = 0;
  int n_embd = 0;
  int n_ff = 0;
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int n_rot = 0;  // rotated dimensions per head (== head_dim for the supported models)
  int n_vocab = 0;
  int n_ctx_train = 0;
  float rope_theta = 10000.0f;
  float norm_eps = 1e-5f;
  RopeStyle rope_style = RopeStyle::Interleaved;
  bool qkv_bias = false;
  bool tied_embeddings = false;  // no output.weight: the LM head reuses token_embd
  bool qk_norm = false;          // qwen3: RMS norm of each head's q and k (own weights) before RoPE
  // Sliding-window attention over the whole model (mistral's sliding_window), 0 for none. duo
  // has no sliding-window mask: such a model's context is capped at the window (n_ctx_train),
  // inside which full causal attention computes the same thing, and longer is refused.
  int sliding_window = 0;

  // gemma3 (docs/architecture.md "gemma3"). Defaults leave the llama-family forward unchanged.
  bool sandwich_norms = false;   // RMS norms after attention and after the feed-forward too
  bool gelu_mlp = false;         // GeGLU (gelu, tanh approximation) in place of SwiGLU
  float embd_scale = 1.0f;       // embeddings multiplied by this (gemma3: sqrt(n_embd))
  float query_scale = 0.0f;      // attention scale 1/sqrt(this) (query_pre_attn_scalar); 0: head_dim
  float final_softcap = 0.0f;    // logits = c * tanh(logits / c) when > 0
  // Local layers: attention over the last local_window positions only, with RoPE base
  // rope_local_theta and no scaling; the other (global) layers use rope_theta and
  // rope_linear_factor (positions divided by it). layer_local is empty or one flag per layer.
  int local_window = 0;
  std::vector<uint8_t> layer_local;
  float rope_local_theta = 10000.0f;
  float rope_linear_factor = 1.0f;
  bool is_local(int layer) const { return !layer_local.empty() && layer_local[(size_t)layer] != 0; }

  int group_size() const { return n_heads / n_kv_heads; }  // query heads per KV head
  static ModelConfig from_gguf(const GgufFile& f);
  // From a Hugging Face directory's config.json (model_type llama, mistral, qwen2, qwen3 or
  // gemma3_text; hf_config.cpp).
  // rope_factors receives the per-frequency divisors of a "llama3" RoPE scaling, head_dim / 2
  // values (left empty without scaling).
  static ModelConfig from_hf(const HfCheckpoint& ck, std::vector<float>& rope_factors);
};

}  // namespace duo
