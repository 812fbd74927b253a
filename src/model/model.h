// A llama-family decoder (llama, qwen2) over GGUF weights, run on the CPU. The forward is
// written top to bottom in model.cpp; attention goes through the per-head KV policy seam.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "backend/cpu/matmul.h"
#include "kv/kv_cache.h"
#include "model/config.h"

namespace duo {

class GgufFile;
class HfCheckpoint;
class ThreadPool;
struct AttentionArgs;

// Sees every layer's attention inputs during a forward pass (queries after RoPE, and the
// segments each KV head attends to). Used by evaluation tools that measure where heads look.
class AttentionObserver {
 public:
  virtual ~AttentionObserver() = default;
  virtual void on_attention(int layer, const AttentionArgs& args) = 0;
};

struct LayerWeights {
  std::vector<float> attn_norm, ffn_norm;
  WeightView wq, wk, wv, wo, w_gate, w_up, w_down;
  std::vector<float> bq, bk, bv;  // empty when the architecture has no QKV bias
  std::vector<float> q_norm, k_norm;  // head_dim each (qwen3, gemma3), empty otherwise
  // gemma3's sandwich norms: on the attention output and on the feed-forward output before each
  // is added to the residual (ffn_norm is then its pre-feed-forward norm); empty otherwise.
  std::vector<float> post_attn_norm, post_ffn_norm;
};

// One sequence's share of a batched forward: `n` tokens appended to `cache` at positions
// cache->n_past() ... (a decode step has n = 1; a pre-fill chunk more).
struct BatchItem {
  KvCache* cache = nullptr;
  const int32_t* tokens = nullptr;
  int64_t n = 0;
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

  // A KV cache for one sequence, shaped for this model. A local layer (gemma3) keeps its own
  // sliding window whatever the plan says (model.cpp).
  std::unique_ptr<KvCache> new_cache(const HeadPlan& plan) const;

  // Runs `n` tokens at positions cache.n_past() ... and appends them to the cache.
  // Tokens go through the layers in chunks of at most `chunk` (chunked pre-fill: each chunk
  // attends to the cache plus itself, then streaming heads drop what they no longer need).
  // logits: when non-null receives n_vocab floats for the last token, or for every token
  // (n x n_vocab) when all_logits.
  void forward(KvCache& cache, const int32_t* tokens, int64_t n, float* logits, ThreadPool& pool,
               bool all_logits = false, int64_t chunk = 512);

  // Continuous batching: runs several sequences through the layers together. Consecutive
  // one-token items (decode steps) share each matmul, so the weights are read once per step,
  // not once per sequence; a longer item (a pre-fill chunk) gets matmuls of its own, so its
  // rows compute exactly what forward() computes for them. Each item attends over its own
  // cache under its own head plan and window. Items are not chunked: each is one forward step
  // of its sequence. logits (when non-null) receives n_vocab floats per item, for the item's
  // last token, in item order.
  void forward_batch(const std::vector<BatchItem>& items, float* logits, ThreadPool& pool);

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
  // A plan given in the stored head order, rearranged into this model's cache-slot order (the
  // order reorder_heads established; unchanged when the heads were never reordered). Lets one
  // model serve sequences with different patterns.
  HeadPlan to_slot_order(const HeadPlan& plan) const;

  // Packs every layer's matrices and the LM head once into the many-token matmul kernel's
  // panels (pack_weight): pre-fill chunks and batched decode steps then skip unpacking the
  // quantized weights on every call; one-token decode still reads the stored blocks. Costs
  // about 2 bytes per weight; returns the bytes added (0 where the kernel packs nothing).
  // Heads must be reordered (reorder_heads) before, not after.
  size_t pack_weights(ThreadPool& pool);
  // Activation integers of the many-token matmuls of every layer matrix and the LM head
  // (WeightView::act_bits: 16, or 8 for Q4_0/Q4_1/Q8_0 matrices at the AVX-512 level). Set before
  // pack_weights, which packs the panels this mode reads.
  void set_act_bits(int bits);

  // Installs (or with nullptr removes) an observer called by every later forward pass.
  void set_observer(AttentionObserver* obs) { observer_ = obs; }

 private:
  Model() = default;
  void init_rope(const std::vector<float>* factors);
  static std::unique_ptr<Model> load_hf(const std::string& dir);
  // The layer loop over a batch of items (one item: a pre-fill chunk). logits: one row per
  // item for its last token, or every token's row when all_logits.
  void forward_items(const BatchItem* items, size_t count, float* logits, bool all_logits, ThreadPool& pool);

  std::unique_ptr<GgufFile> file_;
  std::unique_ptr<HfCheckpoint> hf_;
  std::vector<std::vector<float>> owned_;  // weight storage of a synthetic model
  std::vector<std::vector<uint8_t>> reordered_;  // Wq/Wk/Wv rows in retrieval-first order
  std::vector<std::vector<int>> kv_order_;       // [layer][new KV slot] = original KV head
  std::vector<std::shared_ptr<const PackedWeight>> packed_;  // pack_weights()
  ModelConfig cfg_;
  ModelWeights w_;
  std::vector<float> inv_freq_;  // RoPE inverse frequencies, head_dim / 2 values
  std::vector<float> inv_freq_local_;  // of the local layers (gemma3), empty otherwise
  AttentionObserver* observer_ = nullptr;
};

}  // namespace duo
