#include "backend/cuda/gpu_model.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>

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
  const char* env = std::getenv("DUO_CUDA_GRAPH");
  graphs_ = !(env && !std::strcmp(env, "0"));
  const char* bd = std::getenv("DUO_BATCH_DECODE");
  batch_decode_ = !(bd && !std::strcmp(bd, "0"));
}

void GpuModel::reset_graph() {
  if (graph_) cudaGraphExecDestroy(graph_);
  graph_ = nullptr;
  graph_key_.clear();
}

void GpuModel::reset_step_graphs() {
  for (auto& [bucket, g] : step_graphs_)
    if (g.exec) cudaGraphExecDestroy(g.exec);
  step_graphs_.clear();
}

GpuModel::~GpuModel() {
  if (stream_) (void)cudaStreamSynchronize(stream_);
  reset_graph();
  reset_step_graphs();
  for (auto e : events_) cudaEventDestroy(e);
  gemm_.reset();
  if (stream_) cudaStreamDestroy(stream_);
}

std::unique_ptr<GpuKvCache> GpuModel::new_cache(const HeadPlan& plan, int64_t max_tokens,
                                                std::shared_ptr<KvPagePool> pool) const {
  return std::make_unique<GpuKvCache>(config(), plan, max_tokens, stream_, std::move(pool));
}

void GpuModel::release_scratch() {
  DUO_CUDA_TRY(cudaStreamSynchronize(stream_));
  for (ScratchBuffer* b : {&tokens_, &x_, &xn_, &qkv_, &q_, &k_, &v_, &att_, &o_, &gu_, &h_, &logits_, &decode_ws_,
                           &replay_buf_, &replay_ws_, &prefill_kv_})
    b->release();
  reset_graph();  // they pointed into the released buffers
  reset_step_graphs();
}

const int32_t* GpuModel::upload_tokens(const GpuKvCache& kv, const int32_t* tokens, int64_t n) {
  const ModelConfig& c = config();
  DUO_CHECK(kv.n_past() + n <= kv.max_tokens(),
            "sequence of {} tokens exceeds the {} tokens its CUDA KV cache was created for ({} already in it)",
            kv.n_past() + n, kv.max_tokens(), kv.n_past());
  for (int64_t i = 0; i < n; ++i)
    DUO_CHECK(tokens[i] >= 0 && tokens[i] < c.n_vocab, "token id {} at index {} is outside the vocabulary (0..{})",
              tokens[i], i, c.n_vocab - 1);
  // From pageable memory: returns once the ids are staged, after the stream's earlier work.
  if (n == 1) {
    const int32_t step[2] = {tokens[0], (int32_t)kv.n_past()};  // token id, position
    int32_t* d = step_.ensure_n<int32_t>(2);
    DUO_CUDA_TRY(cudaMemcpyAsync(d, step, sizeof(step), cudaMemcpyHostToDevice, stream_));
    return d;
  }
  int32_t* d = tokens_.ensure_n<int32_t>(n);
  DUO_CUDA_TRY(cudaMemcpyAsync(d, tokens, sizeof(int32_t) * n, cudaMemcpyHostToDevice, stream_));
  return d;
}

void GpuModel::forward(GpuKvCache& kv, const int32_t* tokens, int64_t n, int64_t chunk, float* logits,
                       bool all_logits) {
  DUO_CHECK(n > 0, "forward needs at least one token");
  DUO_CHECK(chunk > 0, "chunk size must be positive");
  const int64_t V = config().n_vocab;
  const int32_t* ids = upload_tokens(kv, tokens, n);
  if (n > 1) reserve_prefill_scratch(kv, n, chunk);
  for (int64_t b = 0; b < n; b += chunk) {
    const int m = (int)std::min(chunk, n - b);
    const bool last = b + m == n;
    const int rows = !logits ? 0 : all_logits ? m : last ? 1 : 0;
    if (n == 1)
      run_decode(kv, rows);
    else
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
  if (n == 1) {
    run_decode(kv, 1);
  } else {
    reserve_prefill_scratch(kv, n, chunk);
    for (int64_t b = 0; b < n; b += chunk) {
      const int m = (int)std::min(chunk, n - b);
      run_chunk(kv, ids + b, m, b + m == n ? 1 : 0);
    }
  }
  int32_t* out = picked_.ensure_n<int32_t>(1);
  const float* lg = logits_.ensure_n<float>(V);
  if (s.temperature <= 0.0f) {
    argmax_rows(lg, 1, V, out, stream_);
  } else {
    enqueue_sample(lg, s, u, out);
  }
  int32_t id = 0;
  DUO_CUDA_TRY(cudaMemcpyAsync(&id, out, sizeof(int32_t), cudaMemcpyDeviceToHost, stream_));
  DUO_CUDA_TRY(cudaStreamSynchronize(stream_));
  return id;
}

GpuModel::Act GpuModel::activations(int n, const std::vector<const GpuKvCache*>& decoders) {
  const ModelConfig& c = config();
  const int64_t E = c.n_embd, Q = (int64_t)c.n_heads * c.head_dim, KV = (int64_t)c.n_kv_heads * c.head_dim;
  const int64_t QKV = Q + 2 * KV, F = c.n_ff;
  Act a;
  a.x = x_.ensure_n<float>(n * E);
  a.xn = xn_.ensure_n<bf16>(n * E);
  a.qkv = qkv_.ensure_n<float>(n * QKV);
  a.q = q_.ensure_n<bf16>(n * Q);
  a.k = k_.ensure_n<bf16>(n * KV);
  a.v = v_.ensure_n<bf16>(n * KV);
  a.att = att_.ensure_n<bf16>(n * Q);
  a.o = o_.ensure_n<float>(n * E);
  a.gu = gu_.ensure_n<float>(n * 2 * F);
  a.h = h_.ensure_n<bf16>(n * F);
  a.logits = logits_.ensure_n<float>(c.n_vocab);  // grown for more rows by enqueue_chunk's caller
  a.ws = nullptr, a.ws_bytes = 0;
  a.pkv = nullptr, a.pkv_bytes = 0;
  // The largest split-KV workspace any decoder's layer needs (decoders run one after another
  // on the stream and share it), allocated before anything is queued.
  const int32_t* pos_d = step_.ensure_n<int32_t>(2) + 1;
  for (const GpuKvCache* kv : decoders)
    for (int l = 0; l < c.n_layers; ++l) {
      const DecodeArgs da = decode_args(*kv, l, nullptr, nullptr, pos_d);
      a.ws_bytes = std::max(a.ws_bytes, decode_workspace_bytes(c.n_heads, c.head_dim, decode_splits(da)));
    }
  if (a.ws_bytes) a.ws = decode_ws_.ensure(a.ws_bytes);
  return a;
}

void GpuModel::check_step(const std::vector<StepItem>& items) const {
  const ModelConfig& c = config();
  DUO_CHECK(!items.empty(), "a batched step needs at least one item");
  for (size_t i = 0; i < items.size(); ++i) {
    const StepItem& it = items[i];
    DUO_CHECK(it.kv != nullptr && it.tokens != nullptr && it.n > 0, "step item {} has no cache or no tokens", i);
    DUO_CHECK(it.kv->n_past() + it.n <= it.kv->max_tokens(),
              "step item {}: sequence of {} tokens exceeds the {} tokens its CUDA KV cache was created for", i,
              it.kv->n_past() + it.n, it.kv->max_tokens());
    for (size_t j = 0; j < i; ++j)
      DUO_CHECK(items[j].kv != it.kv, "step items {} and {} share one cache (one item per sequence)", j, i);
    for (int t = 0; t < it.n; ++t)
      DUO_CHECK(it.tokens[t] >= 0 && it.tokens[t] < c.n_vocab,
                "step item {}: token id {} at index {} is outside the vocabulary (0..{})", i, it.tokens[t], t,
                c.n_vocab - 1);
  }
}

void GpuModel::step(const std::vector<StepItem>& items, int32_t* picked, float* logits) {
  check_step(items);
  if (step_replay(items, picked, logits)) return;
  const ModelConfig& c = config();
  const int N = (int)items.size();
  const int64_t E = c.n_embd, V = c.n_vocab;
  // Rows side by side: item i owns rows [first[i], first[i] + n); positions and ids of every
  // row, then the rows whose logits are needed (each item's last row when it picks or when
  // logits are asked for).
  std::vector<int> first(N);
  std::vector<int32_t> ids, meta;  // meta: [T positions][R LM-head rows]
  std::vector<int> lm_item;        // item of each LM-head row
  std::vector<const GpuKvCache*> decoders;
  int T = 0;
  for (int i = 0; i < N; ++i) {
    const StepItem& it = items[i];
    first[i] = T;
    ids.insert(ids.end(), it.tokens, it.tokens + it.n);
    for (int t = 0; t < it.n; ++t) meta.push_back((int32_t)(it.kv->n_past() + t));
    if (it.n == 1) decoders.push_back(it.kv);
    T += it.n;
  }
  for (int i = 0; i < N; ++i)
    if (items[i].pick || logits) {
      meta.push_back(first[i] + items[i].n - 1);
      lm_item.push_back(i);
    }
  const int R = (int)lm_item.size();
  // Every buffer is sized before the first kernel is queued (a grown buffer moves).
  for (const StepItem& it : items) it.kv->reserve(it.kv->n_past() + it.n);
  // (Batched decode sizes its own workspace in prepare_step_decode.)
  Act act = activations(T, batch_decode_ ? std::vector<const GpuKvCache*>{} : decoders);
  size_t scratch = 0;  // one scratch serves the pre-fill items in turn: the largest need
  for (const StepItem& it : items)
    if (it.n > 1) scratch = std::max(scratch, prefill_scratch_need(*it.kv, (int)it.kv->n_past()));
  prefill_scratch(scratch, act);
  int32_t* tokens_d = tokens_.ensure_n<int32_t>(T);
  int32_t* meta_d = step_pos_.ensure_n<int32_t>((int64_t)meta.size());
  bf16* lm_in = lm_in_.ensure_n<bf16>(std::max(1, R) * E);
  float* lg = logits_.ensure_n<float>((int64_t)std::max(1, R) * V);
  int32_t* out_d = picked_.ensure_n<int32_t>(std::max(1, R));
  // From pageable memory: returns once staged, after the stream's earlier work.
  DUO_CUDA_TRY(cudaMemcpyAsync(tokens_d, ids.data(), sizeof(int32_t) * T, cudaMemcpyHostToDevice, stream_));
  DUO_CUDA_TRY(
      cudaMemcpyAsync(meta_d, meta.data(), sizeof(int32_t) * meta.size(), cudaMemcpyHostToDevice, stream_));
  if (batch_decode_) prepare_step_decode(items, first);

  if (batch_decode_) {
    enqueue_layers(act, tokens_d, T, [&](int l) { enqueue_step_attention(items, first, act, meta_d, l); });
  } else {
    // One sequence after another (the kernels and split counts forward() uses; for A/B).
    enqueue_layers(act, tokens_d, T, [&](int l) {
      if (timing_) DUO_CUDA_TRY(cudaEventRecord(events_[2 * l], stream_));
      for (int i = 0; i < N; ++i) {
        const StepItem& it = items[i];
        const int32_t* pos_d = it.n == 1 ? meta_d + first[i] : nullptr;
        enqueue_attention(*it.kv, l, act, first[i], it.n, (int)it.kv->n_past(), pos_d, false);
      }
      if (timing_) DUO_CUDA_TRY(cudaEventRecord(events_[2 * l + 1], stream_));
    });
  }
  for (const StepItem& it : items) it.kv->advance(it.n);
  std::vector<int32_t> got(R, -1);
  if (R > 0) {
    gather_rows(act.xn, E, meta_d + T, R, lm_in, stream_);
    enqueue_lm_head(lm_in, R, lg);
    argmax_rows(lg, R, (int)V, out_d, stream_);
    for (int r = 0; r < R; ++r) {
      const StepItem& it = items[lm_item[r]];
      if (!it.pick || it.sampling.temperature <= 0.0f) continue;
      enqueue_sample(lg + (int64_t)r * V, it.sampling, it.u, out_d + r);
    }
    DUO_CUDA_TRY(cudaMemcpyAsync(got.data(), out_d, sizeof(int32_t) * R, cudaMemcpyDeviceToHost, stream_));
    if (logits)  // every item has its row then, in item order
      DUO_CUDA_TRY(cudaMemcpyAsync(logits, lg, sizeof(float) * R * V, cudaMemcpyDeviceToHost, stream_));
  }
  DUO_CUDA_TRY(cudaStreamSynchronize(stream_));
  for (int i = 0; i < N; ++i) picked[i] = -1;
  for (int r = 0; r < R; ++r)
    if (items[lm_item[r]].pick) picked[lm_item[r]] = got[r];
}

void GpuModel::run_chunk(GpuKvCache& kv, const int32_t* tokens_d, int n, int logits_rows) {
  kv.reserve(kv.n_past() + (int64_t)n);  // pages for the chunk's positions, before any kernel runs
  Act act = activations(n, {});
  prefill_scratch(prefill_scratch_need(kv, (int)kv.n_past()), act);
  if (logits_rows > 1) act.logits = logits_.ensure_n<float>((int64_t)logits_rows * config().n_vocab);
  enqueue_chunk(kv, act, tokens_d, n, (int)kv.n_past(), nullptr, logits_rows);
  kv.advance(n);
}

void GpuModel::run_decode(GpuKvCache& kv, int logits_rows) {
  kv.reserve(kv.n_past() + 1);  // pages (and their page-table entries) before the step runs
  const Act act = activations(1, {&kv});
  const int32_t* step = step_.ensure_n<int32_t>(2);  // [token id, position], staged by upload_tokens
  if (!graphs_ || timing_) {
    enqueue_chunk(kv, act, step, 1, -1, step + 1, logits_rows);
    kv.advance(1);
    return;
  }
  // Everything a captured step baked in: the cache (its views and page tables), the buffers,
  // and whether it ends with the LM head. The position is read on the device.
  auto as_key = [](uint64_t v) { return reinterpret_cast<const void*>(v); };
  const std::vector<const void*> key = {as_key(kv.id()), as_key((uint64_t)logits_rows), as_key(act.ws_bytes),
                                        step, act.x, act.xn, act.qkv, act.q, act.k, act.v, act.att, act.o, act.gu,
                                        act.h, act.logits, act.ws};
  if (!graph_ || key != graph_key_) {
    reset_graph();
    cudaGraph_t g = nullptr;
    DUO_CUDA_TRY(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
    try {
      enqueue_chunk(kv, act, step, 1, -1, step + 1, logits_rows);
    } catch (...) {
      (void)cudaStreamEndCapture(stream_, &g);
      if (g) cudaGraphDestroy(g);
      throw;
    }
    DUO_CUDA_TRY(cudaStreamEndCapture(stream_, &g));
    const cudaError_t e = cudaGraphInstantiate(&graph_, g, 0);
    cudaGraphDestroy(g);
    DUO_CUDA_TRY(e);
    graph_key_ = key;
    ++captures_;
  }
  DUO_CUDA_TRY(cudaGraphLaunch(graph_, stream_));
  kv.advance(1);
}

void GpuModel::enqueue_layers(const Act& act, const int32_t* tokens_d, int n, const std::function<void(int)>& attend) {
  const ModelConfig& c = config();
  const int64_t E = c.n_embd, D = c.head_dim, H = c.n_heads, HKV = c.n_kv_heads;
  const int64_t Q = H * D, KV = HKV * D, QKV = Q + 2 * KV, F = c.n_ff;
  const cudaStream_t s = stream_;
  float* x = act.x;
  bf16* xn = act.xn;
  bf16* h = act.h;
  float *o = act.o, *gu = act.gu;

  const Glu act_fn = c.gelu_mlp ? Glu::GeluTanh : Glu::Silu;  // gemma3: GeGLU
  embed_tokens(w_->tok_embd(), tokens_d, n, (int)E, x, s, c.embd_scale);
  rmsnorm(x, w_->layer(0).attn_norm, xn, n, (int)E, c.norm_eps, s);
  for (int l = 0; l < c.n_layers; ++l) {
    const GpuLayerWeights& W = w_->layer(l);
    // --- attention block: QKV of every row, then the rows' attention (attend) into act.att ---
    gemm_->linear(W.wqkv, QKV, E, xn, E, n, act.qkv, QKV);
    attend(l);  // records the layer's timing events when timing_
    gemm_->linear(W.wo, E, Q, act.att, Q, n, o, E);
    // --- feed-forward block --- (sandwich norms, gemma3: each block's output normalized before
    // its residual add, in the same kernel as the add and the next norm)
    if (W.post_attn_norm)
      add_normed_rmsnorm(x, o, W.post_attn_norm, W.ffn_norm, xn, n, (int)E, c.norm_eps, s);
    else
      add_rmsnorm(x, o, W.ffn_norm, xn, n, (int)E, c.norm_eps, s);
    if (gemm_->uses_gemv(n, W.wgu, E, xn)) {
      gemm_->swiglu_gemv(W.wgu, F, E, xn, h, act_fn);  // one token: SwiGLU / GeGLU in the projection's epilogue
    } else {
      gemm_->linear(W.wgu, 2 * F, E, xn, E, n, gu, 2 * F);
      swiglu(gu, n, (int)F, h, s, act_fn);
    }
    gemm_->linear(W.wdown, E, F, h, F, n, o, E);
    // Residual add, then the next layer's attention norm (the output norm after the last).
    const float* next_norm = l + 1 < c.n_layers ? w_->layer(l + 1).attn_norm : w_->output_norm();
    if (W.post_ffn_norm)
      add_normed_rmsnorm(x, o, W.post_ffn_norm, next_norm, xn, n, (int)E, c.norm_eps, s);
    else
      add_rmsnorm(x, o, next_norm, xn, n, (int)E, c.norm_eps, s);
  }
  if (timing_) {
    DUO_CUDA_TRY(cudaEventSynchronize(events_[2 * c.n_layers - 1]));
    for (int j = 0; j < c.n_layers; ++j) {
      float ms = 0.0f;
      DUO_CUDA_TRY(cudaEventElapsedTime(&ms, events_[2 * j], events_[2 * j + 1]));
      attn_ms_ += ms;
    }
  }
}

void GpuModel::enqueue_attention(const GpuKvCache& kv, int l, const Act& act, int row0, int n, int pos0,
                                 const int32_t* pos_d, bool timed) {
  const ModelConfig& c = config();
  const int64_t D = c.head_dim, H = c.n_heads, HKV = c.n_kv_heads;
  const int64_t Q = H * D, KV = HKV * D, QKV = Q + 2 * KV;
  const cudaStream_t s = stream_;
  const LayerKv& cache = kv.layer(l);
  bf16 *q = act.q + (int64_t)row0 * Q, *k = act.k + (int64_t)row0 * KV, *v = act.v + (int64_t)row0 * KV;
  bf16* att = act.att + (int64_t)row0 * Q;
  QkvRopeArgs ra;
  ra.qkv = act.qkv + (int64_t)row0 * QKV, ra.ld = QKV, ra.bias = w_->layer(l).bqkv, ra.inv_freq = w_->inv_freq(l);
  ra.n = n, ra.pos0 = pos0, ra.n_heads = (int)H, ra.n_kv_heads = (int)HKV, ra.head_dim = (int)D;
  ra.neox = c.rope_style == RopeStyle::Neox;
  ra.q_norm = w_->layer(l).q_norm, ra.k_norm = w_->layer(l).k_norm, ra.norm_eps = c.norm_eps;
  ra.q_scale = query_scale();
  ra.q = q, ra.k = k, ra.v = v;
  ra.pos_d = pos_d;
  // Decode: the token's K/V go straight into the cache (kv_append's job), then attention
  // over positions [0, pos + 1).
  ra.to_cache = pos_d != nullptr;
  ra.cache = cache;
  qkv_bias_rope(ra, s);
  if (pos_d) {
    // Quantized caches: the token just written to the residual may complete a group of 64
    // (decided on the device, so a captured step serves every position).
    kv_quantize(nullptr, nullptr, 0, 1, -1, (int)HKV, (int)D, kv.retrieval_heads(l), cache, s, pos_d);
    DecodeArgs da = decode_args(kv, l, q, att, pos_d);
    da.workspace = act.ws, da.workspace_bytes = act.ws_bytes;
    if (timed) DUO_CUDA_TRY(cudaEventRecord(events_[2 * l], s));
    decode_attention(da, s);
    if (timed) DUO_CUDA_TRY(cudaEventRecord(events_[2 * l + 1], s));
  } else {
    // Pre-fill: the chunk attends over the cache plus itself, then is stored. A quantized past
    // is dequantized into the bf16 scratch first (timed with the attention it serves).
    PrefillArgs pa = prefill_args(kv, l, n, pos0);
    pa.q = q, pa.k = k, pa.v = v, pa.out = att;
    if (timed) DUO_CUDA_TRY(cudaEventRecord(events_[2 * l], s));
    prefill_attention_quant(pa, prefill_quant_, act.pkv, act.pkv_bytes, s);
    if (timed) DUO_CUDA_TRY(cudaEventRecord(events_[2 * l + 1], s));
    // Quantized caches: groups this chunk completes go into pages first (their earlier rows
    // are read from the residual, which kv_append then overwrites). No-op for bf16.
    kv_quantize(k, v, KV, n, pos0, (int)HKV, (int)D, kv.retrieval_heads(l), cache, s);
    kv_append(k, v, KV, n, pos0, (int)HKV, (int)D, cache, s);
  }
}

// The decode items of a batched step: their rows, positions and every layer's cache views on
// the device, the shared split workspace and parameter buffer, sized before anything is queued.
void GpuModel::prepare_step_decode(const std::vector<StepItem>& items, const std::vector<int>& first) {
  const ModelConfig& c = config();
  dec_.clear();
  for (size_t i = 0; i < items.size(); ++i)
    if (items[i].n == 1) dec_.push_back((int)i);
  // One attention launch takes one KV type: decode items grouped by type (usually one group).
  std::stable_sort(dec_.begin(), dec_.end(), [&](int a, int b) { return items[a].kv->type() < items[b].kv->type(); });
  dec_groups_.clear();
  for (int j = 0; j < (int)dec_.size(); ++j)
    if (j == 0 || items[dec_[j]].kv->type() != items[dec_[j - 1]].kv->type()) dec_groups_.push_back(j);
  dec_groups_.push_back((int)dec_.size());
  const int nd = (int)dec_.size();
  if (nd == 0) return;
  std::vector<int32_t> rows_pos(2 * (size_t)nd);
  std::vector<LayerKv> views((size_t)c.n_layers * nd);
  size_t ws = 0;
  std::vector<DecodeArgs> da(nd);
  for (int j = 0; j < nd; ++j) {
    const StepItem& it = items[dec_[j]];
    rows_pos[j] = first[dec_[j]];
    rows_pos[nd + j] = (int32_t)it.kv->n_past();
  }
  for (int l = 0; l < c.n_layers; ++l) {
    for (int j = 0; j < nd; ++j) {
      const GpuKvCache& kv = *items[dec_[j]].kv;
      views[(size_t)l * nd + j] = kv.layer(l);
      da[j] = decode_args(kv, l, nullptr, nullptr);
    }
    for (size_t g = 0; g + 1 < dec_groups_.size(); ++g)
      ws = std::max(ws, decode_batch_workspace_bytes(da.data() + dec_groups_[g], dec_groups_[g + 1] - dec_groups_[g]));
  }
  dec_rows_ = dec_meta_.ensure_n<int32_t>(2 * nd);
  dec_views_ = dec_views_buf_.ensure_n<LayerKv>((int64_t)views.size());
  dec_ws_bytes_ = ws;
  dec_ws_ = ws ? decode_ws_.ensure(ws) : nullptr;
  dec_params_bytes_ = decode_batch_params_bytes(nd);
  dec_params_ = dec_params_buf_.ensure(dec_params_bytes_);
  DUO_CUDA_TRY(cudaMemcpyAsync(dec_rows_, rows_pos.data(), sizeof(int32_t) * rows_pos.size(), cudaMemcpyHostToDevice,
                               stream_));
  DUO_CUDA_TRY(cudaMemcpyAsync(dec_views_, views.data(), sizeof(LayerKv) * views.size(), cudaMemcpyHostToDevice,
                               stream_));
}

PrefillArgs GpuModel::prefill_args(const GpuKvCache& kv, int l, int n, int pos0) const {
  const ModelConfig& c = config();
  PrefillArgs pa;
  pa.q_stride = pa.o_stride = (int64_t)c.n_heads * c.head_dim;
  pa.kv_stride = (int64_t)c.n_kv_heads * c.head_dim;
  pa.n = n, pa.pos0 = pos0, pa.n_heads = c.n_heads, pa.n_kv_heads = c.n_kv_heads, pa.head_dim = c.head_dim;
  pa.cache = kv.layer(l);
  if (pa.cache.mode == HeadMode::Mixed) pa.retrieval_kv_heads = kv.retrieval_heads(l);
  return pa;
}

size_t GpuModel::prefill_scratch_need(const GpuKvCache& kv, int pos0) const {
  if (!is_quantized(kv.type())) return 0;
  const PrefillQuantPath path = prefill_quant_ == PrefillQuantPath::Auto ? prefill_quant_path_env() : prefill_quant_;
  if (path != PrefillQuantPath::Bf16Scratch) return 0;
  size_t need = 0;  // layers differ in their retrieval heads
  for (int l = 0; l < config().n_layers; ++l)
    need = std::max(need, prefill_quant_scratch_bytes(prefill_args(kv, l, 1, pos0)));
  return need;
}

void GpuModel::prefill_scratch(size_t need, Act& act) {
  act.pkv = nullptr, act.pkv_bytes = 0;
  if (need == 0) return;
  // Freeing (to grow, or past the cap) must wait for the queued chunks that still read it.
  if (need > prefill_kv_cap_) {  // the mma kernel reads the quantized pages; the memory goes to the cache
    if (prefill_kv_.bytes()) {
      DUO_CUDA_TRY(cudaStreamSynchronize(stream_));
      prefill_kv_.release();
    }
    return;
  }
  act.pkv = grow_prefill_scratch(need);
  act.pkv_bytes = prefill_kv_.bytes();
}

void* GpuModel::grow_prefill_scratch(size_t need) {
  // Growing frees the old buffer, which queued chunks may still read: wait for them first.
  if (need > prefill_kv_.bytes() && prefill_kv_.bytes()) DUO_CUDA_TRY(cudaStreamSynchronize(stream_));
  return prefill_kv_.ensure(need);
}

void GpuModel::reserve_prefill_scratch(const GpuKvCache& kv, int64_t n, int64_t chunk) {
  if (n <= chunk) return;  // one chunk: run_chunk sizes it
  const size_t need = prefill_scratch_need(kv, (int)(kv.n_past() + (n - 1) / chunk * chunk));
  if (need == 0 || need > prefill_kv_cap_) return;
  grow_prefill_scratch(need);
}

double GpuModel::decode_attention_graph_ms(const GpuKvCache& kv, int reps) {
  DUO_CHECK(kv.n_past() > 0 && reps > 0, "decode_attention_graph_ms: needs a decoded sequence and reps > 0");
  const Act act = activations(1, {&kv});
  int32_t* pos_d = step_.ensure_n<int32_t>(2) + 1;  // the last position, as a step stages it
  const int32_t pos = (int32_t)kv.n_past() - 1;
  DUO_CUDA_TRY(cudaMemcpyAsync(pos_d, &pos, sizeof(pos), cudaMemcpyHostToDevice, stream_));
  DUO_CUDA_TRY(cudaStreamSynchronize(stream_));  // (pos is on this stack frame)
  cudaGraph_t g = nullptr;
  DUO_CUDA_TRY(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
  try {
    for (int l = 0; l < config().n_layers; ++l) {
      DecodeArgs da = decode_args(kv, l, act.q, act.att, pos_d);
      da.workspace = act.ws, da.workspace_bytes = act.ws_bytes;
      decode_attention(da, stream_);
    }
  } catch (...) {
    (void)cudaStreamEndCapture(stream_, &g);
    if (g) cudaGraphDestroy(g);
    throw;
  }
  DUO_CUDA_TRY(cudaStreamEndCapture(stream_, &g));
  cudaGraphExec_t exec = nullptr;
  const cudaError_t e = cudaGraphInstantiate(&exec, g, 0);
  cudaGraphDestroy(g);
  DUO_CUDA_TRY(e);
  float ms = 0.0f;
  cudaError_t r = cudaGraphLaunch(exec, stream_);  // warm
  if (r == cudaSuccess) r = cudaEventRecord(events_[0], stream_);
  for (int i = 0; i < reps && r == cudaSuccess; ++i) r = cudaGraphLaunch(exec, stream_);
  if (r == cudaSuccess) r = cudaEventRecord(events_[1], stream_);
  if (r == cudaSuccess) r = cudaEventSynchronize(events_[1]);
  if (r == cudaSuccess) r = cudaEventElapsedTime(&ms, events_[0], events_[1]);
  cudaGraphExecDestroy(exec);
  DUO_CUDA_TRY(r);
  return (double)ms / reps;
}

DecodeArgs GpuModel::decode_args(const GpuKvCache& kv, int l, const bf16* q, bf16* out, const int32_t* pos_d) const {
  const ModelConfig& c = config();
  DecodeArgs da;
  da.q = q, da.out = out;
  da.pos_d = pos_d;
  // The device-position (graph) form: split counts that do not depend on the position, only on
  // the longest the sequence may get. The host form: the step's token included.
  da.n_past = pos_d ? (int)kv.max_tokens() : (int)kv.n_past() + 1;
  da.n_heads = c.n_heads, da.n_kv_heads = c.n_kv_heads, da.head_dim = c.head_dim;
  da.cache = kv.layer(l);
  da.retrieval_kv_heads = kv.retrieval_heads(l);
  return da;
}

void GpuModel::enqueue_rope_rows(const Act& act, int l, int n, const int32_t* row_pos_d) {
  const ModelConfig& c = config();
  QkvRopeArgs ra;
  ra.qkv = act.qkv, ra.ld = (int64_t)(c.n_heads + 2 * c.n_kv_heads) * c.head_dim;
  ra.bias = w_->layer(l).bqkv, ra.inv_freq = w_->inv_freq(l);
  ra.n = n, ra.n_heads = c.n_heads, ra.n_kv_heads = c.n_kv_heads, ra.head_dim = c.head_dim;
  ra.neox = c.rope_style == RopeStyle::Neox;
  ra.q_norm = w_->layer(l).q_norm, ra.k_norm = w_->layer(l).k_norm, ra.norm_eps = c.norm_eps;
  ra.q_scale = query_scale();
  ra.q = act.q, ra.k = act.k, ra.v = act.v;
  ra.row_pos = row_pos_d;
  qkv_bias_rope(ra, stream_);
}

float GpuModel::query_scale() const {
  // The attention kernels scale scores by 1/sqrt(head_dim); gemma3's query_pre_attn_scalar gets
  // the ratio folded into the queries (CpuForward::forward_items computes the same factor).
  const ModelConfig& c = config();
  return c.query_scale > 0 ? (float)std::sqrt((double)c.head_dim / c.query_scale) : 1.0f;
}

void GpuModel::enqueue_lm_head(const bf16* in, int rows, float* logits) {
  const ModelConfig& c = config();
  gemm_->linear(w_->output(), c.n_vocab, c.n_embd, in, c.n_embd, rows, logits, c.n_vocab);
  if (c.final_softcap > 0)  // gemma3's final_logit_softcapping, before any pick or copy
    softcap_logits(logits, (int64_t)rows * c.n_vocab, c.final_softcap, stream_);
}

void GpuModel::enqueue_sample(const float* logits, const SamplerConfig& s, double u, int32_t* out) {
  SampleArgs a;
  a.temperature = s.temperature;
  a.top_k = s.top_k;
  a.top_p = s.top_p;
  a.u = u;
  sample_token(logits, config().n_vocab, a, out, stream_);
}

// Layer l of a batched step: RoPE of every row in one launch (each row at its own position);
// each pre-fill chunk's attention and append as forward() runs them; all decode tokens
// appended in one launch and attended in one (decode_attention_batch).
void GpuModel::enqueue_step_attention(const std::vector<StepItem>& items, const std::vector<int>& first,
                                      const Act& act, const int32_t* row_pos_d, int l) {
  const ModelConfig& c = config();
  const int64_t D = c.head_dim, H = c.n_heads, HKV = c.n_kv_heads;
  const int64_t Q = H * D, KV = HKV * D;
  const cudaStream_t s = stream_;
  const int T = first.empty() ? 0 : first.back() + items.back().n;
  if (timing_) DUO_CUDA_TRY(cudaEventRecord(events_[2 * l], s));
  enqueue_rope_rows(act, l, T, row_pos_d);
  for (size_t i = 0; i < items.size(); ++i) {
    const StepItem& it = items[i];
    if (it.n == 1) continue;
    const GpuKvCache& kv = *it.kv;
    const LayerKv& cache = kv.layer(l);
    const int pos0 = (int)kv.n_past();
    const int64_t r = first[i];
    PrefillArgs pa = prefill_args(kv, l, it.n, pos0);
    pa.q = act.q + r * Q, pa.k = act.k + r * KV, pa.v = act.v + r * KV, pa.out = act.att + r * Q;
    prefill_attention_quant(pa, prefill_quant_, act.pkv, act.pkv_bytes, s);
    kv_quantize(pa.k, pa.v, KV, it.n, pos0, (int)HKV, (int)D, kv.retrieval_heads(l), cache, s);
    kv_append(pa.k, pa.v, KV, it.n, pos0, (int)HKV, (int)D, cache, s);
  }
  const int nd = (int)dec_.size();
  if (nd > 0) {
    kv_append_batch(act.k, act.v, KV, dec_rows_, dec_views_ + (size_t)l * nd, dec_rows_ + nd, nd, (int)HKV, (int)D, s);
    std::vector<DecodeArgs> da(nd);
    for (int j = 0; j < nd; ++j) {
      const StepItem& it = items[dec_[j]];
      const int64_t r = first[dec_[j]];
      // A quantized cache's new token may complete a group of 64 (it was appended to the residual).
      kv_quantize(nullptr, nullptr, 0, 1, (int)it.kv->n_past(), (int)HKV, (int)D, it.kv->retrieval_heads(l),
                  it.kv->layer(l), s);
      da[j] = decode_args(*it.kv, l, act.q + r * Q, act.att + r * Q);
    }
    // The groups run one after another on the stream, so they share the workspace and params.
    for (size_t g = 0; g + 1 < dec_groups_.size(); ++g) {
      DecodeBatch b;
      b.items = da.data() + dec_groups_[g], b.n = dec_groups_[g + 1] - dec_groups_[g];
      b.workspace = dec_ws_, b.workspace_bytes = dec_ws_bytes_;
      b.params = dec_params_, b.params_bytes = dec_params_bytes_;
      decode_attention_batch(b, s);
    }
  }
  if (timing_) DUO_CUDA_TRY(cudaEventRecord(events_[2 * l + 1], s));
}

void GpuModel::enqueue_chunk(const GpuKvCache& kv, const Act& act, const int32_t* tokens_d, int n, int pos0,
                             const int32_t* pos_d, int logits_rows) {
  enqueue_layers(act, tokens_d, n, [&](int l) { enqueue_attention(kv, l, act, 0, n, pos0, pos_d, timing_); });
  if (logits_rows > 0) {
    // LM head over the last rows only (xn holds them normalised by output_norm).
    enqueue_lm_head(act.xn + (int64_t)(n - logits_rows) * config().n_embd, logits_rows, act.logits);
  }
}

}  // namespace duo::cuda
