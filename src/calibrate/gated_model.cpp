#include "calibrate/gated_model.h"

#include <algorithm>
#include <cstring>

#include "calibrate/dense_gemm.h"
#include "calibrate/flash_attention.h"
#include "core/error.h"
#include "core/thread_pool.h"

namespace duo {

namespace {

template <typename T>
T* sized(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
  return v.data();
}

// y (n x rows) = x (n x cols) W^T (+ bias)
template <typename T>
void linear(const T* x, int64_t n, const std::vector<T>& W, int64_t rows, int64_t cols, const std::vector<T>& bias,
            T* y, ThreadPool& pool) {
  gemm<T>(x, cols, W.data(), cols, true, y, rows, n, rows, cols, false, pool);
  if (!bias.empty()) add_bias_rows<T>(y, bias.data(), n, rows, pool);
}

// dx (n x cols) (+)= dy (n x rows) W
template <typename T>
void linear_backward(const T* dy, int64_t n, const std::vector<T>& W, int64_t rows, int64_t cols, T* dx,
                     bool accumulate, ThreadPool& pool) {
  gemm<T>(dy, rows, W.data(), cols, false, dx, cols, n, cols, rows, accumulate, pool);
}

}  // namespace

template <typename T>
GatedModel<T>::GatedModel(FrozenWeights<T>& weights, StreamingWindow window, ThreadPool& pool)
    : w_(weights), window_(window), pool_(pool) {
  DUO_CHECK(window.sink >= 0 && window.recent >= 1, "streaming window needs sink >= 0 and recent >= 1 (got {}, {})",
            window.sink, window.recent);
}

template <typename T>
std::vector<T> GatedModel<T>::embed(const std::vector<int32_t>& tokens) const {
  std::vector<T> x(tokens.size() * (size_t)config().n_embd);
  w_.embed(tokens.data(), (int64_t)tokens.size(), x.data());
  return x;
}

template <typename T>
void GatedModel<T>::prepare(int64_t n) {
  const ModelConfig& c = config();
  const int64_t E = c.n_embd, Q = (int64_t)c.n_heads * c.head_dim, KV = (int64_t)c.n_kv_heads * c.head_dim,
                F = c.n_ff, H = c.n_heads;
  if (rope_.n < n) rope_.build(0, n, w_.rope_inv_freq());
  if (n <= n_) return;
  n_ = n;
  auto rs = [](std::vector<T>& v, int64_t m) { v.resize((size_t)m); };
  rs(tape_.q, n * Q), rs(tape_.k, n * KV), rs(tape_.v, n * KV);
  rs(tape_.o_full, n * Q), rs(tape_.lse_full, n * H), rs(tape_.o_stream, n * Q), rs(tape_.lse_stream, n * H);
  rs(tape_.x2, n * E), rs(tape_.g, n * F), rs(tape_.u, n * F);
  rs(xn_, n * E), rs(o_, n * Q), rs(h_, n * F);
}

template <typename T>
size_t GatedModel<T>::activation_bytes(int64_t n) const {
  const ModelConfig& c = config();
  const int64_t E = c.n_embd, Q = (int64_t)c.n_heads * c.head_dim, KV = (int64_t)c.n_kv_heads * c.head_dim,
                F = c.n_ff, H = c.n_heads;
  const int64_t tape = 3 * Q + 2 * KV + 2 * H + E + 2 * F;
  const int64_t fwd_scratch = E + Q + F;
  const int64_t bwd_scratch = E + 3 * Q + Q + 2 * KV + 3 * F + E;  // dxn, d_o, d_full, d_stream, dq, dk, dv, dh, dg, du, dx
  return sizeof(T) * (size_t)(n * (tape + fwd_scratch + bwd_scratch + (int64_t)(c.n_layers + 1) * E));
}

template <typename T>
void GatedModel<T>::layer_forward(int l, const T* x_in, T* x_out, const T* gates) {
  const ModelConfig& c = config();
  const int64_t n = n_used_;
  const int64_t E = c.n_embd, D = c.head_dim, H = c.n_heads, HKV = c.n_kv_heads;
  const int64_t Q = H * D, KV = HKV * D, F = c.n_ff;
  const DenseLayer<T>& L = w_.layer(l);
  LayerTape<T>& tp = tape_;

  // --- attention block ---
  rmsnorm_forward<T>(x_in, L.attn_norm.data(), xn_.data(), n, E, c.norm_eps, pool_);
  linear(xn_.data(), n, L.wq, Q, E, L.bq, tp.q.data(), pool_);
  linear(xn_.data(), n, L.wk, KV, E, L.bk, tp.k.data(), pool_);
  linear(xn_.data(), n, L.wv, KV, E, L.bv, tp.v.data(), pool_);
  rope_apply<T>(tp.q.data(), n, Q, (int)H, (int)D, rope_, c.rope_style, false, pool_);
  rope_apply<T>(tp.k.data(), n, KV, (int)HKV, (int)D, rope_, c.rope_style, false, pool_);
  const AttentionDims dims{n, (int)H, (int)HKV, (int)D};
  flash_attention_forward<T>(tp.q.data(), tp.k.data(), tp.v.data(), tp.o_full.data(), tp.lse_full.data(), dims,
                             AttentionMask::causal(), pool_);
  const T* attn = tp.o_full.data();
  if (gates) {
    flash_attention_forward<T>(tp.q.data(), tp.k.data(), tp.v.data(), tp.o_stream.data(), tp.lse_stream.data(), dims,
                               AttentionMask::streaming(window_.sink, window_.recent), pool_);
    gate_mix_forward<T>(tp.o_full.data(), tp.o_stream.data(), gates, o_.data(), n, (int)H, (int)HKV, (int)D, pool_);
    attn = o_.data();
  }
  linear(attn, n, L.wo, E, Q, {}, tp.x2.data(), pool_);
  add_inplace_rows<T>(tp.x2.data(), x_in, n * E, pool_);

  // --- feed-forward block ---
  rmsnorm_forward<T>(tp.x2.data(), L.ffn_norm.data(), xn_.data(), n, E, c.norm_eps, pool_);
  linear(xn_.data(), n, L.w_gate, F, E, {}, tp.g.data(), pool_);
  linear(xn_.data(), n, L.w_up, F, E, {}, tp.u.data(), pool_);
  swiglu_forward<T>(tp.g.data(), tp.u.data(), h_.data(), n * F, pool_);
  linear(h_.data(), n, L.w_down, E, F, {}, x_out, pool_);
  add_inplace_rows<T>(x_out, tp.x2.data(), n * E, pool_);
}

template <typename T>
void GatedModel<T>::layer_backward(int l, const T* x_in, const T* gates, T* dx, double* d_gates) {
  const ModelConfig& c = config();
  const int64_t n = n_used_;
  const int64_t E = c.n_embd, D = c.head_dim, H = c.n_heads, HKV = c.n_kv_heads;
  const int64_t Q = H * D, KV = HKV * D, F = c.n_ff;
  const DenseLayer<T>& L = w_.layer(l);
  LayerTape<T>& tp = tape_;
  T* dxn = sized(dxn_, n * E);
  T* d_o = sized(d_o_, n * Q);
  T* d_full = sized(d_full_, n * Q);
  T* d_stream = sized(d_stream_, n * Q);
  T* dq = sized(dq_, n * Q);
  T* dk = sized(dk_, n * KV);
  T* dv = sized(dv_, n * KV);
  T* dh = sized(dh_, n * F);
  T* dg = sized(dg_, n * F);
  T* du = sized(du_, n * F);

  // --- feed-forward block: x' = x2 + swiglu(g, u) Wd^T ---
  linear_backward(dx, n, L.w_down, E, F, dh, false, pool_);
  swiglu_backward<T>(tp.g.data(), tp.u.data(), dh, dg, du, n * F, pool_);
  linear_backward(dg, n, L.w_gate, F, E, dxn, false, pool_);
  linear_backward(du, n, L.w_up, F, E, dxn, true, pool_);
  rmsnorm_backward<T>(tp.x2.data(), L.ffn_norm.data(), dxn, dx, n, E, c.norm_eps, true, pool_);  // dx = d x2

  // --- attention block: x2 = x + mix(of, os) Wo^T ---
  linear_backward(dx, n, L.wo, E, Q, d_o, false, pool_);
  gate_mix_backward<T>(tp.o_full.data(), tp.o_stream.data(), gates, d_o, d_full, d_stream, d_gates, n, (int)H,
                       (int)HKV, (int)D, pool_);
  // A branch whose every gate is 0 (full) or 1 (streaming) has an exactly zero upstream gradient.
  bool any_full = false, any_stream = false;
  for (int64_t h = 0; h < HKV; ++h) any_full |= gates[h] != T(0), any_stream |= gates[h] != T(1);
  const AttentionDims dims{n, (int)H, (int)HKV, (int)D};
  bool written = false;
  if (any_full) {
    flash_attention_backward<T>(tp.q.data(), tp.k.data(), tp.v.data(), tp.o_full.data(), tp.lse_full.data(), d_full,
                                dq, dk, dv, false, dims, AttentionMask::causal(), pool_);
    written = true;
  }
  if (any_stream) {
    flash_attention_backward<T>(tp.q.data(), tp.k.data(), tp.v.data(), tp.o_stream.data(), tp.lse_stream.data(),
                                d_stream, dq, dk, dv, written, dims,
                                AttentionMask::streaming(window_.sink, window_.recent), pool_);
  }
  rope_apply<T>(dq, n, Q, (int)H, (int)D, rope_, c.rope_style, true, pool_);
  rope_apply<T>(dk, n, KV, (int)HKV, (int)D, rope_, c.rope_style, true, pool_);
  linear_backward(dq, n, L.wq, Q, E, dxn, false, pool_);
  linear_backward(dk, n, L.wk, KV, E, dxn, true, pool_);
  linear_backward(dv, n, L.wv, KV, E, dxn, true, pool_);
  rmsnorm_backward<T>(x_in, L.attn_norm.data(), dxn, dx, n, E, c.norm_eps, true, pool_);  // dx = d x_in
}

template <typename T>
void GatedModel<T>::final_rows(const T* x, const std::vector<int64_t>& rows, T* out) {
  const int64_t E = config().n_embd;
  for (size_t r = 0; r < rows.size(); ++r)
    rmsnorm_forward<T>(x + rows[r] * E, w_.output_norm().data(), out + r * E, 1, E, config().norm_eps, pool_);
}

namespace {
int64_t needed_tokens(int64_t n, const std::vector<int64_t>& rows) {
  DUO_CHECK(!rows.empty(), "calibration loss needs at least one row");
  int64_t last = 0;
  for (int64_t r : rows) {
    DUO_CHECK(r >= 0 && r < n, "loss row {} outside the sequence of {} tokens", r, n);
    last = std::max(last, r);
  }
  return last + 1;
}
}  // namespace

template <typename T>
void GatedModel<T>::forward_full(const T* x0, int64_t n, const std::vector<int64_t>& rows, T* out) {
  n_used_ = needed_tokens(n, rows);
  prepare(n_used_);
  const int64_t E = config().n_embd;
  std::vector<T> a(x0, x0 + n_used_ * E), b((size_t)(n_used_ * E));
  for (int l = 0; l < config().n_layers; ++l) {
    layer_forward(l, a.data(), b.data(), nullptr);
    a.swap(b);
  }
  final_rows(a.data(), rows, out);
}

template <typename T>
void GatedModel<T>::forward_gated(const T* x0, int64_t n, const std::vector<T>& gates, const std::vector<int64_t>& rows,
                                  T* out) {
  const ModelConfig& c = config();
  DUO_CHECK((int)gates.size() == n_gates(), "gated forward: {} gates for {} layers x {} KV heads", gates.size(),
            c.n_layers, c.n_kv_heads);
  n_used_ = needed_tokens(n, rows);
  prepare(n_used_);
  const int64_t E = c.n_embd, stride = n_used_ * E;
  checkpoints_.resize((size_t)((c.n_layers + 1) * stride));
  std::copy(x0, x0 + stride, checkpoints_.begin());
  for (int l = 0; l < c.n_layers; ++l)
    layer_forward(l, checkpoints_.data() + l * stride, checkpoints_.data() + (l + 1) * stride,
                  gates.data() + (size_t)l * c.n_kv_heads);
  final_rows(checkpoints_.data() + c.n_layers * stride, rows, out);
  gates_ = gates;
  rows_ = rows;
  n_total_ = n;
}

template <typename T>
void GatedModel<T>::backward_gated(const T* d_out, std::vector<double>& d_gates, T* d_x0) {
  const ModelConfig& c = config();
  DUO_CHECK(!rows_.empty(), "backward_gated needs a forward_gated first");
  DUO_CHECK((int)d_gates.size() == n_gates(), "backward_gated: {} gate gradients for {} gates", d_gates.size(),
            n_gates());
  const int64_t n = n_used_, E = c.n_embd, stride = n * E;
  std::vector<T> dx((size_t)stride, T(0));
  const T* x_last = checkpoints_.data() + c.n_layers * stride;
  for (size_t r = 0; r < rows_.size(); ++r)
    rmsnorm_backward<T>(x_last + rows_[r] * E, w_.output_norm().data(), d_out + r * E, dx.data() + rows_[r] * E, 1, E,
                        c.norm_eps, true, pool_);
  std::vector<T> scratch_out((size_t)stride);
  for (int l = c.n_layers - 1; l >= 0; --l) {
    const T* x_in = checkpoints_.data() + l * stride;
    const T* g = gates_.data() + (size_t)l * c.n_kv_heads;
    layer_forward(l, x_in, scratch_out.data(), g);  // rebuild the tape (recomputation)
    layer_backward(l, x_in, g, dx.data(), d_gates.data() + (size_t)l * c.n_kv_heads);
  }
  if (d_x0) {
    std::copy(dx.begin(), dx.end(), d_x0);
    std::fill(d_x0 + stride, d_x0 + n_total_ * E, T(0));  // positions after the last row
  }
}

template class GatedModel<float>;
template class GatedModel<double>;

}  // namespace duo
