#include "backend/cuda/gpu_weights.h"

#include <cmath>
#include <vector>

#include "backend/cpu/matmul.h"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels.h"
#include "backend/cuda/synthetic.h"
#include "core/dequant.h"
#include "core/error.h"
#include "core/fp16.h"
#include "model/model.h"

namespace duo::cuda {

namespace {

// Where each tensor lives in the one weight allocation (byte offsets, 256-aligned).
struct LayerSlots {
  size_t attn_norm, ffn_norm, wqkv, bqkv, wo, wgu, wdown;
};
struct Layout {
  size_t tok_embd, output, output_norm, inv_freq;
  std::vector<LayerSlots> layers;
  size_t total = 0;
};

Layout plan_layout(const ModelConfig& c) {
  Layout L;
  auto take = [&](size_t bytes) {
    const size_t at = L.total;
    L.total += (bytes + 255) / 256 * 256;
    return at;
  };
  const size_t E = c.n_embd, D = c.head_dim, QKV = (size_t)(c.n_heads + 2 * c.n_kv_heads) * D,
               Q = (size_t)c.n_heads * D, F = c.n_ff, V = c.n_vocab;
  L.tok_embd = take(2 * V * E);
  L.output = c.tied_embeddings ? L.tok_embd : take(2 * V * E);
  L.output_norm = take(4 * E);
  L.inv_freq = take(4 * (D / 2));
  for (int l = 0; l < c.n_layers; ++l) {
    LayerSlots s;
    s.attn_norm = take(4 * E);
    s.ffn_norm = take(4 * E);
    s.wqkv = take(2 * QKV * E);
    s.bqkv = c.qkv_bias ? take(4 * QKV) : 0;
    s.wo = take(2 * E * Q);
    s.wgu = take(2 * 2 * F * E);
    s.wdown = take(2 * E * F);
    L.layers.push_back(s);
  }
  return L;
}

// Copies rows of a (quantized) weight matrix into bf16 device rows, a few MB at a time.
// col_src: when given, destination column c takes source column col_src[c].
void upload_matrix(const WeightView& w, bf16* dst, const std::vector<int>* col_src = nullptr) {
  const int64_t cols = w.cols;
  const int64_t rows_per = std::max<int64_t>(1, (int64_t)(4 << 20) / cols);
  std::vector<float> f((size_t)(rows_per * cols)), g;
  std::vector<uint16_t> b((size_t)(rows_per * cols));
  if (col_src) g.resize(f.size());
  for (int64_t r0 = 0; r0 < w.rows; r0 += rows_per) {
    const int64_t m = std::min(rows_per, w.rows - r0);
    for (int64_t r = 0; r < m; ++r) dequantize_row(w.type, w.data + (size_t)(r0 + r) * w.row_stride, &f[r * cols], cols);
    const float* src = f.data();
    if (col_src) {
      for (int64_t r = 0; r < m; ++r)
        for (int64_t c = 0; c < cols; ++c) g[r * cols + c] = f[r * cols + (*col_src)[c]];
      src = g.data();
    }
    for (int64_t i = 0; i < m * cols; ++i) b[i] = f32_to_bf16(src[i]);
    DUO_CUDA_TRY(cudaMemcpy(dst + r0 * cols, b.data(), sizeof(uint16_t) * m * cols, cudaMemcpyHostToDevice));
  }
}

void upload_floats(const std::vector<float>& v, float* dst) {
  DUO_CUDA_TRY(cudaMemcpy(dst, v.data(), sizeof(float) * v.size(), cudaMemcpyHostToDevice));
}

std::vector<float> rope_inv_freq(const ModelConfig& c) {
  std::vector<float> f(c.head_dim / 2);
  for (int i = 0; i < c.head_dim / 2; ++i) f[i] = (float)std::pow((double)c.rope_theta, -2.0 * i / (double)c.head_dim);
  return f;
}

}  // namespace

void GpuWeights::allocate(const ModelConfig& cfg) {
  cfg_ = cfg;
  const Layout L = plan_layout(cfg);
  arena_ = DeviceBuffer(L.total, fmt::format("the weights of {} ({} layers)", cfg.name, cfg.n_layers));
  char* base = arena_.as<char>();
  tok_embd_ = reinterpret_cast<const bf16*>(base + L.tok_embd);
  output_ = reinterpret_cast<const bf16*>(base + L.output);
  output_norm_ = reinterpret_cast<const float*>(base + L.output_norm);
  inv_freq_ = reinterpret_cast<const float*>(base + L.inv_freq);
  layers_.clear();
  for (const LayerSlots& s : L.layers) {
    GpuLayerWeights w;
    w.attn_norm = reinterpret_cast<const float*>(base + s.attn_norm);
    w.ffn_norm = reinterpret_cast<const float*>(base + s.ffn_norm);
    w.wqkv = reinterpret_cast<const bf16*>(base + s.wqkv);
    w.bqkv = cfg.qkv_bias ? reinterpret_cast<const float*>(base + s.bqkv) : nullptr;
    w.wo = reinterpret_cast<const bf16*>(base + s.wo);
    w.wgu = reinterpret_cast<const bf16*>(base + s.wgu);
    w.wdown = reinterpret_cast<const bf16*>(base + s.wdown);
    layers_.push_back(w);
  }
}

template <class T>
static T* writable(const T* p) {
  return const_cast<T*>(p);  // the arena is ours; pointers are const only to callers
}

std::unique_ptr<GpuWeights> GpuWeights::upload(const Model& m) {
  const ModelConfig& c = m.config();
  const ModelWeights& w = m.weights();
  std::unique_ptr<GpuWeights> g(new GpuWeights());
  g->allocate(c);
  const int64_t E = c.n_embd, D = c.head_dim, Q = (int64_t)c.n_heads * D, KV = (int64_t)c.n_kv_heads * D,
                F = c.n_ff, G = c.group_size();
  upload_matrix(w.tok_embd, writable(g->tok_embd_));
  if (!c.tied_embeddings) upload_matrix(w.output, writable(g->output_));
  upload_floats(w.output_norm, writable(g->output_norm_));
  DUO_CHECK((int)m.rope_inv_freq().size() == D / 2, "model has {} RoPE frequencies, expected {}",
            m.rope_inv_freq().size(), D / 2);
  upload_floats(m.rope_inv_freq(), writable(g->inv_freq_));
  std::vector<int> wo_cols((size_t)Q);
  for (int l = 0; l < c.n_layers; ++l) {
    const LayerWeights& L = w.layers[l];
    const GpuLayerWeights& d = g->layers_[l];
    upload_floats(L.attn_norm, writable(d.attn_norm));
    upload_floats(L.ffn_norm, writable(d.ffn_norm));
    upload_matrix(L.wq, writable(d.wqkv));
    upload_matrix(L.wk, writable(d.wqkv) + Q * E);
    upload_matrix(L.wv, writable(d.wqkv) + (Q + KV) * E);
    if (c.qkv_bias) {
      float* b = writable(d.bqkv);
      DUO_CUDA_TRY(cudaMemcpy(b, L.bq.data(), sizeof(float) * Q, cudaMemcpyHostToDevice));
      DUO_CUDA_TRY(cudaMemcpy(b + Q, L.bk.data(), sizeof(float) * KV, cudaMemcpyHostToDevice));
      DUO_CUDA_TRY(cudaMemcpy(b + Q + KV, L.bv.data(), sizeof(float) * KV, cudaMemcpyHostToDevice));
    }
    if (m.heads_reordered()) {
      // Attention output column (j * G + g) * D + e belongs to KV slot j, which holds the
      // original KV head order[j]: take Wo's column (order[j] * G + g) * D + e for it.
      const std::vector<int>& order = m.kv_order()[l];
      for (int64_t j = 0; j < c.n_kv_heads; ++j)
        for (int64_t gq = 0; gq < G; ++gq)
          for (int64_t e = 0; e < D; ++e) wo_cols[(j * G + gq) * D + e] = (int)((order[j] * G + gq) * D + e);
      upload_matrix(L.wo, writable(d.wo), &wo_cols);
    } else {
      upload_matrix(L.wo, writable(d.wo));
    }
    upload_matrix(L.w_gate, writable(d.wgu));
    upload_matrix(L.w_up, writable(d.wgu) + F * E);
    upload_matrix(L.w_down, writable(d.wdown));
  }
  return g;
}

std::unique_ptr<GpuWeights> GpuWeights::synthetic(const ModelConfig& cfg, uint64_t seed) {
  DUO_CHECK(cfg.n_layers > 0 && cfg.n_heads > 0 && cfg.n_kv_heads > 0 && cfg.n_heads % cfg.n_kv_heads == 0 &&
                cfg.head_dim > 0 && cfg.head_dim % 2 == 0 && cfg.n_embd > 0 && cfg.n_ff > 0 && cfg.n_vocab > 0,
            "synthetic model: inconsistent shape");
  std::unique_ptr<GpuWeights> g(new GpuWeights());
  g->allocate(cfg);
  const ModelConfig& c = g->cfg_;
  const int64_t E = c.n_embd, D = c.head_dim, QKV = (int64_t)(c.n_heads + 2 * c.n_kv_heads) * D,
                Q = (int64_t)c.n_heads * D, F = c.n_ff, V = c.n_vocab;
  uint64_t id = 0;
  // Uniform on [-a, a) has variance a^2 / 3: a = sqrt(3 / fan_in) gives variance 1 / fan_in,
  // which keeps a deep random stack's activations at unit scale (as Model::synthetic).
  auto matrix = [&](const bf16* p, int64_t rows, int64_t fan_in) {
    fill_uniform(writable(p), rows * fan_in, tensor_seed(seed, id++), 0.0f, std::sqrt(3.0f / (float)fan_in), 0);
  };
  auto vec = [&](const float* p, int64_t n, float center, float scale) {
    fill_uniform(writable(p), n, tensor_seed(seed, id++), center, scale, 0);
  };
  matrix(g->tok_embd_, V, E);
  if (!c.tied_embeddings) matrix(g->output_, V, E);
  vec(g->output_norm_, E, 1.0f, 0.1f);
  upload_floats(rope_inv_freq(c), writable(g->inv_freq_));
  for (int l = 0; l < c.n_layers; ++l) {
    const GpuLayerWeights& d = g->layers_[l];
    vec(d.attn_norm, E, 1.0f, 0.1f);
    vec(d.ffn_norm, E, 1.0f, 0.1f);
    matrix(d.wqkv, QKV, E);
    if (c.qkv_bias) vec(d.bqkv, QKV, 0.0f, 0.1f);
    matrix(d.wo, E, Q);
    matrix(d.wgu, 2 * F, E);
    matrix(d.wdown, E, F);
  }
  DUO_CUDA_TRY(cudaDeviceSynchronize());
  return g;
}

}  // namespace duo::cuda
