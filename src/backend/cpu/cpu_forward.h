// The CPU forward of a llama-family decoder (llama, qwen2, qwen3, gemma3) over a model's
// description (model/model.h): written top to bottom in cpu_forward.cpp; attention goes
// through the per-head KV policy seam. What it adds to the description is the CPU's own: the
// matmul's packed panels and activation width, and an attention observer.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "backend/cpu/matmul.h"
#include "backend/cpu/kv_cache.h"
#include "engine/attention_observer.h"

namespace duo {

class Model;
class ThreadPool;

// One sequence's share of a batched forward: `n` tokens appended to `cache` at positions
// cache->n_past() ... (a decode step has n = 1; a pre-fill chunk more).
struct BatchItem {
  KvCache* cache = nullptr;
  const int32_t* tokens = nullptr;
  int64_t n = 0;
};

class CpuForward {
 public:
  // Reads `model`'s weights as they are at each call (the description outlives this object);
  // reorder the model's heads (Model::reorder_heads) before packing, not after.
  explicit CpuForward(const Model& model);
  ~CpuForward();
  const Model& model() const { return model_; }

  // A KV cache for one sequence, shaped for this model. A local layer (gemma3) keeps its own
  // sliding window whatever the plan says (cpu_forward.cpp).
  std::unique_ptr<KvCache> new_cache(const HeadPlan& plan) const;
  // The per-layer windows new_cache gives its caches (empty: every layer follows the plan).
  std::vector<int> layer_windows() const;

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

  // Packs every layer's matrices and the LM head once into the many-token matmul kernel's
  // panels (pack_weight): pre-fill chunks and batched decode steps then skip unpacking the
  // quantized weights on every call; one-token decode still reads the stored blocks. Costs
  // about 2 bytes per weight; returns the bytes added (0 where the kernel packs nothing).
  // The model's heads must be reordered (Model::reorder_heads) before, not after.
  size_t pack_weights(ThreadPool& pool);
  // Activation integers of the many-token matmuls of every layer matrix and the LM head
  // (MatmulWeight::act_bits: 16, or 8 for Q4_0/Q4_1/Q8_0 matrices at the AVX-512 level). Set
  // before pack_weights, which packs the panels this mode reads.
  void set_act_bits(int bits);

  // Installs (or with nullptr removes) an observer shown every layer's attention of every
  // later forward pass (queries after RoPE and the keys each KV head attends to: the seam's
  // view, engine/attention_observer.h, over this forward's AttentionArgs).
  void set_observer(AttentionObserver* obs) { observer_ = obs; }

 private:
  // Matrices of one layer as matmul operands: the description's views (as they are now,
  // reordered or not) with this forward's panels and activation width.
  struct LayerMatrices {
    MatmulWeight wq, wk, wv, wo, w_gate, w_up, w_down;
  };
  static constexpr int kLayerMatrices = 7;
  LayerMatrices layer(int l) const;
  MatmulWeight operand(const WeightView& v, size_t index) const;
  MatmulWeight output() const;
  // The layer loop over a batch of items (one item: a pre-fill chunk). logits: one row per
  // item for its last token, or every token's row when all_logits.
  void forward_items(const BatchItem* items, size_t count, float* logits, bool all_logits, ThreadPool& pool);

  const Model& model_;
  int act_bits_ = 16;
  // pack_weights(): one slot per matrix (layer l's k-th at l * 7 + k, the LM head last), null
  // where the kernel packs nothing; empty before packing.
  std::vector<std::shared_ptr<const PackedWeight>> packed_;
  bool packed_reordered_ = false;  // whether the heads were reordered when the panels were made
  AttentionObserver* observer_ = nullptr;
};

}  // namespace duo
