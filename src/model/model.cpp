#include "model/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>

#include "backend/cpu/attention.h"
#include "backend/cpu/ops.h"
#include "core/dequant.h"
#include "core/error.h"
#include "core/nonfinite_scan.h"
#include "core/thread_pool.h"
#include "io/gguf.h"
#include "io/hf_checkpoint.h"

#include <fmt/ranges.h>

namespace duo {

namespace {

// A 2-D weight tensor as a matmul operand, checked against the expected shape.
WeightView weight(const GgufFile& f, const std::string& name, int64_t cols, int64_t rows, size_t& total) {
  const GgufTensorInfo& t = f.tensor(name);
  DUO_CHECK(t.dims.size() == 2 && t.dims[0] == cols && t.dims[1] == rows,
            "{}: tensor '{}' has shape [{}], expected [{}, {}]", f.path(), name,
            fmt::join(t.dims, ", "), cols, rows);
  DUO_CHECK(type_traits(t.type).can_dequantize, "{}: tensor '{}' has type {} which is not supported", f.path(), name,
            type_name(t.type));
  const int64_t bad = first_nonfinite(t.type, f.tensor_data(t), t.n_elements());
  DUO_CHECK(bad < 0, "{}: tensor '{}' holds a non-finite value (NaN or infinity) at element {}{}", f.path(), name, bad,
            type_traits(t.type).block_elems > 1 ? " (the scale of the block starting there)" : "");
  total += t.nbytes;
  WeightView w;
  w.type = t.type;
  w.data = f.tensor_data(t);
  w.rows = rows;
  w.cols = cols;
  w.row_stride = row_bytes(t.type, cols);
  return w;
}

// A 1-D tensor (norm weight, bias) decoded to float.
std::vector<float> vector_f32(const GgufFile& f, const std::string& name, int64_t n, size_t& total) {
  const GgufTensorInfo& t = f.tensor(name);
  DUO_CHECK(t.n_elements() == n, "{}: tensor '{}' has {} elements, expected {}", f.path(), name, t.n_elements(), n);
  total += t.nbytes;
  std::vector<float> v((size_t)n);
  dequantize_row(t.type, f.tensor_data(t), v.data(), n);
  // Decoded already, so checking is free: a NaN or infinite norm weight or bias would make
  // every output NaN without an error.
  for (int64_t i = 0; i < n; ++i)
    DUO_CHECK(std::isfinite(v[(size_t)i]), "{}: tensor '{}' holds a non-finite value ({}) at index {}", f.path(), name,
              v[(size_t)i], i);
  return v;
}

// Grow-only scratch buffer.
float* scratch(std::vector<float>& buf, size_t n) {
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

}  // namespace

Model::~Model() = default;

const GgufFile& Model::gguf() const {
  DUO_CHECK(file_ != nullptr, "this model has no GGUF file ({})",
            hf_ ? "it was loaded from the Hugging Face directory " + hf_->dir() : std::string("synthetic weights"));
  return *file_;
}

void Model::init_rope(const std::vector<float>* factors) {
  const int D = cfg_.head_dim;
  inv_freq_.resize(D / 2);
  for (int i = 0; i < D / 2; ++i) {
    inv_freq_[i] = (float)std::pow((double)cfg_.rope_theta, -2.0 * i / (double)D);
    if (factors) inv_freq_[i] /= (*factors)[i];
    inv_freq_[i] /= cfg_.rope_linear_factor;  // linear scaling: positions divided by the factor
  }
  inv_freq_local_.clear();
  if (!cfg_.layer_local.empty())
    for (int i = 0; i < D / 2; ++i)
      inv_freq_local_.push_back((float)std::pow((double)cfg_.rope_local_theta, -2.0 * i / (double)D));
}

std::unique_ptr<Model> Model::synthetic(const ModelConfig& cfg, uint64_t seed) {
  DUO_CHECK(cfg.n_layers > 0 && cfg.n_heads > 0 && cfg.n_kv_heads > 0 && cfg.n_heads % cfg.n_kv_heads == 0 &&
                cfg.head_dim > 0 && cfg.head_dim % 2 == 0 && cfg.n_embd > 0 && cfg.n_ff > 0 && cfg.n_vocab > 0,
            "synthetic model: inconsistent shape");
  std::unique_ptr<Model> m(new Model());
  m->cfg_ = cfg;
  m->cfg_.n_rot = cfg.head_dim;
  std::mt19937_64 rng(seed);
  // Weights ~ N(0, 1/fan_in) keep activations of a deep random stack at unit scale.
  auto matrix = [&](int64_t cols, int64_t rows) {
    std::normal_distribution<float> nd(0.0f, 1.0f / std::sqrt((float)cols));
    auto& buf = m->owned_.emplace_back((size_t)(cols * rows));
    for (auto& x : buf) x = nd(rng);
    WeightView w;
    w.type = GgmlType::F32;
    w.data = reinterpret_cast<const uint8_t*>(buf.data());
    w.rows = rows;
    w.cols = cols;
    w.row_stride = sizeof(float) * cols;
    m->w_.bytes += buf.size() * sizeof(float);
    return w;
  };
  auto vec = [&](int64_t n, float mean, float sd) {
    std::normal_distribution<float> nd(mean, sd);
    std::vector<float> v((size_t)n);
    for (auto& x : v) x = nd(rng);
    return v;
  };
  const ModelConfig& c = m->cfg_;
  const int64_t E = c.n_embd, Q = (int64_t)c.n_heads * c.head_dim, KV = (int64_t)c.n_kv_heads * c.head_dim;
  ModelWeights& w = m->w_;
  w.tok_embd = matrix(E, c.n_vocab);
  w.output = c.tied_embeddings ? w.tok_embd : matrix(E, c.n_vocab);
  w.output_norm = vec(E, 1.0f, 0.1f);
  w.layers.resize(c.n_layers);
  for (auto& L : w.layers) {
    L.attn_norm = vec(E, 1.0f, 0.1f);
    L.ffn_norm = vec(E, 1.0f, 0.1f);
    L.wq = matrix(E, Q);
    L.wk = matrix(E, KV);
    L.wv = matrix(E, KV);
    L.wo = matrix(Q, E);
    L.w_gate = matrix(E, c.n_ff);
    L.w_up = matrix(E, c.n_ff);
    L.w_down = matrix(c.n_ff, E);
    if (c.qkv_bias) {
      L.bq = vec(Q, 0.0f, 0.1f);
      L.bk = vec(KV, 0.0f, 0.1f);
      L.bv = vec(KV, 0.0f, 0.1f);
    }
  }
  m->init_rope(nullptr);
  return m;
}

std::unique_ptr<Model> Model::load(const std::string& path) {
  if (is_directory(path)) return load_hf(path);
  std::unique_ptr<Model> m(new Model());
  m->file_ = GgufFile::open(path);
  const GgufFile& f = *m->file_;
  m->cfg_ = ModelConfig::from_gguf(f);
  const ModelConfig& c = m->cfg_;
  ModelWeights& w = m->w_;
  size_t& total = w.bytes;
  const int64_t E = c.n_embd, D = c.head_dim;

  w.tok_embd = weight(f, "token_embd.weight", E, c.n_vocab, total);
  w.output = c.tied_embeddings ? w.tok_embd : weight(f, "output.weight", E, c.n_vocab, total);
  w.output_norm = vector_f32(f, "output_norm.weight", E, total);
  assemble_layers(
      w, c,
      {"blk.", "attn_norm.weight", "ffn_norm.weight", "attn_q.weight", "attn_k.weight", "attn_v.weight",
       "attn_output.weight", "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight", "attn_q.bias", "attn_k.bias",
       "attn_v.bias", "attn_q_norm.weight", "attn_k_norm.weight", "post_attention_norm.weight", "post_ffw_norm.weight"},
      [&](const std::string& name, int64_t cols, int64_t rows) { return weight(f, name, cols, rows, total); },
      [&](const std::string& name, int64_t n) { return vector_f32(f, name, n, total); });

  // Llama-3.1-style per-frequency factors, when the file carries them.
  if (const GgufTensorInfo* rf = f.find_tensor("rope_freqs.weight")) {
    std::vector<float> factors = vector_f32(f, rf->name, D / 2, total);
    for (float x : factors)  // each frequency is divided by its factor
      DUO_CHECK(x > 0, "{}: rope_freqs.weight holds a factor {} (must be positive)", f.path(), x);
    m->init_rope(&factors);
  } else {
    m->init_rope(nullptr);
  }
  return m;
}

HeadPlan Model::reorder_heads(const HeadPlan& plan) {
  DUO_CHECK(kv_order_.empty(), "the heads of this model were already reordered");
  DUO_CHECK(packed_.empty(), "reorder the heads before packing the weights");
  const ModelConfig& c = cfg_;
  DUO_CHECK((int)plan.kinds.size() == c.n_layers, "head plan has {} layers, the model {}", plan.kinds.size(),
            c.n_layers);
  const int G = c.group_size(), D = c.head_dim;
  HeadPlan out = plan;
  kv_order_.assign(c.n_layers, {});
  // Rows of `w` in groups of `rows_per_head`, rearranged by `order`, into an owned copy.
  auto permute_rows = [&](WeightView& w, const std::vector<int>& order, int64_t rows_per_head) {
    auto& buf = reordered_.emplace_back(w.row_stride * w.rows);
    const size_t block = w.row_stride * rows_per_head;
    for (size_t j = 0; j < order.size(); ++j) std::memcpy(buf.data() + j * block, w.data + order[j] * block, block);
    w.data = buf.data();
  };
  auto permute_vec = [&](std::vector<float>& v, const std::vector<int>& order, int64_t per_head) {
    if (v.empty()) return;
    std::vector<float> r(v.size());
    for (size_t j = 0; j < order.size(); ++j)
      std::copy_n(v.begin() + order[j] * per_head, per_head, r.begin() + j * per_head);
    v.swap(r);
  };
  for (int l = 0; l < c.n_layers; ++l) {
    DUO_CHECK((int)plan.kinds[l].size() == c.n_kv_heads, "head plan layer {} has {} KV heads, the model {}", l,
              plan.kinds[l].size(), c.n_kv_heads);
    std::vector<int>& order = kv_order_[l];
    for (HeadKind want : {HeadKind::Retrieval, HeadKind::Streaming})
      for (int h = 0; h < c.n_kv_heads; ++h)
        if (plan.kinds[l][h] == want) order.push_back(h);
    for (int j = 0; j < c.n_kv_heads; ++j) out.kinds[l][j] = plan.kinds[l][order[j]];
    LayerWeights& L = w_.layers[l];
    permute_rows(L.wq, order, (int64_t)G * D);
    permute_rows(L.wk, order, D);
    permute_rows(L.wv, order, D);
    permute_vec(L.bq, order, (int64_t)G * D);
    permute_vec(L.bk, order, D);
    permute_vec(L.bv, order, D);
  }
  return out;
}

void Model::set_act_bits(int bits) {
  DUO_CHECK(bits == 16 || bits == 8, "activation bits must be 16 or 8 (got {})", bits);
  DUO_CHECK(packed_.empty(), "set the activation bits before packing the weights");
  for (LayerWeights& L : w_.layers)
    for (WeightView* w : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down}) w->act_bits = bits;
  w_.output.act_bits = bits;
}

size_t Model::pack_weights(ThreadPool& pool) {
  if (!packed_.empty()) return 0;
  size_t bytes = 0;
  auto pack = [&](WeightView& w) {
    std::shared_ptr<const PackedWeight> p = pack_weight(w, pool);
    if (!p) return;
    w.packed = p.get();
    bytes += packed_bytes(*p);
    packed_.push_back(std::move(p));
  };
  for (LayerWeights& L : w_.layers)
    for (WeightView* w : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down}) pack(*w);
  pack(w_.output);
  return bytes;
}

HeadPlan Model::to_slot_order(const HeadPlan& plan) const {
  DUO_CHECK((int)plan.kinds.size() == cfg_.n_layers, "head plan has {} layers, the model {}", plan.kinds.size(),
            cfg_.n_layers);
  for (int l = 0; l < cfg_.n_layers; ++l)
    DUO_CHECK((int)plan.kinds[l].size() == cfg_.n_kv_heads, "head plan layer {} has {} KV heads, the model {}", l,
              plan.kinds[l].size(), cfg_.n_kv_heads);
  if (kv_order_.empty()) return plan;
  HeadPlan out = plan;
  for (int l = 0; l < cfg_.n_layers; ++l)
    for (int j = 0; j < cfg_.n_kv_heads; ++j) out.kinds[l][j] = plan.kinds[l][kv_order_[l][j]];
  return out;
}

std::unique_ptr<KvCache> Model::new_cache(const HeadPlan& plan) const {
  // DuoAttention and gemma3's local layers (docs/architecture.md): a local layer attends to the
  // last local_window positions by construction, so every head of it is a fixed-window head
  // (no sink, a ring of local_window rows: bounded memory) whatever the plan says; full,
  // streaming and DuoAttention plans (patterns) apply to the global layers only.
  std::vector<int> windows;
  if (!cfg_.layer_local.empty())
    for (int l = 0; l < cfg_.n_layers; ++l) windows.push_back(cfg_.is_local(l) ? cfg_.local_window : 0);
  return std::make_unique<KvCache>(cfg_.n_layers, cfg_.n_kv_heads, cfg_.head_dim, plan, std::move(windows));
}

void Model::forward(KvCache& cache, const int32_t* tokens, int64_t n, float* logits, ThreadPool& pool,
                    bool all_logits, int64_t chunk) {
  DUO_CHECK(n > 0, "forward needs at least one token");
  DUO_CHECK(chunk > 0, "chunk size must be positive");
  for (int64_t i = 0; i < n; ++i)
    DUO_CHECK(tokens[i] >= 0 && tokens[i] < cfg_.n_vocab, "token id {} at index {} is outside the vocabulary (0..{})",
              tokens[i], i, cfg_.n_vocab - 1);
  for (int64_t b = 0; b < n; b += chunk) {
    const int64_t m = std::min(chunk, n - b);
    const bool last = b + m == n;
    float* lg = nullptr;
    if (logits && all_logits) lg = logits + b * cfg_.n_vocab;
    if (logits && !all_logits && last) lg = logits;
    const BatchItem item{&cache, tokens + b, m};
    forward_items(&item, 1, lg, all_logits, pool);
  }
}

void Model::forward_batch(const std::vector<BatchItem>& items, float* logits, ThreadPool& pool) {
  DUO_CHECK(!items.empty(), "forward_batch needs at least one item");
  for (size_t i = 0; i < items.size(); ++i) {
    const BatchItem& it = items[i];
    DUO_CHECK(it.cache != nullptr && it.tokens != nullptr && it.n > 0, "batch item {} has no cache or no tokens", i);
    DUO_CHECK(it.cache->n_kv_heads() == cfg_.n_kv_heads && (int)it.cache->plan().kinds.size() == cfg_.n_layers,
              "batch item {}: the cache is not shaped for this model", i);
    for (size_t j = 0; j < i; ++j)
      DUO_CHECK(items[j].cache != it.cache, "batch items {} and {} share one cache (one item per sequence)", j, i);
    for (int64_t t = 0; t < it.n; ++t)
      DUO_CHECK(it.tokens[t] >= 0 && it.tokens[t] < cfg_.n_vocab,
                "batch item {}: token id {} at index {} is outside the vocabulary (0..{})", i, it.tokens[t], t,
                cfg_.n_vocab - 1);
  }
  forward_items(items.data(), items.size(), logits, false, pool);
}

void Model::forward_items(const BatchItem* items, size_t count, float* logits, bool all_logits, ThreadPool& pool) {
  const ModelConfig& c = cfg_;
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
  bool mergeable = matmul_tokens_independent(w_.output);
  for (const LayerWeights& L : w_.layers)
    for (const WeightView* w : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down})
      mergeable = mergeable && matmul_tokens_independent(*w);
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
  auto mm = [&](const WeightView& w, const float* in, float* out) {
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
  const WeightView& te = w_.tok_embd;
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
    const LayerWeights& L = w_.layers[l];
    const bool local = c.is_local(l);
    const float* inv_freq = local ? inv_freq_local_.data() : inv_freq_.data();
    // A local layer's heads are the cache's fixed-window heads (new_cache): no sink, the last
    // local_window positions, the mask transformers uses (key j visible from i when j > i - w).
    const StreamingWindow local_window{0, c.local_window};
    // --- attention block ---
    pool.parallel_for(n, [&](int64_t b, int64_t e, int) {
      for (int64_t t = b; t < e; ++t) rmsnorm(x + t * E, L.attn_norm.data(), xn + t * E, (int)E, c.norm_eps);
    });
    // Q/K/V share one activation quantization and one parallel region (matmul_multi).
    for (const auto& [r0, m] : groups)
      matmul_multi({{L.wq, q + r0 * Q}, {L.wk, k + r0 * KV}, {L.wv, v + r0 * KV}}, xn + r0 * E, m, pool);
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
      for (size_t i = 0; i < count; ++i) observer_->on_attention(l, calls[i]);
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
    if (!kv_order_.empty()) {
      // Back to the stored head order for Wo: KV slot j holds original KV head order[j].
      const std::vector<int>& order = kv_order_[l];
      const int64_t G = c.group_size();
      float* orig = q;  // q is free again: reuse it as the destination
      pool.parallel_for(n, [&](int64_t b, int64_t e, int) {
        for (int64_t t = b; t < e; ++t)
          for (int64_t j = 0; j < HKV; ++j)
            std::memcpy(orig + t * Q + order[j] * G * D, att + t * Q + j * G * D, sizeof(float) * G * D);
      });
      std::swap(att, q);
    }
    mm(L.wo, att, o);
    // --- feed-forward block ---
    pool.parallel_for(n, [&](int64_t b, int64_t e, int) {
      for (int64_t t = b; t < e; ++t) {
        if (!L.post_attn_norm.empty()) rmsnorm(o + t * E, L.post_attn_norm.data(), o + t * E, (int)E, c.norm_eps);
        add_inplace(x + t * E, o + t * E, (int)E);
        rmsnorm(x + t * E, L.ffn_norm.data(), xn + t * E, (int)E, c.norm_eps);
      }
    });
    for (const auto& [r0, m] : groups)
      matmul_multi({{L.w_gate, g + r0 * F}, {L.w_up, u + r0 * F}}, xn + r0 * E, m, pool);
    pool.parallel_for(n, [&](int64_t b, int64_t e, int) {
      for (int64_t t = b; t < e; ++t) {
        if (c.gelu_mlp)
          geglu(g + t * F, u + t * F, g + t * F, (int)F);
        else
          swiglu(g + t * F, u + t * F, g + t * F, (int)F);
      }
    });
    mm(L.w_down, g, o);
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
      rmsnorm(x + t * E, w_.output_norm.data(), xn + rows * E, (int)E, c.norm_eps);
  }
  merge_wide(groups);
  for (const auto& [r0, m] : groups) matmul(w_.output, xn + r0 * E, m, logits + r0 * c.n_vocab, pool);
  if (c.final_softcap > 0) {  // gemma3's final_logit_softcapping: cap * tanh(logits / cap)
    const float cap = c.final_softcap;
    pool.parallel_for(rows, [&](int64_t b, int64_t e, int) {
      for (float* p = logits + b * c.n_vocab; p < logits + e * c.n_vocab; ++p) *p = cap * std::tanh(*p / cap);
    });
  }
}

}  // namespace duo
