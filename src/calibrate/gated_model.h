// The DuoAttention calibration model: the frozen llama-family network with one gate per KV
// head mixing full and streaming (Λ) attention, its forward pass, and its backward pass w.r.t.
// activations down to the gates. Weights are frozen; the embedding gets no gradient.
//
// Per layer (the op list a CUDA twin mirrors):
//   xn = rmsnorm(x) ; q, k, v = xn Wq^T + bq, xn Wk^T + bk, xn Wv^T + bv ; q, k = rope(q, k)
//   of = attn_causal(q, k, v) ; os = attn_Λ(q, k, v)        (gated only; full runs `of`)
//   o = a * of + (1 - a) * os  (per KV head)  ; x2 = x + o Wo^T
//   xn2 = rmsnorm(x2) ; g, u = xn2 Wg^T, xn2 Wu^T ; x' = x2 + (silu(g) * u) Wd^T
// and at the end H = rmsnorm(x_L) (the final norm) at the rows the loss looks at.
//
// Memory schedule (per-layer activation checkpointing): the gated forward keeps only each
// layer's input x (n x n_embd per layer). The backward walks the layers from the last, re-runs
// that layer's forward from its stored input to rebuild the tape (q, k, v, attention outputs
// and their log-sum-exps, x2, g, u), then back-propagates through it. Memory is
// O(n x n_embd x layers + one layer's tape), never O(n^2).
#pragma once
#include <cstdint>
#include <vector>

#include "calibrate/frozen_weights.h"
#include "calibrate/grad_ops.h"
#include "duo/head_plan.h"

namespace duo {

class ThreadPool;

// What one layer's forward keeps for its backward.
template <typename T>
struct LayerTape {
  std::vector<T> q, k, v;                  // after bias and RoPE
  std::vector<T> o_full, lse_full;         // causal attention output, log-sum-exp [head][n]
  std::vector<T> o_stream, lse_stream;     // Λ attention (gated forward only)
  std::vector<T> x2, g, u;                 // after the attention residual; FFN gate and up
};

template <typename T>
class GatedModel {
 public:
  GatedModel(FrozenWeights<T>& weights, StreamingWindow window, ThreadPool& pool);

  const ModelConfig& config() const { return w_.config(); }
  int n_gates() const { return config().n_layers * config().n_kv_heads; }
  StreamingWindow window() const { return window_; }
  FrozenWeights<T>& weights() { return w_; }
  ThreadPool& pool() { return pool_; }

  // Token embeddings x0 (n x n_embd).
  std::vector<T> embed(const std::vector<int32_t>& tokens) const;

  // Final hidden states (after the output norm) at `rows` of the sequence, written to out
  // (rows.size() x n_embd). Only positions up to the last row are computed (causality).
  // Full attention everywhere: the frozen reference.
  void forward_full(const T* x0, int64_t n, const std::vector<int64_t>& rows, T* out);
  // Gated: gates holds n_layers x n_kv_heads values (row-major). Keeps each layer's input.
  void forward_gated(const T* x0, int64_t n, const std::vector<T>& gates, const std::vector<int64_t>& rows, T* out);
  // Back-propagates d_out (rows.size() x n_embd, the loss gradient w.r.t. the last
  // forward_gated's output) and adds the gradient w.r.t. each gate to d_gates (n_gates values).
  // d_x0: when non-null receives the gradient w.r.t. x0 (n x n_embd of the forward's n; tests).
  void backward_gated(const T* d_out, std::vector<double>& d_gates, T* d_x0 = nullptr);

  // Peak bytes of activations held for a sequence of n tokens (checkpoints + one tape + gradients).
  size_t activation_bytes(int64_t n) const;

 private:
  void prepare(int64_t n);
  // x_out = layer l of x_in. gates == nullptr: full attention only.
  void layer_forward(int l, const T* x_in, T* x_out, const T* gates);
  // dx: in d x_out, out d x_in. The tape must hold layer l's forward of x_in with these gates.
  void layer_backward(int l, const T* x_in, const T* gates, T* dx, double* d_gates);
  void final_rows(const T* x, const std::vector<int64_t>& rows, T* out);

  FrozenWeights<T>& w_;
  StreamingWindow window_;
  ThreadPool& pool_;
  RopeTable<T> rope_;
  int64_t n_ = 0;  // tokens in the current buffers
  LayerTape<T> tape_;
  std::vector<T> xn_, o_, h_;  // forward scratch
  std::vector<T> dxn_, d_o_, d_full_, d_stream_, dq_, dk_, dv_, dh_, dg_, du_;  // backward scratch
  // Gated forward state kept for the backward.
  std::vector<T> checkpoints_;  // (n_layers + 1) x n x n_embd: each layer's input, then the output
  std::vector<T> gates_;
  std::vector<int64_t> rows_;
  int64_t n_used_ = 0;   // tokens the last forward ran (up to its last row)
  int64_t n_total_ = 0;  // tokens it was given
};

}  // namespace duo
