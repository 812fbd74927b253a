// The description of a llama-family decoder (llama, qwen2, qwen3, gemma3): its shape, its
// weights as views of a GGUF file, a Hugging Face directory's safetensors (hf_load.cpp) or a
// synthetic model's floats, the DuoAttention head order and RoPE frequencies. A layer below
// both backends: the CPU forward (backend/cpu/cpu_forward.h) and the CUDA weights
// (backend/cuda/gpu_weights.h) are built from it.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "duo/head_plan.h"
#include "model/config.h"
#include "model/weight_view.h"

namespace duo {

class GgufFile;
class HfCheckpoint;

struct LayerWeights {
  std::vector<float> attn_norm, ffn_norm;
  WeightView wq, wk, wv, wo, w_gate, w_up, w_down;
  std::vector<float> bq, bk, bv;  // empty when the architecture has no QKV bias
  std::vector<float> q_norm, k_norm;  // head_dim each (qwen3, gemma3), empty otherwise
  // gemma3's sandwich norms: on the attention output and on the feed-forward output before each
  // is added to the residual (ffn_norm is then its pre-feed-forward norm); empty otherwise.
  std::vector<float> post_attn_norm, post_ffn_norm;
};

struct ModelWeights {
  WeightView tok_embd;
  WeightView output;  // == tok_embd when embeddings are tied
  std::vector<float> output_norm;
  std::vector<LayerWeights> layers;
  size_t bytes = 0;  // total bytes of the weight tensors as stored
};

// Where a file format keeps one layer's tensors: each name follows the layer's prefix ("blk.3.",
// "model.layers.3."). assemble_layers reads them the same way for every format.
struct LayerTensorNames {
  const char *prefix, *attn_norm, *ffn_norm, *wq, *wk, *wv, *wo, *gate, *up, *down, *bq, *bk, *bv, *q_norm, *k_norm,
      *post_attn_norm, *post_ffn_norm;
};

// Fills w.layers from `weight(name, cols, rows)` (a matrix) and `vector(name, n)` (a vector),
// the shapes from the config; biases and q/k norms only where the config has them.
template <class Weight, class Vector>
void assemble_layers(ModelWeights& w, const ModelConfig& c, const LayerTensorNames& n, Weight weight, Vector vector) {
  const int64_t E = c.n_embd, D = c.head_dim, Q = (int64_t)c.n_heads * D, KV = (int64_t)c.n_kv_heads * D;
  w.layers.resize(c.n_layers);
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string p = n.prefix + std::to_string(l) + ".";
    LayerWeights& L = w.layers[l];
    L.attn_norm = vector(p + n.attn_norm, E);
    L.ffn_norm = vector(p + n.ffn_norm, E);
    L.wq = weight(p + n.wq, E, Q);
    L.wk = weight(p + n.wk, E, KV);
    L.wv = weight(p + n.wv, E, KV);
    L.wo = weight(p + n.wo, Q, E);
    L.w_gate = weight(p + n.gate, E, c.n_ff);
    L.w_up = weight(p + n.up, E, c.n_ff);
    L.w_down = weight(p + n.down, c.n_ff, E);
    if (c.qkv_bias) {
      L.bq = vector(p + n.bq, Q);
      L.bk = vector(p + n.bk, KV);
      L.bv = vector(p + n.bv, KV);
    }
    if (c.qk_norm) {
      L.q_norm = vector(p + n.q_norm, D);
      L.k_norm = vector(p + n.k_norm, D);
    }
    if (c.sandwich_norms) {
      L.post_attn_norm = vector(p + n.post_attn_norm, E);
      L.post_ffn_norm = vector(p + n.post_ffn_norm, E);
    }
  }
}

class Model {
 public:
  // Opens and validates a GGUF model file, or a Hugging Face model directory (config.json and
  // safetensors weights; see hf_load.cpp); weights stay memory-mapped.
  static std::unique_ptr<Model> load(const std::string& path);
  // A model of the given shape with seeded random F32 weights (tests, and speed or memory
  // measurements of shapes whose weights are not available: speed does not depend on values).
  static std::unique_ptr<Model> synthetic(const ModelConfig& cfg, uint64_t seed);
  ~Model();

  const ModelConfig& config() const { return cfg_; }
  // The GGUF file the weights come from (throws for a synthetic model).
  const GgufFile& gguf() const;
  bool has_gguf() const { return file_ != nullptr; }
  // The Hugging Face directory the weights come from (nullptr for GGUF and synthetic models).
  const HfCheckpoint* hf() const { return hf_.get(); }
  const ModelWeights& weights() const { return w_; }

  // DuoAttention layout: reorders every layer's KV heads so that its retrieval heads come
  // first (contiguous in the cache and in the attention loops), moving the rows of their
  // query heads in Wq and of the heads in Wk, Wv and the biases with them. The attention
  // output is put back into the original head order before Wo, so Wo (whose columns cannot be
  // permuted inside quantization blocks in general) stays as stored. Returns the plan in the
  // new order. Can be applied once per model.
  HeadPlan reorder_heads(const HeadPlan& plan);
  bool heads_reordered() const { return !kv_order_.empty(); }
  // [layer][new KV slot] = original KV head (empty when not reordered): other backends
  // that take the weights (CUDA) need it to put the attention output back in Wo's order.
  const std::vector<std::vector<int>>& kv_order() const { return kv_order_; }
  // RoPE inverse frequencies (head_dim / 2 values, any rope_freqs factors applied); of the
  // global layers where the model has local ones (gemma3).
  const std::vector<float>& rope_inv_freq() const { return inv_freq_; }
  // Those of the local layers (gemma3; empty when the model has none).
  const std::vector<float>& rope_inv_freq_local() const { return inv_freq_local_; }
  // A plan given in the stored head order, rearranged into this model's cache-slot order (the
  // order reorder_heads established; unchanged when the heads were never reordered). Lets one
  // model serve sequences with different patterns.
  HeadPlan to_slot_order(const HeadPlan& plan) const;

 private:
  Model() = default;
  void init_rope(const std::vector<float>* factors);
  static std::unique_ptr<Model> load_hf(const std::string& dir);

  std::unique_ptr<GgufFile> file_;
  std::unique_ptr<HfCheckpoint> hf_;
  std::vector<std::vector<float>> owned_;  // weight storage of a synthetic model
  std::vector<std::vector<uint8_t>> reordered_;  // Wq/Wk/Wv rows in retrieval-first order
  std::vector<std::vector<int>> kv_order_;       // [layer][new KV slot] = original KV head
  ModelConfig cfg_;
  ModelWeights w_;
  std::vector<float> inv_freq_;  // RoPE inverse frequencies, head_dim / 2 values
  std::vector<float> inv_freq_local_;  // of the local layers (gemma3), empty otherwise
};

}  // namespace duo
