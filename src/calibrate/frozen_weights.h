// The frozen weights of a model as dense matrices of the calibration scalar type. GGUF
// weights may be quantized; calibration needs both y = x W^T and dx = dy W, so each matrix is
// dequantized once into a dense row-major copy (rows x cols, as stored). When every layer fits
// in the memory budget they stay resident; otherwise a layer is dequantized when it is used
// (calibration walks the layers in order, so one slot serves the forward and the backward).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "model/config.h"

namespace duo {

class Model;
class ThreadPool;

template <typename T>
struct DenseLayer {
  std::vector<T> attn_norm, ffn_norm;
  std::vector<T> wq, wk, wv, wo, w_gate, w_up, w_down;  // [rows][cols]
  std::vector<T> bq, bk, bv;                            // empty without QKV bias
};

template <typename T>
class FrozenWeights {
 public:
  // The model must not have had its heads reordered (calibration works in the stored order).
  FrozenWeights(const Model& model, size_t budget_bytes, ThreadPool& pool);

  const ModelConfig& config() const { return cfg_; }
  // Valid until the next call with another layer when not every layer is resident.
  const DenseLayer<T>& layer(int l);
  bool all_resident() const { return resident_; }
  // Bytes of one dense layer.
  size_t layer_bytes() const { return layer_bytes_; }

  // x[t] = embedding row of tokens[t] (n x n_embd).
  void embed(const int32_t* tokens, int64_t n, T* x) const;
  const std::vector<T>& output_norm() const { return output_norm_; }
  // The LM head [vocab][n_embd] (the token embeddings when tied), dequantized on first use (only
  // the logit-distillation loss needs it).
  const std::vector<T>& output();
  const std::vector<float>& rope_inv_freq() const { return inv_freq_; }

 private:
  void load_layer(int l, DenseLayer<T>& out);

  const Model& model_;
  ThreadPool& pool_;
  ModelConfig cfg_;
  std::vector<T> output_norm_;
  std::vector<T> output_;  // empty until output()
  std::vector<float> inv_freq_;
  std::vector<DenseLayer<T>> layers_;  // all layers when resident, else one slot
  int slot_layer_ = -1;
  bool resident_ = false;
  size_t layer_bytes_ = 0;
};

}  // namespace duo
