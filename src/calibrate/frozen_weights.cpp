#include "calibrate/frozen_weights.h"

#include <algorithm>

#include "core/dequant.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "model/model.h"

namespace duo {

namespace {

template <typename T>
std::vector<T> dense(const WeightView& w, ThreadPool& pool) {
  std::vector<T> out((size_t)(w.rows * w.cols));
  pool.parallel_for_dynamic(w.rows, 16, [&](int64_t b, int64_t e, int) {
    std::vector<float> row((size_t)w.cols);
    for (int64_t r = b; r < e; ++r) {
      dequantize_row(w.type, w.data + (size_t)r * w.row_stride, row.data(), w.cols);
      std::copy(row.begin(), row.end(), out.begin() + r * w.cols);
    }
  });
  return out;
}

template <typename T>
std::vector<T> convert(const std::vector<float>& v) {
  return std::vector<T>(v.begin(), v.end());
}

}  // namespace

template <typename T>
FrozenWeights<T>::FrozenWeights(const Model& model, size_t budget_bytes, ThreadPool& pool)
    : model_(model), pool_(pool), cfg_(model.config()) {
  // The calibration forward (gated_model.cpp) has no per-head q/k norm.
  DUO_CHECK(!cfg_.qk_norm, "calibrating {} (per-head q/k RMS norm) is not implemented", cfg_.arch);
  DUO_CHECK(!model.heads_reordered(), "calibration needs the model's heads in stored order (not reordered)");
  DUO_CHECK(cfg_.n_rot == cfg_.head_dim, "calibration supports RoPE over the whole head only (n_rot {} != head dim {})",
            cfg_.n_rot, cfg_.head_dim);
  const ModelWeights& w = model.weights();
  output_norm_ = convert<T>(w.output_norm);
  inv_freq_ = model.rope_inv_freq();
  const int64_t E = cfg_.n_embd, Q = (int64_t)cfg_.n_heads * cfg_.head_dim,
                KV = (int64_t)cfg_.n_kv_heads * cfg_.head_dim, F = cfg_.n_ff;
  layer_bytes_ = sizeof(T) * (size_t)(2 * E * Q + 2 * E * KV + 3 * E * F + 2 * E + (cfg_.qkv_bias ? Q + 2 * KV : 0));
  resident_ = layer_bytes_ * (size_t)cfg_.n_layers <= budget_bytes;
  layers_.resize(resident_ ? cfg_.n_layers : 1);
  if (resident_)
    for (int l = 0; l < cfg_.n_layers; ++l) load_layer(l, layers_[l]);
}

template <typename T>
void FrozenWeights<T>::load_layer(int l, DenseLayer<T>& out) {
  const LayerWeights& L = model_.weights().layers[l];
  out.attn_norm = convert<T>(L.attn_norm);
  out.ffn_norm = convert<T>(L.ffn_norm);
  out.wq = dense<T>(L.wq, pool_);
  out.wk = dense<T>(L.wk, pool_);
  out.wv = dense<T>(L.wv, pool_);
  out.wo = dense<T>(L.wo, pool_);
  out.w_gate = dense<T>(L.w_gate, pool_);
  out.w_up = dense<T>(L.w_up, pool_);
  out.w_down = dense<T>(L.w_down, pool_);
  out.bq = convert<T>(L.bq);
  out.bk = convert<T>(L.bk);
  out.bv = convert<T>(L.bv);
}

template <typename T>
const DenseLayer<T>& FrozenWeights<T>::layer(int l) {
  DUO_CHECK(l >= 0 && l < cfg_.n_layers, "layer {} out of range (model has {})", l, cfg_.n_layers);
  if (resident_) return layers_[l];
  if (slot_layer_ != l) {
    load_layer(l, layers_[0]);
    slot_layer_ = l;
  }
  return layers_[0];
}

template <typename T>
const std::vector<T>& FrozenWeights<T>::output() {
  if (output_.empty()) output_ = dense<T>(model_.weights().output, pool_);
  return output_;
}

template <typename T>
void FrozenWeights<T>::embed(const int32_t* tokens, int64_t n, T* x) const {
  const WeightView& te = model_.weights().tok_embd;
  const int64_t E = cfg_.n_embd;
  for (int64_t t = 0; t < n; ++t)
    DUO_CHECK(tokens[t] >= 0 && tokens[t] < cfg_.n_vocab, "token id {} at index {} is outside the vocabulary (0..{})",
              tokens[t], t, cfg_.n_vocab - 1);
  pool_.parallel_for_dynamic(n, 64, [&](int64_t b, int64_t e, int) {
    std::vector<float> row((size_t)E);
    for (int64_t t = b; t < e; ++t) {
      dequantize_row(te.type, te.data + (size_t)tokens[t] * te.row_stride, row.data(), E);
      std::copy(row.begin(), row.end(), x + t * E);
    }
  });
}

template class FrozenWeights<float>;
template class FrozenWeights<double>;

}  // namespace duo
