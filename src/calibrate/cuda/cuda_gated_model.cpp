#include "calibrate/cuda/cuda_gated_model.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels.h"
#include "calibrate/cuda/flash_attention_cuda.h"
#include "calibrate/cuda/grad_kernels.h"
#include "core/error.h"
#include "model/model.h"

namespace duo::cuda::calib {

// Every activation buffer of a sequence of up to `cap` tokens, carved from one allocation.
struct CudaGatedModel::Bufs {
  DeviceBuffer arena;
  int32_t* tokens;
  float* ckpt;           // (n_layers + 1) x cap x E: each layer's input, then the last output
  float *xa, *xb;        // the full forward's residual stream (ping-pong)
  bf16* xn;              // normalised activations (GEMM input)
  float* qkv;            // [cap][QKV] projections
  bf16 *q, *k, *v;       // after bias and RoPE
  float *of, *os;        // causal / Λ attention outputs [cap][Q]
  float *lse_f, *lse_s;  // [H][lse_ld]
  bf16* o_bf;            // mixed attention output (Wo's input)
  float *proj, *x2;      // Wo output; residual after attention
  float* gu;             // [cap][2F] gate and up projections
  bf16* h;               // SwiGLU output
  float* dx;             // gradient of the residual stream
  bf16* dx_bf;
  float* dh;         // [cap][F]
  bf16* dgu;         // [cap][2F]
  float *dxn, *d_o;  // [cap][E], [cap][Q]
  bf16 *d_full, *d_stream;
  float* delta;         // [H][lse_ld]
  float *dq, *dk, *dv;  // [cap][Q]: per query head
  bf16* dqkv;           // [cap][QKV]
  double* partials;     // gate-gradient partial sums
  int64_t lse_ld;
};

namespace {

size_t align_up(size_t b) { return (b + 255) / 256 * 256; }

// Byte offsets of every buffer for `cap` tokens (and the total), in Bufs' order.
struct Plan {
  std::vector<size_t> sizes;
  size_t total = 0;
};

Plan plan_buffers(const ModelConfig& c, int64_t cap) {
  const size_t n = (size_t)cap, E = c.n_embd, D = c.head_dim, H = c.n_heads, Q = H * D, KV = (size_t)c.n_kv_heads * D,
               QKV = Q + 2 * KV, F = c.n_ff, L = c.n_layers;
  const size_t lse = H * (size_t)flash_lse_ld(cap);
  const size_t f = sizeof(float), b = sizeof(bf16);
  Plan p;
  p.sizes = {
      n * sizeof(int32_t),  // tokens
      (L + 1) * n * E * f,
      n * E * f,
      n * E * f,  // ckpt, xa, xb
      n * E * b,
      n * QKV * f,  // xn, qkv
      n * Q * b,
      n * KV * b,
      n * KV * b,  // q, k, v
      n * Q * f,
      n * Q * f,
      lse * f,
      lse * f,  // of, os, lse_f, lse_s
      n * Q * b,
      n * E * f,
      n * E * f,
      n * 2 * F * f,
      n * F * b,  // o_bf, proj, x2, gu, h
      n * E * f,
      n * E * b,
      n * F * f,
      n * 2 * F * b,  // dx, dx_bf, dh, dgu
      n * E * f,
      n * Q * f,
      n * Q * b,
      n * Q * b,
      lse * f,  // dxn, d_o, d_full, d_stream, delta
      n * Q * f,
      n * Q * f,
      n * Q * f,
      n * QKV * b,                                                     // dq, dk, dv, dqkv
      (size_t)gate_partials_count(cap, c.n_kv_heads) * sizeof(double)  // partials
  };
  for (size_t s : p.sizes) p.total += align_up(s);
  return p;
}

bool env_sync_checks() {
  const char* e = std::getenv("DUO_CALIB_SYNC");
  return e && *e && std::strcmp(e, "0") != 0;
}

// The gated forward and its backward (qkv_grad_pack) have no per-head q/k norm: qwen3 would need
// the norm's gradient too; gemma3 also its local layers, sandwich norms, GeGLU, scaled embeddings,
// query scale and soft-capping (which the inference forward has, the gated one not). Refused
// before the weights go up.
void check_no_qk_norm(const ModelConfig& c) {
  DUO_CHECK(c.arch != "gemma3",
            "CUDA calibration of gemma3 (local sliding-window layers, sandwich norms, GeGLU, q/k norms) is not "
            "implemented; `duo pattern rank` (on the CPU) ranks its heads without calibration");
  DUO_CHECK(!c.qk_norm, "CUDA calibration of {} (per-head q/k RMS norm, as qwen3) is not implemented", c.arch);
}

std::unique_ptr<GpuWeights> upload_in_stored_order(const Model& model) {
  DUO_CHECK(!model.heads_reordered(), "calibration needs the model's heads in stored order (not reordered)");
  check_no_qk_norm(model.config());
  return GpuWeights::upload(model);
}

}  // namespace

CudaGatedModel::CudaGatedModel(const Model& model, StreamingWindow window)
    : CudaGatedModel(upload_in_stored_order(model), window) {}

CudaGatedModel::CudaGatedModel(std::unique_ptr<GpuWeights> weights, StreamingWindow window)
    : w_(std::move(weights)), window_(window), b_(std::make_unique<Bufs>()) {
  const ModelConfig& c = config();
  check_no_qk_norm(c);
  DUO_CHECK(window.sink >= 0 && window.recent >= 1, "streaming window needs sink >= 0 and recent >= 1 (got {}, {})",
            window.sink, window.recent);
  DUO_CHECK(c.head_dim == 64 || c.head_dim == 128, "CUDA calibration supports head_dim 64 or 128 (model has {})",
            c.head_dim);
  DUO_CHECK(c.n_rot == 0 || c.n_rot == c.head_dim,
            "calibration supports RoPE over the whole head only (n_rot {} != head dim {})", c.n_rot, c.head_dim);
  DUO_CHECK(c.n_kv_heads >= 1 && c.n_kv_heads <= 64 && c.n_heads % c.n_kv_heads == 0,
            "CUDA calibration needs 1..64 KV heads dividing the query heads ({} / {})", c.n_heads, c.n_kv_heads);
  sync_checks_ = env_sync_checks();
  // A blocking stream: ordered with the legacy default stream of plain cudaMemcpy calls.
  DUO_CUDA_TRY(cudaStreamCreate(&stream_));
  gemm_ = std::make_unique<Gemm>(stream_);
  for (auto& e : ev_) DUO_CUDA_TRY(cudaEventCreate(&e));
}

CudaGatedModel::~CudaGatedModel() {
  if (stream_) (void)cudaStreamSynchronize(stream_);
  for (auto e : ev_)
    if (e) cudaEventDestroy(e);
  b_.reset();
  gemm_.reset();
  if (stream_) cudaStreamDestroy(stream_);
}

size_t CudaGatedModel::activation_bytes(int64_t n) const {
  const ModelConfig& c = config();
  // The sample-sized buffers (the gates and the loss rows take a few KB more).
  return plan_buffers(c, n).total;
}

void CudaGatedModel::prepare(int64_t n) {
  if (n <= n_cap_) return;
  const ModelConfig& c = config();
  // Grow in steps of 4096 tokens so a run of varied lengths reallocates a few times only.
  const int64_t cap = (n + 4095) / 4096 * 4096;
  const Plan p = plan_buffers(c, cap);
  DUO_CUDA_TRY(cudaStreamSynchronize(stream_));
  b_->arena.reset();  // free first: the old contents are not needed
  const size_t gate_bytes = align_up((size_t)n_gates() * sizeof(float)) + align_up((size_t)n_gates() * sizeof(double));
  b_->arena = DeviceBuffer(p.total + gate_bytes, fmt::format("calibration activations for {} tokens", cap));
  char* at = b_->arena.as<char>();
  size_t i = 0;
  auto take = [&](auto*& ptr) {
    ptr = reinterpret_cast<std::remove_reference_t<decltype(ptr)>>(at);
    at += align_up(p.sizes[i++]);
  };
  Bufs& b = *b_;
  take(b.tokens);
  take(b.ckpt), take(b.xa), take(b.xb);
  take(b.xn), take(b.qkv);
  take(b.q), take(b.k), take(b.v);
  take(b.of), take(b.os), take(b.lse_f), take(b.lse_s);
  take(b.o_bf), take(b.proj), take(b.x2), take(b.gu), take(b.h);
  take(b.dx), take(b.dx_bf), take(b.dh), take(b.dgu);
  take(b.dxn), take(b.d_o), take(b.d_full), take(b.d_stream), take(b.delta);
  take(b.dq), take(b.dk), take(b.dv), take(b.dqkv);
  take(b.partials);
  DUO_CHECK(i == p.sizes.size(), "calibration buffer plan out of step ({} of {})", i, p.sizes.size());
  gates_d_ = reinterpret_cast<float*>(at);
  d_gates_d_ = reinterpret_cast<double*>(at + align_up((size_t)n_gates() * sizeof(float)));
  b.lse_ld = flash_lse_ld(cap);
  // Zeroed once so that no buffer ever holds NaN bit patterns a kernel could read past n.
  DUO_CUDA_TRY(cudaMemsetAsync(b.arena.get(), 0, b.arena.bytes(), stream_));
  n_cap_ = cap;
}

void CudaGatedModel::op_done(const char* op) {
  if (!sync_checks_) return;
  const cudaError_t e = cudaStreamSynchronize(stream_);
  if (e != cudaSuccess)
    fail("CUDA calibration: {} failed ({}, layer {}): {}", op, phase_, layer_, cudaGetErrorString(e));
}

void CudaGatedModel::upload_sample(const std::vector<int32_t>& tokens, const std::vector<int64_t>& rows) {
  const ModelConfig& c = config();
  DUO_CHECK(!rows.empty(), "calibration loss needs at least one row");
  const int64_t n_total = (int64_t)tokens.size();
  int64_t last = 0;
  for (int64_t r : rows) {
    DUO_CHECK(r >= 0 && r < n_total, "loss row {} outside the sequence of {} tokens", r, n_total);
    last = std::max(last, r);
  }
  std::vector<int64_t> sorted = rows;
  std::sort(sorted.begin(), sorted.end());
  DUO_CHECK(std::adjacent_find(sorted.begin(), sorted.end()) == sorted.end(),
            "the CUDA calibration needs distinct loss rows");
  n_ = last + 1;  // only positions up to the last row matter (causality)
  DUO_CHECK(n_ <= 0x7fffffff, "sequence of {} tokens is too long", n_);
  for (int64_t t = 0; t < n_; ++t)
    DUO_CHECK(tokens[t] >= 0 && tokens[t] < c.n_vocab, "token id {} at index {} is outside the vocabulary (0..{})",
              tokens[t], t, c.n_vocab - 1);
  prepare(n_);
  n_rows_ = (int64_t)rows.size();
  const int64_t E = c.n_embd;
  int32_t* rows_d = rows_.ensure_n<int32_t>(n_rows_);
  h_rows_.ensure_n<float>(n_rows_ * E);
  std::vector<int32_t> rows32(rows.begin(), rows.end());
  DUO_CUDA_TRY(cudaMemcpyAsync(b_->tokens, tokens.data(), sizeof(int32_t) * n_, cudaMemcpyHostToDevice, stream_));
  DUO_CUDA_TRY(cudaMemcpyAsync(rows_d, rows32.data(), sizeof(int32_t) * n_rows_, cudaMemcpyHostToDevice, stream_));
  // cudaMemcpyAsync from pageable memory returns once the source is staged: rows32 may go.
  embed_tokens(w_->tok_embd(), b_->tokens, (int)n_, (int)E, b_->ckpt, stream_);
  op_done("embedding");
}

void CudaGatedModel::upload_gates(const std::vector<double>& gates) {
  DUO_CHECK((int)gates.size() == n_gates(), "gated forward: {} gates for {} layers x {} KV heads", gates.size(),
            config().n_layers, config().n_kv_heads);
  gates_f_.assign(gates.begin(), gates.end());  // float, as GatedModel<float>
  DUO_CUDA_TRY(
      cudaMemcpyAsync(gates_d_, gates_f_.data(), sizeof(float) * gates_f_.size(), cudaMemcpyHostToDevice, stream_));
}

void CudaGatedModel::layer_forward(int l, const float* x_in, float* x_out, const float* gates_d) {
  const ModelConfig& c = config();
  const int64_t n = n_, E = c.n_embd, D = c.head_dim, H = c.n_heads, HKV = c.n_kv_heads;
  const int64_t Q = H * D, KV = HKV * D, QKV = Q + 2 * KV, F = c.n_ff;
  const GpuLayerWeights& W = w_->layer(l);
  Bufs& b = *b_;
  const cudaStream_t s = stream_;
  layer_ = l;

  // --- attention block ---
  rmsnorm(x_in, W.attn_norm, b.xn, n, (int)E, c.norm_eps, s);
  op_done("attention rmsnorm");
  gemm_->linear(W.wqkv, QKV, E, b.xn, E, n, b.qkv, QKV);
  op_done("QKV projection");
  QkvRopeArgs ra;
  ra.qkv = b.qkv, ra.ld = QKV, ra.bias = W.bqkv, ra.inv_freq = w_->inv_freq();
  ra.n = (int)n, ra.pos0 = 0, ra.n_heads = (int)H, ra.n_kv_heads = (int)HKV, ra.head_dim = (int)D;
  ra.neox = c.rope_style == RopeStyle::Neox;
  ra.q = b.q, ra.k = b.k, ra.v = b.v;
  qkv_bias_rope(ra, s);
  op_done("QKV bias + RoPE");
  FlashArgs fa;
  fa.q = b.q, fa.k = b.k, fa.v = b.v, fa.n = n;
  fa.n_heads = (int)H, fa.n_kv_heads = (int)HKV, fa.head_dim = (int)D;
  fa.lse_ld = b.lse_ld;
  fa.mask = AttentionMask::causal();
  flash_forward(fa, b.of, b.lse_f, s);
  op_done("causal attention forward");
  if (gates_d) {
    fa.mask = AttentionMask::streaming(window_.sink, window_.recent);
    flash_forward(fa, b.os, b.lse_s, s);
    op_done("Λ attention forward");
  }
  gate_mix_forward(b.of, b.os, gates_d, b.o_bf, n, (int)H, (int)HKV, (int)D, s);
  op_done("gate mix forward");
  gemm_->linear(W.wo, E, Q, b.o_bf, Q, n, b.proj, E);
  op_done("output projection");
  DUO_CUDA_TRY(cudaMemcpyAsync(b.x2, x_in, sizeof(float) * n * E, cudaMemcpyDeviceToDevice, s));
  add_rmsnorm(b.x2, b.proj, W.ffn_norm, b.xn, n, (int)E, c.norm_eps, s);  // x2 = x + o Wo^T, xn = rmsnorm(x2)
  op_done("residual + FFN rmsnorm");

  // --- feed-forward block ---
  gemm_->linear(W.wgu, 2 * F, E, b.xn, E, n, b.gu, 2 * F);
  op_done("gate/up projection");
  if (!x_out) return;  // the backward's re-run: the tape is complete
  swiglu(b.gu, n, (int)F, b.h, s);
  op_done("SwiGLU");
  DUO_CUDA_TRY(cudaMemcpyAsync(x_out, b.x2, sizeof(float) * n * E, cudaMemcpyDeviceToDevice, s));
  gemm_->linear(W.wdown, E, F, b.h, F, n, x_out, E, /*accumulate=*/true);  // x' = x2 + h Wd^T
  op_done("down projection");
}

// The backward GEMMs take bf16 weights; calibration loads the model with them (int8 GPU weights
// are an inference option only).
static const bf16* bf16_weight(const GpuMatrix& m) {
  DUO_CHECK(!m.int8() && m.w, "calibration needs bf16 GPU weights (not --gpu-weights int8)");
  return m.w;
}

void CudaGatedModel::layer_backward(int l, const float* x_in, const float* gates_host, float* dx, double* d_gates_d) {
  const ModelConfig& c = config();
  const int64_t n = n_, E = c.n_embd, D = c.head_dim, H = c.n_heads, HKV = c.n_kv_heads;
  const int64_t Q = H * D, KV = HKV * D, QKV = Q + 2 * KV, F = c.n_ff;
  const GpuLayerWeights& W = w_->layer(l);
  Bufs& b = *b_;
  const cudaStream_t s = stream_;
  layer_ = l;

  // --- feed-forward block: x' = x2 + swiglu(g, u) Wd^T ---
  to_bf16(dx, b.dx_bf, n * E, s);
  gemm_->linear_input_grad(bf16_weight(W.wdown), E, F, b.dx_bf, E, n, b.dh, F);  // dh = dx Wd
  op_done("down projection backward");
  swiglu_backward(b.gu, b.dh, b.dgu, n, (int)F, s);
  op_done("SwiGLU backward");
  gemm_->linear_input_grad(bf16_weight(W.wgu), 2 * F, E, b.dgu, 2 * F, n, b.dxn, E);  // dxn2 = [dg | du] [Wg ; Wu]
  op_done("gate/up projection backward");
  rmsnorm_backward(b.x2, W.ffn_norm, b.dxn, dx, n, (int)E, c.norm_eps, true, nullptr, s);  // dx = d x2
  op_done("FFN rmsnorm backward");

  // --- attention block: x2 = x + mix(of, os) Wo^T ---
  to_bf16(dx, b.dx_bf, n * E, s);
  gemm_->linear_input_grad(bf16_weight(W.wo), E, Q, b.dx_bf, E, n, b.d_o, Q);  // do = dx2 Wo
  op_done("output projection backward");
  gate_mix_backward(b.of, b.os, gates_d_ + (int64_t)l * HKV, b.d_o, b.d_full, b.d_stream, b.partials, d_gates_d, n,
                    (int)H, (int)HKV, (int)D, s);
  op_done("gate mix backward");
  // A KV head whose gate is 0 (1) has an exactly zero causal (Λ) output gradient: skipped.
  uint64_t full_heads = 0, stream_heads = 0;
  for (int64_t j = 0; j < HKV; ++j) {
    if (gates_host[j] != 0.0f) full_heads |= 1ull << j;
    if (gates_host[j] != 1.0f) stream_heads |= 1ull << j;
  }
  FlashArgs fa;
  fa.q = b.q, fa.k = b.k, fa.v = b.v, fa.n = n;
  fa.n_heads = (int)H, fa.n_kv_heads = (int)HKV, fa.head_dim = (int)D;
  fa.lse_ld = b.lse_ld;
  FlashGrads g;
  g.dq = b.dq, g.dk_part = b.dk, g.dv_part = b.dv, g.delta = b.delta;
  g.accumulate = false;
  if (full_heads) {
    fa.mask = AttentionMask::causal();
    fa.active_kv = full_heads;
    flash_backward(fa, b.of, b.lse_f, b.d_full, g, s);  // writes every head (zeros for skipped ones)
    op_done("causal attention backward");
    g.accumulate = true;
  }
  if (stream_heads) {
    fa.mask = AttentionMask::streaming(window_.sink, window_.recent);
    fa.active_kv = stream_heads;
    flash_backward(fa, b.os, b.lse_s, b.d_stream, g, s);
    op_done("Λ attention backward");
  }
  QkvGradArgs qa;
  qa.dq = b.dq, qa.dk_part = b.dk, qa.dv_part = b.dv, qa.inv_freq = w_->inv_freq(), qa.dqkv = b.dqkv;
  qa.n = n, qa.n_heads = (int)H, qa.n_kv_heads = (int)HKV, qa.head_dim = (int)D;
  qa.neox = c.rope_style == RopeStyle::Neox;
  qkv_grad_pack(qa, s);
  op_done("RoPE backward + QKV gradient pack");
  gemm_->linear_input_grad(bf16_weight(W.wqkv), QKV, E, b.dqkv, QKV, n, b.dxn, E);  // dxn = [dq | dk | dv] [Wq ; Wk ; Wv]
  op_done("QKV projection backward");
  rmsnorm_backward(x_in, W.attn_norm, b.dxn, dx, n, (int)E, c.norm_eps, true, nullptr, s);  // dx = d x_in
  op_done("attention rmsnorm backward");
}

void CudaGatedModel::final_rows(const float* x, std::vector<float>& out) {
  const ModelConfig& c = config();
  const int64_t E = c.n_embd;
  float* h = h_rows_.ensure_n<float>(n_rows_ * E);
  rmsnorm_rows_f32(x, rows_.ensure_n<int32_t>(n_rows_), w_->output_norm(), h, n_rows_, (int)E, c.norm_eps, stream_);
  op_done("output rmsnorm");
  out.resize((size_t)(n_rows_ * E));
  DUO_CUDA_TRY(cudaMemcpyAsync(out.data(), h, sizeof(float) * n_rows_ * E, cudaMemcpyDeviceToHost, stream_));
  DUO_CUDA_TRY(cudaStreamSynchronize(stream_));
}

void CudaGatedModel::forward_full(const std::vector<int32_t>& tokens, const std::vector<int64_t>& rows,
                                  std::vector<float>& out) {
  phase_ = "full forward";
  upload_sample(tokens, rows);
  const ModelConfig& c = config();
  const float* x = b_->ckpt;  // x0
  float* bufs[2] = {b_->xa, b_->xb};
  for (int l = 0; l < c.n_layers; ++l) {
    layer_forward(l, x, bufs[l % 2], nullptr);
    x = bufs[l % 2];
  }
  layer_ = -1;
  final_rows(x, out);
  gated_ready_ = false;  // the checkpoints do not hold a gated forward
}

void CudaGatedModel::forward_gated(const std::vector<int32_t>& tokens, const std::vector<double>& gates,
                                   const std::vector<int64_t>& rows, std::vector<float>& out) {
  phase_ = "gated forward";
  upload_sample(tokens, rows);
  upload_gates(gates);
  const ModelConfig& c = config();
  const int64_t stride = n_ * c.n_embd;
  for (int l = 0; l < c.n_layers; ++l)
    layer_forward(l, b_->ckpt + l * stride, b_->ckpt + (l + 1) * stride, gates_d_ + (int64_t)l * c.n_kv_heads);
  layer_ = -1;
  final_rows(b_->ckpt + c.n_layers * stride, out);
  gated_ready_ = true;
}

void CudaGatedModel::backward_gated(const std::vector<float>& d_out, std::vector<double>& d_gates) {
  const ModelConfig& c = config();
  DUO_CHECK(gated_ready_, "backward_gated needs a forward_gated first");
  DUO_CHECK((int)d_gates.size() == n_gates(), "backward_gated: {} gate gradients for {} gates", d_gates.size(),
            n_gates());
  const int64_t E = c.n_embd, HKV = c.n_kv_heads, stride = n_ * E;
  DUO_CHECK((int64_t)d_out.size() == n_rows_ * E, "backward_gated: {} output gradients for {} rows x {}", d_out.size(),
            n_rows_, E);
  phase_ = "backward";
  layer_ = -1;
  Bufs& b = *b_;
  float* d_rows = d_rows_.ensure_n<float>(n_rows_ * E);
  DUO_CUDA_TRY(cudaMemcpyAsync(d_rows, d_out.data(), sizeof(float) * n_rows_ * E, cudaMemcpyHostToDevice, stream_));
  DUO_CUDA_TRY(cudaMemsetAsync(b.dx, 0, sizeof(float) * stride, stream_));
  DUO_CUDA_TRY(cudaMemsetAsync(d_gates_d_, 0, sizeof(double) * n_gates(), stream_));
  const float* x_last = b.ckpt + c.n_layers * stride;
  rmsnorm_backward(x_last, w_->output_norm(), d_rows, b.dx, n_rows_, (int)E, c.norm_eps, true,
                   rows_.ensure_n<int32_t>(n_rows_), stream_);
  op_done("output rmsnorm backward");
  for (int l = c.n_layers - 1; l >= 0; --l) {
    const float* x_in = b.ckpt + l * stride;
    phase_ = "backward (re-run forward)";
    layer_forward(l, x_in, nullptr, gates_d_ + (int64_t)l * HKV);  // rebuild the tape (recomputation)
    phase_ = "backward";
    layer_backward(l, x_in, gates_f_.data() + (size_t)l * HKV, b.dx, d_gates_d_ + (int64_t)l * HKV);
  }
  layer_ = -1;
  std::vector<double> g((size_t)n_gates());
  DUO_CUDA_TRY(cudaMemcpyAsync(g.data(), d_gates_d_, sizeof(double) * g.size(), cudaMemcpyDeviceToHost, stream_));
  DUO_CUDA_TRY(cudaStreamSynchronize(stream_));
  for (size_t i = 0; i < g.size(); ++i) d_gates[i] += g[i];
}

// The gated logits are computed as z_full + (h_mix - h_full) W^T: the difference enters the bf16
// GEMM rounded relative to itself, not to h, so small differences keep their precision.
double CudaGatedModel::logits_distill(const std::vector<float>& h_full, const std::vector<float>& h_mix,
                                      std::vector<float>& d_mix) {
  const ModelConfig& c = config();
  const int64_t R = n_rows_, E = c.n_embd, V = c.n_vocab;
  std::vector<bf16>& x = lm_host_x_;  // kept across steps
  x.resize((size_t)(2 * R * E));
  for (int64_t i = 0; i < R * E; ++i) {
    x[(size_t)i] = __float2bfloat16(h_full[(size_t)i]);
    x[(size_t)(R * E + i)] = __float2bfloat16(h_mix[(size_t)i] - h_full[(size_t)i]);
  }
  bf16* x_d = lm_x_.ensure_n<bf16>(2 * R * E);
  float* z_d = lm_z_.ensure_n<float>(2 * R * V);
  DUO_CUDA_TRY(cudaMemcpyAsync(x_d, x.data(), sizeof(bf16) * x.size(), cudaMemcpyHostToDevice, stream_));
  gemm_->linear(w_->output(), V, E, x_d, E, 2 * R, z_d, V);  // [z_full ; z_delta] = [h_full ; h_mix - h_full] W^T
  op_done("LM head (logit loss)");
  // Softmaxes, per-row KL and d KL / d z_mix on the GPU; only the rows' KLs come back.
  double* kl_d = lm_kl_.ensure_n<double>(R);
  bf16* dz_d = lm_dz_.ensure_n<bf16>(R * V);
  logit_kl_grad(z_d, R, V, kl_d, dz_d, stream_);
  op_done("logit KL");
  std::vector<double> kl_rows((size_t)R);
  DUO_CUDA_TRY(cudaMemcpyAsync(kl_rows.data(), kl_d, sizeof(double) * R, cudaMemcpyDeviceToHost, stream_));
  float* dh_d = lm_dh_.ensure_n<float>(R * E);
  gemm_->linear_input_grad(bf16_weight(w_->output()), V, E, dz_d, V, R, dh_d, E);  // d h_mix = d z W
  op_done("LM head backward (logit loss)");
  d_mix.resize((size_t)(R * E));
  DUO_CUDA_TRY(cudaMemcpyAsync(d_mix.data(), dh_d, sizeof(float) * d_mix.size(), cudaMemcpyDeviceToHost, stream_));
  DUO_CUDA_TRY(cudaStreamSynchronize(stream_));
  double kl = 0;  // in row order, as the host twin sums
  for (double k : kl_rows) kl += k;
  return kl / (double)R;
}

LossValue CudaGatedModel::loss_and_grad(const std::vector<int32_t>& tokens, const std::vector<int64_t>& rows,
                                        const std::vector<double>& gates, double lambda, std::vector<double>& grad,
                                        DistillTarget target) {
  DUO_CHECK((int)gates.size() == n_gates(), "{} gates for a model with {}", gates.size(), n_gates());
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t E = config().n_embd, R = (int64_t)rows.size();
  std::vector<float> h_full, h_mix, d_mix((size_t)(R * E));
  DUO_CUDA_TRY(cudaEventRecord(ev_[0], stream_));
  forward_full(tokens, rows, h_full);
  DUO_CUDA_TRY(cudaEventRecord(ev_[1], stream_));
  forward_gated(tokens, gates, rows, h_mix);
  DUO_CUDA_TRY(cudaEventRecord(ev_[2], stream_));
  LossValue v;
  v.distill = target == DistillTarget::Logits ? logits_distill(h_full, h_mix, d_mix)
                                              : distill_loss<float>(h_full.data(), h_mix.data(), R, E, d_mix.data());
  grad.assign(gates.size(), 0.0);
  DUO_CUDA_TRY(cudaEventRecord(ev_[3], stream_));
  backward_gated(d_mix, grad);
  DUO_CUDA_TRY(cudaEventRecord(ev_[4], stream_));
  v.reg = gate_l1_mean(gates, lambda, grad);
  v.total = v.distill + lambda * v.reg;
  DUO_CUDA_TRY(cudaEventSynchronize(ev_[4]));
  float ms = 0;
  DUO_CUDA_TRY(cudaEventElapsedTime(&ms, ev_[0], ev_[1]));
  times_.full_forward = ms;
  DUO_CUDA_TRY(cudaEventElapsedTime(&ms, ev_[1], ev_[2]));
  times_.gated_forward = ms;
  DUO_CUDA_TRY(cudaEventElapsedTime(&ms, ev_[3], ev_[4]));
  times_.backward = ms;
  times_.total = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  return v;
}

}  // namespace duo::cuda::calib
