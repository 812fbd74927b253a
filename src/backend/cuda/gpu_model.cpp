#include "backend/cuda/gpu_model.h"

#include <algorithm>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels.h"
#include "core/error.h"

namespace duo::cuda {

GpuModel::GpuModel(std::unique_ptr<GpuWeights> weights) : w_(std::move(weights)) {
  // A blocking stream: it stays ordered with the legacy default stream, which the plain
  // cudaMemset / cudaMemcpy calls of buffer set-up use.
  DUO_CUDA_TRY(cudaStreamCreate(&stream_));
  gemm_ = std::make_unique<Gemm>(stream_);
  events_.resize(2 * (size_t)config().n_layers);
  for (auto& e : events_) DUO_CUDA_TRY(cudaEventCreate(&e));
}

GpuModel::~GpuModel() {
  if (stream_) (void)cudaStreamSynchronize(stream_);
  for (auto e : events_) cudaEventDestroy(e);
  gemm_.reset();
  if (stream_) cudaStreamDestroy(stream_);
}

std::unique_ptr<GpuKvCache> GpuModel::new_cache(const HeadPlan& plan, int64_t max_tokens) const {
  return std::make_unique<GpuKvCache>(config(), plan, max_tokens, stream_);
}

void GpuModel::release_scratch() {
  DUO_CUDA_TRY(cudaStreamSynchronize(stream_));
  for (ScratchBuffer* b : {&tokens_, &x_, &xn_, &qkv_, &q_, &k_, &v_, &att_, &o_, &gu_, &h_, &logits_, &decode_ws_})
    b->release();
}

const int32_t* GpuModel::upload_tokens(const GpuKvCache& kv, const int32_t* tokens, int64_t n) {
  const ModelConfig& c = config();
  DUO_CHECK(kv.n_past() + n <= kv.max_tokens(),
            "sequence of {} tokens exceeds the {} tokens its CUDA KV cache was created for ({} already in it)",
            kv.n_past() + n, kv.max_tokens(), kv.n_past());
  for (int64_t i = 0; i < n; ++i)
    DUO_CHECK(tokens[i] >= 0 && tokens[i] < c.n_vocab, "token id {} at index {} is outside the vocabulary (0..{})",
              tokens[i], i, c.n_vocab - 1);
  int32_t* d = tokens_.ensure_n<int32_t>(n);
  // From pageable memory: returns once the ids are staged, after the stream's earlier work.
  DUO_CUDA_TRY(cudaMemcpyAsync(d, tokens, sizeof(int32_t) * n, cudaMemcpyHostToDevice, stream_));
  return d;
}

void GpuModel::forward(GpuKvCache& kv, const int32_t* tokens, int64_t n, int64_t chunk, float* logits,
                       bool all_logits) {
  DUO_CHECK(n > 0, "forward needs at least one token");
  DUO_CHECK(chunk > 0, "chunk size must be positive");
  const int64_t V = config().n_vocab;
  const int32_t* ids = upload_tokens(kv, tokens, n);
  for (int64_t b = 0; b < n; b += chunk) {
    const int m = (int)std::min(chunk, n - b);
    const bool last = b + m == n;
    const int rows = !logits ? 0 : all_logits ? m : last ? 1 : 0;
    run_chunk(kv, ids + b, m, rows);
    if (rows > 0)
      DUO_CUDA_TRY(cudaMemcpyAsync(logits + (all_logits ? b * V : 0), logits_.ensure_n<float>(rows * V),
                                   sizeof(float) * rows * V, cudaMemcpyDeviceToHost, stream_));
  }
  DUO_CUDA_TRY(cudaStreamSynchronize(stream_));
}

int32_t GpuModel::forward_pick(GpuKvCache& kv, const int32_t* tokens, int64_t n, int64_t chunk,
                               const SamplerConfig& s, double u) {
  DUO_CHECK(n > 0, "forward needs at least one token");
  DUO_CHECK(chunk > 0, "chunk size must be positive");
  const int V = config().n_vocab;
  const int32_t* ids = upload_tokens(kv, tokens, n);
  for (int64_t b = 0; b < n; b += chunk) {
    const int m = (int)std::min(chunk, n - b);
    run_chunk(kv, ids + b, m, b + m == n ? 1 : 0);
  }
  int32_t* out = picked_.ensure_n<int32_t>(1);
  const float* lg = logits_.ensure_n<float>(V);
  if (s.temperature <= 0.0f) {
    argmax_rows(lg, 1, V, out, stream_);
  } else {
    SampleArgs a;
    a.temperature = s.temperature;
    a.top_k = s.top_k;
    a.top_p = s.top_p;
    a.u = u;
    sample_token(lg, V, a, out, stream_);
  }
  int32_t id = 0;
  DUO_CUDA_TRY(cudaMemcpyAsync(&id, out, sizeof(int32_t), cudaMemcpyDeviceToHost, stream_));
  DUO_CUDA_TRY(cudaStreamSynchronize(stream_));
  return id;
}

void GpuModel::run_chunk(GpuKvCache& kv, const int32_t* tokens_d, int n, int logits_rows) {
  const ModelConfig& c = config();
  const int64_t E = c.n_embd, D = c.head_dim, H = c.n_heads, HKV = c.n_kv_heads;
  const int64_t Q = H * D, KV = HKV * D, QKV = Q + 2 * KV, F = c.n_ff, V = c.n_vocab;
  const int pos0 = (int)kv.n_past();
  const cudaStream_t s = stream_;
  kv.reserve(pos0 + (int64_t)n);  // pages for the chunk's positions, before any kernel runs

  float* x = x_.ensure_n<float>(n * E);
  bf16* xn = xn_.ensure_n<bf16>(n * E);
  float* qkv = qkv_.ensure_n<float>(n * QKV);
  bf16* q = q_.ensure_n<bf16>(n * Q);
  bf16* k = k_.ensure_n<bf16>(n * KV);
  bf16* v = v_.ensure_n<bf16>(n * KV);
  bf16* att = att_.ensure_n<bf16>(n * Q);
  float* o = o_.ensure_n<float>(n * E);
  float* gu = gu_.ensure_n<float>(n * 2 * F);
  bf16* h = h_.ensure_n<bf16>(n * F);

  embed_tokens(w_->tok_embd(), tokens_d, n, (int)E, x, s);
  rmsnorm(x, w_->layer(0).attn_norm, xn, n, (int)E, c.norm_eps, s);
  for (int l = 0; l < c.n_layers; ++l) {
    const GpuLayerWeights& W = w_->layer(l);
    const LayerKv& cache = kv.layer(l);
    // --- attention block ---
    gemm_->linear(W.wqkv, QKV, E, xn, E, n, qkv, QKV);
    QkvRopeArgs ra;
    ra.qkv = qkv, ra.ld = QKV, ra.bias = W.bqkv, ra.inv_freq = w_->inv_freq();
    ra.n = n, ra.pos0 = pos0, ra.n_heads = (int)H, ra.n_kv_heads = (int)HKV, ra.head_dim = (int)D;
    ra.neox = c.rope_style == RopeStyle::Neox;
    ra.q = q, ra.k = k, ra.v = v;
    qkv_bias_rope(ra, s);
    if (n == 1) {
      // Decode: store the token's K/V first, then attend over positions [0, pos0 + 1).
      kv_append(k, v, KV, 1, pos0, (int)HKV, (int)D, cache, s);
      DecodeArgs da;
      da.q = q, da.out = att, da.n_past = pos0 + 1;
      da.n_heads = (int)H, da.n_kv_heads = (int)HKV, da.head_dim = (int)D;
      da.cache = cache;
      da.retrieval_kv_heads = kv.retrieval_heads(l);
      // Without retrieval heads every head reads only its sink + recent rows: one split.
      if (da.retrieval_kv_heads == 0) da.split_tokens = std::max(64, pos0 + 1);
      const int splits = decode_splits(da);
      if (splits > 1) {
        const size_t ws = decode_workspace_bytes((int)H, (int)D, splits);
        da.workspace = decode_ws_.ensure(ws), da.workspace_bytes = ws;
      }
      if (timing_) DUO_CUDA_TRY(cudaEventRecord(events_[2 * l], s));
      decode_attention(da, s);
      if (timing_) DUO_CUDA_TRY(cudaEventRecord(events_[2 * l + 1], s));
    } else {
      // Pre-fill: the chunk attends over the cache plus itself, then is stored.
      PrefillArgs pa;
      pa.q = q, pa.k = k, pa.v = v, pa.out = att;
      pa.q_stride = Q, pa.kv_stride = KV, pa.o_stride = Q;
      pa.n = n, pa.pos0 = pos0, pa.n_heads = (int)H, pa.n_kv_heads = (int)HKV, pa.head_dim = (int)D;
      pa.cache = cache;
      if (timing_) DUO_CUDA_TRY(cudaEventRecord(events_[2 * l], s));
      prefill_attention(pa, s);
      if (timing_) DUO_CUDA_TRY(cudaEventRecord(events_[2 * l + 1], s));
      kv_append(k, v, KV, n, pos0, (int)HKV, (int)D, cache, s);
    }
    gemm_->linear(W.wo, E, Q, att, Q, n, o, E);
    // --- feed-forward block ---
    add_rmsnorm(x, o, W.ffn_norm, xn, n, (int)E, c.norm_eps, s);
    gemm_->linear(W.wgu, 2 * F, E, xn, E, n, gu, 2 * F);
    swiglu(gu, n, (int)F, h, s);
    gemm_->linear(W.wdown, E, F, h, F, n, o, E);
    // Residual add, then the next layer's attention norm (the output norm after the last).
    const float* next_norm = l + 1 < c.n_layers ? w_->layer(l + 1).attn_norm : w_->output_norm();
    add_rmsnorm(x, o, next_norm, xn, n, (int)E, c.norm_eps, s);
    if (timing_ && l + 1 == c.n_layers) {
      DUO_CUDA_TRY(cudaEventSynchronize(events_[2 * l + 1]));
      for (int j = 0; j < c.n_layers; ++j) {
        float ms = 0.0f;
        DUO_CUDA_TRY(cudaEventElapsedTime(&ms, events_[2 * j], events_[2 * j + 1]));
        attn_ms_ += ms;
      }
    }
  }
  kv.advance(n);
  if (logits_rows > 0) {
    // LM head over the last rows only (xn holds them normalised by output_norm).
    float* lg = logits_.ensure_n<float>((int64_t)logits_rows * V);
    gemm_->linear(w_->output(), V, E, xn + (int64_t)(n - logits_rows) * E, E, logits_rows, lg, V);
  }
}

}  // namespace duo::cuda
