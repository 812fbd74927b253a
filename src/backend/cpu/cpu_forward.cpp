#include "backend/cpu/cpu_forward.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "backend/cpu/attention.h"
#include "backend/cpu/observed_attention.h"
#include "backend/cpu/ops.h"
#include "core/dequant.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "model/model.h"

namespace duo {

namespace {

// Grow-only scratch buffer.
float* scratch(std::vector<float>& buf, size_t n) {
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

}  // namespace

CpuForward::CpuForward(const Model& model) : model_(model) {}
CpuForward::~CpuForward() = default;

MatmulWeight CpuForward::operand(const WeightView& v, size_t index) const {
  return MatmulWeight{v, index < packed_.size() ? packed_[index].get() : nullptr, act_bits_};
}

CpuForward::LayerMatrices CpuForward::layer(int l) const {
  const LayerWeights& L = model_.weights().layers[l];
  const size_t k = (size_t)l * kLayerMatrices;
  return {operand(L.wq, k), operand(L.wk, k + 1), operand(L.wv, k + 2), operand(L.wo, k + 3),
          operand(L.w_gate, k + 4), operand(L.w_up, k + 5), operand(L.w_down, k + 6)};
}

MatmulWeight CpuForward::output() const {
  return operand(model_.weights().output, model_.weights().layers.size() * kLayerMatrices);
}

void CpuForward::set_act_bits(int bits) {
  DUO_CHECK(bits == 16 || bits == 8, "activation bits must be 16 or 8 (got {})", bits);
  DUO_CHECK(packed_.empty(), "set the activation bits before packing the weights");
  act_bits_ = bits;
}

size_t CpuForward::pack_weights(ThreadPool& pool) {
  if (!packed_.empty()) return 0;
  const int n_layers = (int)model_.weights().layers.size();
  std::vector<MatmulWeight> all;
  for (int l = 0; l < n_layers; ++l) {
    const LayerMatrices M = layer(l);
    all.insert(all.end(), {M.wq, M.wk, M.wv, M.wo, M.w_gate, M.w_up, M.w_down});
  }
  all.push_back(output());
  size_t bytes = 0;
  std::vector<std::shared_ptr<const PackedWeight>> packed;
  for (const MatmulWeight& w : all) {
    packed.push_back(pack_weight(w, pool));
    if (packed.back()) bytes += packed_bytes(*packed.back());
  }
  packed_ = std::move(packed);
  packed_reordered_ = model_.heads_reordered();
  return bytes;
}

std::vector<int> CpuForward::layer_windows() const {
  const ModelConfig& cfg = model_.config();
  // DuoAttention and gemma3's local layers (docs/architecture.md): a local layer attends to the
  // last local_window positions by construction, so every head of it is a fixed-window head
  // (no sink, a ring of local_window rows: bounded memory) whatever the plan says; full,
  // streaming and DuoAttention plans (patterns) apply to the global layers only.
  std::vector<int> windows;
  if (!cfg.layer_local.empty())
    for (int l = 0; l < cfg.n_layers; ++l) windows.push_back(cfg.is_local(l) ? cfg.local_window : 0);
  return windows;
}

std::unique_ptr<KvCache> CpuForward::new_cache(const HeadPlan& plan) const {
  const ModelConfig& cfg = model_.config();
  return std::make_unique<KvCache>(cfg.n_layers, cfg.n_kv_heads, cfg.head_dim, plan, layer_windows());
}

void CpuForward::forward(KvCache& cache, const int32_t* tokens, int64_t n, float* logits, ThreadPool& pool,
                    bool all_logits, int64_t chunk) {
  const ModelConfig& cfg = model_.config();
  DUO_CHECK(n > 0, "forward needs at least one token");
  DUO_CHECK(chunk > 0, "chunk size must be positive");
  for (int64_t i = 0; i < n; ++i)
    DUO_CHECK(tokens[i] >= 0 && tokens[i] < cfg.n_vocab, "token id {} at index {} is outside the vocabulary (0..{})",
              tokens[i], i, cfg.n_vocab - 1);
  for (int64_t b = 0; b < n; b += chunk) {
    const int64_t m = std::min(chunk, n - b);
    const bool last = b + m == n;
    float* lg = nullptr;
    if (logits && all_logits) lg = logits + b * cfg.n_vocab;
    if (logits && !all_logits && last) lg = logits;
    const BatchItem item{&cache, tokens + b, m};
    forward_items(&item, 1, lg, all_logits, pool);
  }
}

void CpuForward::forward_batch(const std::vector<BatchItem>& items, float* logits, ThreadPool& pool) {
  const ModelConfig& cfg = model_.config();
  DUO_CHECK(!items.empty(), "forward_batch needs at least one item");
  for (size_t i = 0; i < items.size(); ++i) {
    const BatchItem& it = items[i];
    DUO_CHECK(it.cache != nullptr && it.tokens != nullptr && it.n > 0, "batch item {} has no cache or no tokens", i);
    DUO_CHECK(it.cache->n_kv_heads() == cfg.n_kv_heads && (int)it.cache->plan().kinds.size() == cfg.n_layers,
              "batch item {}: the cache is not shaped for this model", i);
    for (size_t j = 0; j < i; ++j)
      DUO_CHECK(items[j].cache != it.cache, "batch items {} and {} share one cache (one item per sequence)", j, i);
    for (int64_t t = 0; t < it.n; ++t)
      DUO_CHECK(it.tokens[t] >= 0 && it.tokens[t] < cfg.n_vocab,
                "batch item {}: token id {} at index {} is outside the vocabulary (0..{})", i, it.tokens[t], t,
                cfg.n_vocab - 1);
  }
  forward_items(items.data(), items.size(), logits, false, pool);
}

void CpuForward::forward_items(const BatchItem* items, size_t count, float* logits, bool all_logits, ThreadPool& pool) {
  const ModelConfig& c = model_.config();
  const ModelWeights& weights = model_.weights();
  DUO_CHECK(packed_.empty() || packed_reordered_ == model_.heads_reordered(),
            "the model's heads were reordered after the weights were packed (reorder them before packing)");
  const int64_t E = c.n_embd, D = c.head_dim, H = c.n_heads, HKV = c.n_kv_heads;
  const int64_t Q = H * D, KV = HKV * D, F = c.n_ff;

  // The batch's tokens side by side: item i owns rows [first[i], first[i] + items[i].n), and
  // row t sits at position pos[t] of its sequence.
  // (Grow-only buffers of the calling thread; the worker threads see them through the
  // pointers below, never by name, since a thread_local name means each thread's own copy.)
  static thread_local std::vector<int64_t> bfirst, bpos;
  static thread_local std::vector<int32_t> bids;
  bfirst.resize(count);
  bpos.clear();
  bids.clear();
  for (size_t i = 0; i < count; ++i) {
    bfirst[i] = (int64_t)bpos.size();
    const int64_t p0 = items[i].cache->n_past();
    for (int64_t t = 0; t < items[i].n; ++t) bpos.push_back(p0 + t), bids.push_back(items[i].tokens[t]);
  }
  const int64_t n = (int64_t)bpos.size();
  for (int64_t t = 0; t < n; ++t)
    DUO_CHECK(c.sliding_window == 0 || bpos[t] < c.sliding_window,
              "position {} is beyond the model's sliding window of {} tokens (sliding-window attention is not "
              "implemented; the context is limited to the window)",
              bpos[t], c.sliding_window);
  const int64_t* first = bfirst.data();
  const int64_t* pos = bpos.data();
  const int32_t* ids = bids.data();
  // Row ranges the matmuls run over: consecutive one-token items together (decode steps of
  // several sequences: the weights are read once for all of them), every longer item on its
  // own (a pre-fill chunk). Each row then takes the matmul path it takes when its sequence
  // runs alone, so batching changes nothing for pre-fill, nor for decode while at most 4
  // sequences decode together (the matmul's few-token path; more take its many-token kernel).
  // With quantized weights the many-token kernel computes each row from its own token alone,
  // so neighbouring ranges that take it anyway (more than kMatmulFewTokens rows each: a batch
  // of decoders, pre-fill chunks) merge into one call with the same numbers, and the weights
  // are read once per step for all of them.
  const MatmulWeight out_w = output();
  bool mergeable = matmul_tokens_independent(out_w);
  for (int l = 0; l < c.n_layers; ++l) {
    const LayerMatrices M = layer(l);
    for (const MatmulWeight* w : {&M.wq, &M.wk, &M.wv, &M.wo, &M.w_gate, &M.w_up, &M.w_down})
      mergeable = mergeable && matmul_tokens_independent(*w);
  }
  auto merge_wide = [&](std::vector<std::pair<int64_t, int64_t>>& gs) {
    if (!mergeable) return;
    std::vector<std::pair<int64_t, int64_t>> merged;
    for (const auto& g : gs) {
      if (!merged.empty() && merged.back().second > kMatmulFewTokens && g.second > kMatmulFewTokens &&
          merged.back().first + merged.back().second == g.first)
        merged.back().second += g.second;
      else
        merged.push_back(g);
    }
    gs.swap(merged);
  };
  std::vector<std::pair<int64_t, int64_t>> groups;
  for (size_t i = 0; i < count; ++i) {
    if (items[i].n == 1 && i > 0 && items[i - 1].n == 1)
      ++groups.back().second;
    else
      groups.push_back({first[i], items[i].n});
  }
  merge_wide(groups);
  auto mm = [&](const MatmulWeight& w, const float* in, float* out) {
    for (const auto& [r0, m] : groups) matmul(w, in + r0 * w.cols, m, out + r0 * w.rows, pool);
  };

  // Activations of this batch, reused across calls.
  static thread_local std::vector<float> bx, bxn, bq, bk, bv, batt, bo, bg, bu;
  float* x = scratch(bx, n * E);
  float* xn = scratch(bxn, n * E);
  float* q = scratch(bq, n * Q);
  float* k = scratch(bk, n * KV);
  float* v = scratch(bv, n * KV);
  float* att = scratch(batt, n * Q);
  float* o = scratch(bo, n * std::max(E, F));
  float* g = scratch(bg, n * F);
  float* u = scratch(bu, n * F);

  // Embedding lookup: dequantize one row per token.
  const WeightView& te = weights.tok_embd;
  pool.parallel_for(n, [&](int64_t b, int64_t e, int) {
    for (int64_t t = b; t < e; ++t) {
      dequantize_row(te.type, te.data + (size_t)ids[t] * te.row_stride, x + t * E, E);
      if (c.embd_scale != 1.0f)
        for (int64_t i = 0; i < E; ++i) x[t * E + i] *= c.embd_scale;
    }
  });

  std::vector<std::vector<std::vector<KvSegment>>> segs(count);  // [item][kv head]
  std::vector<std::vector<HeadKind>> kinds(count);
  std::vector<AttentionArgs> calls(count);
  // The attention kernels scale scores by 1/sqrt(head_dim); a model with another scale
  // (gemma3's query_pre_attn_scalar) gets the ratio folded into its queries.
  const float q_mul = c.query_scale > 0 ? (float)std::sqrt((double)D / c.query_scale) : 1.0f;
  for (int l = 0; l < c.n_layers; ++l) {
    const LayerWeights& L = weights.layers[l];
    const LayerMatrices M = layer(l);
    const bool local = c.is_local(l);
    const float* inv_freq = local ? model_.rope_inv_freq_local().data() : model_.rope_inv_freq().data();
    // A local layer's heads are the cache's fixed-window heads (new_cache): no sink, the last
    // local_window positions, the mask transformers uses (key j visible from i when j > i - w).
    const StreamingWindow local_window{0, c.local_window};
    // --- attention block ---
    pool.parallel_for(n, [&](int64_t b, int64_t e, int) {
      for (int64_t t = b; t < e; ++t) rmsnorm(x + t * E, L.attn_norm.data(), xn + t * E, (int)E, c.norm_eps);
    });
    // Q/K/V share one activation quantization and one parallel region (matmul_multi).
    for (const auto& [r0, m] : groups)
      matmul_multi({{M.wq, q + r0 * Q}, {M.wk, k + r0 * KV}, {M.wv, v + r0 * KV}}, xn + r0 * E, m, pool);
    pool.parallel_for(n, [&](int64_t b, int64_t e, int) {
      for (int64_t t = b; t < e; ++t) {
        if (!L.bq.empty()) {
          add_inplace(q + t * Q, L.bq.data(), (int)Q);
          add_inplace(k + t * KV, L.bk.data(), (int)KV);
          add_inplace(v + t * KV, L.bv.data(), (int)KV);
        }
        if (!L.q_norm.empty()) {  // qwen3: each head normalized on its own, before RoPE
          for (int64_t h = 0; h < H; ++h) rmsnorm(q + t * Q + h * D, L.q_norm.data(), q + t * Q + h * D, (int)D, c.norm_eps);
          for (int64_t h = 0; h < HKV; ++h)
            rmsnorm(k + t * KV + h * D, L.k_norm.data(), k + t * KV + h * D, (int)D, c.norm_eps);
        }
        rope_heads(q + t * Q, (int)H, (int)D, (int)pos[t], inv_freq, c.rope_style);
        rope_heads(k + t * KV, (int)HKV, (int)D, (int)pos[t], inv_freq, c.rope_style);
        if (q_mul != 1.0f)
          for (int64_t i = 0; i < Q; ++i) q[t * Q + i] *= q_mul;
      }
    });
    // Each sequence on its own: each of its KV heads attends to what the head's cache holds
    // plus the sequence's rows of this batch, under its own mask. All sequences' attention
    // runs in one go (one parallel region for the decoders), then the caches take the rows.
    for (size_t i = 0; i < count; ++i) {
      KvCache& cache = *items[i].cache;
      const int64_t r0 = first[i], m = items[i].n, pos0 = cache.n_past();
      DUO_CHECK(cache.layer_window(l) == (local ? c.local_window : 0),
                "layer {}: the KV cache was not made by this model's new_cache (sliding window {}, the layer's {})", l,
                cache.layer_window(l), local ? c.local_window : 0);
      segs[i].resize(HKV);
      kinds[i].resize(HKV);
      for (int64_t h = 0; h < HKV; ++h) {
        HeadCache& hc = cache.head(l, (int)h);
        segs[i][h].clear();
        hc.segments(pos0, segs[i][h]);
        segs[i][h].push_back({k + r0 * KV + h * D, v + r0 * KV + h * D, pos0, m, KV});
        kinds[i][h] = hc.kind();
      }
      AttentionArgs& args = calls[i];
      args.q = q + r0 * Q;
      args.out = att + r0 * Q;
      args.n = m;
      args.pos0 = pos0;
      args.n_heads = (int)H;
      args.n_kv_heads = (int)HKV;
      args.head_dim = (int)D;
      args.segments = &segs[i];
      args.kinds = &kinds[i];
      args.window = local ? local_window : cache.plan().window;
    }
    attention_many(calls, pool);
    if (observer_)
      for (size_t i = 0; i < count; ++i) observer_->on_attention(CpuObservedAttention(l, calls[i]));
    // Each sequence's cache takes its rows; the caches are distinct, so a step of many
    // sequences appends in parallel (one at a time, this serial work kept the other threads
    // waiting).
    auto append = [&](int64_t i0, int64_t i1, int) {
      for (int64_t i = i0; i < i1; ++i) {
        KvCache& cache = *items[i].cache;
        const int64_t r0 = first[i];
        for (int64_t h = 0; h < HKV; ++h)
          cache.head(l, (int)h).append(k + r0 * KV + h * D, v + r0 * KV + h * D, items[i].n, KV, cache.n_past());
      }
    };
    if (count >= 8)
      pool.parallel_for((int64_t)count, append);
    else
      append(0, (int64_t)count, 0);
    if (model_.heads_reordered()) {
      // Back to the stored head order for Wo: KV slot j holds original KV head order[j].
      const std::vector<int>& order = model_.kv_order()[l];
      const int64_t G = c.group_size();
      float* orig = q;  // q is free again: reuse it as the destination
      pool.parallel_for(n, [&](int64_t b, int64_t e, int) {
        for (int64_t t = b; t < e; ++t)
          for (int64_t j = 0; j < HKV; ++j)
            std::memcpy(orig + t * Q + order[j] * G * D, att + t * Q + j * G * D, sizeof(float) * G * D);
      });
      std::swap(att, q);
    }
    mm(M.wo, att, o);
    // --- feed-forward block ---
    pool.parallel_for(n, [&](int64_t b, int64_t e, int) {
      for (int64_t t = b; t < e; ++t) {
        if (!L.post_attn_norm.empty()) rmsnorm(o + t * E, L.post_attn_norm.data(), o + t * E, (int)E, c.norm_eps);
        add_inplace(x + t * E, o + t * E, (int)E);
        rmsnorm(x + t * E, L.ffn_norm.data(), xn + t * E, (int)E, c.norm_eps);
      }
    });
    for (const auto& [r0, m] : groups)
      matmul_multi({{M.w_gate, g + r0 * F}, {M.w_up, u + r0 * F}}, xn + r0 * E, m, pool);
    pool.parallel_for(n, [&](int64_t b, int64_t e, int) {
      for (int64_t t = b; t < e; ++t) {
        if (c.gelu_mlp)
          geglu(g + t * F, u + t * F, g + t * F, (int)F);
        else
          swiglu(g + t * F, u + t * F, g + t * F, (int)F);
      }
    });
    mm(M.w_down, g, o);
    pool.parallel_for(n, [&](int64_t b, int64_t e, int) {
      for (int64_t t = b; t < e; ++t) {
        if (!L.post_ffn_norm.empty()) rmsnorm(o + t * E, L.post_ffn_norm.data(), o + t * E, (int)E, c.norm_eps);
        add_inplace(x + t * E, o + t * E, (int)E);
      }
    });
  }
  for (size_t i = 0; i < count; ++i) items[i].cache->advance(items[i].n);

  if (!logits) return;
  // LM head: only the rows whose logits are wanted (every row, or each item's last), gathered
  // into consecutive rows of xn, in groups as above.
  int64_t rows = 0;
  groups.clear();
  for (size_t i = 0; i < count; ++i) {
    const int64_t end = first[i] + items[i].n, begin = all_logits ? first[i] : end - 1;
    if (items[i].n == 1 && i > 0 && items[i - 1].n == 1)
      ++groups.back().second;
    else
      groups.push_back({rows, end - begin});
    for (int64_t t = begin; t < end; ++t, ++rows)
      rmsnorm(x + t * E, weights.output_norm.data(), xn + rows * E, (int)E, c.norm_eps);
  }
  merge_wide(groups);
  for (const auto& [r0, m] : groups) matmul(out_w, xn + r0 * E, m, logits + r0 * c.n_vocab, pool);
  if (c.final_softcap > 0) {  // gemma3's final_logit_softcapping: cap * tanh(logits / cap)
    const float cap = c.final_softcap;
    pool.parallel_for(rows, [&](int64_t b, int64_t e, int) {
      for (float* p = logits + b * c.n_vocab; p < logits + e * c.n_vocab; ++p) *p = cap * std::tanh(*p / cap);
    });
  }
}

}  // namespace duo
