#include "model/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>

#include "core/dequant.h"
#include "core/error.h"
#include "core/nonfinite_scan.h"
#include "io/gguf.h"
#include "io/hf_checkpoint.h"

#include <fmt/ranges.h>

namespace duo {

namespace {

// A 2-D weight tensor as a weight view, checked against the expected shape.
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

}  // namespace

Model::~Model() = default;

const GgufFile& Model::gguf() const {
  DUO_CHECK(file_ != nullptr, "this model has no GGUF file ({})",
            hf_ ? "it was loaded from the Hugging Face directory " + hf_->dir() : std::string("synthetic weights"));
  return *file_;
}

namespace {

// The i-th RoPE inverse frequency as PyTorch computes it (transformers, Meta's reference code):
// 1 / base ** (2i / D) in float32, the exponent, the power and the reciprocal each rounded to
// float (the power here in double, then rounded: torch's own float pow is within 2 ulps of that,
// equal in 3318 of 3360 cases over ten llama-family bases x seven head dims). The correctly
// rounded base^(-2i/D) differs from torch's in 1350 of those, by up to 10 ulps, and an angle's
// error is the position times that: 10 ulps of 0.46 are 0.3 rad at position 1M, the context of
// the Gradient-1048k models (tests/io/hf_long_rope_test.cpp).
float torch_inv_freq(float base, int i, int D) {
  const float e = (float)(2 * i) / (float)D;
  const float p = (float)std::pow((double)base, (double)e);
  return 1.0f / p;
}

}  // namespace

void Model::init_rope(const std::vector<float>* factors) {
  const int D = cfg_.head_dim;
  inv_freq_.resize(D / 2);
  for (int i = 0; i < D / 2; ++i) {
    inv_freq_[i] = torch_inv_freq(cfg_.rope_theta, i, D);
    if (factors) inv_freq_[i] /= (*factors)[i];
    inv_freq_[i] /= cfg_.rope_linear_factor;  // linear scaling: positions divided by the factor
  }
  inv_freq_local_.clear();
  if (!cfg_.layer_local.empty())
    for (int i = 0; i < D / 2; ++i) inv_freq_local_.push_back(torch_inv_freq(cfg_.rope_local_theta, i, D));
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

}  // namespace duo
