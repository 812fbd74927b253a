#include "backend/cuda/gpu_weights.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels.h"
#include "backend/cuda/synthetic.h"
#include "core/dequant.h"
#include "core/error.h"
#include "core/fp16.h"
#include "model/model.h"

namespace duo::cuda {

namespace {

// Where a weight matrix lives: bf16 elements at w, or int8 elements at q and fp32 row scales.
struct MatSlot {
  size_t w = 0, q = 0, scale = 0;
  bool int8 = false;
};
// Where each tensor lives in the one weight allocation (byte offsets, 256-aligned).
struct LayerSlots {
  size_t attn_norm, ffn_norm, bqkv, q_norm, k_norm, post_attn_norm, post_ffn_norm;
  MatSlot wqkv, wo, wgu, wdown;
};
struct Layout {
  size_t tok_embd, output_norm, inv_freq, inv_freq_local;
  MatSlot output;
  std::vector<LayerSlots> layers;
  size_t total = 0;
};

Layout plan_layout(const ModelConfig& c, WeightFormat format) {
  Layout L;
  auto take = [&](size_t bytes) {
    const size_t at = L.total;
    L.total += (bytes + 255) / 256 * 256;
    return at;
  };
  auto matrix = [&](size_t rows, size_t cols) {
    MatSlot m;
    if (format == WeightFormat::Int8) {
      DUO_CHECK(cols % 16 == 0, "int8 weights need matrix widths that are multiples of 16 ({} has a {}-wide matrix)",
                c.name, cols);
      m.int8 = true, m.q = take(rows * cols), m.scale = take(4 * rows);
    } else {
      m.w = take(2 * rows * cols);
    }
    return m;
  };
  const size_t E = c.n_embd, D = c.head_dim, QKV = (size_t)(c.n_heads + 2 * c.n_kv_heads) * D,
               Q = (size_t)c.n_heads * D, F = c.n_ff, V = c.n_vocab;
  L.tok_embd = take(2 * V * E);
  if (c.tied_embeddings)
    L.output.w = L.tok_embd;  // a tied LM head reads the bf16 embedding table
  else
    L.output = matrix(V, E);
  L.output_norm = take(4 * E);
  L.inv_freq = take(4 * (D / 2));
  L.inv_freq_local = c.layer_local.empty() ? 0 : take(4 * (D / 2));
  for (int l = 0; l < c.n_layers; ++l) {
    LayerSlots s;
    s.attn_norm = take(4 * E);
    s.ffn_norm = take(4 * E);
    s.wqkv = matrix(QKV, E);
    s.bqkv = c.qkv_bias ? take(4 * QKV) : 0;
    s.q_norm = c.qk_norm ? take(4 * D) : 0;
    s.k_norm = c.qk_norm ? take(4 * D) : 0;
    s.post_attn_norm = c.sandwich_norms ? take(4 * E) : 0;
    s.post_ffn_norm = c.sandwich_norms ? take(4 * E) : 0;
    s.wo = matrix(E, Q);
    s.wgu = matrix(2 * F, E);
    s.wdown = matrix(E, F);
    L.layers.push_back(s);
  }
  return L;
}

GpuMatrix at(char* base, const MatSlot& m) {
  GpuMatrix g;
  if (m.int8) {
    g.q = reinterpret_cast<const int8_t*>(base + m.q);
    g.scale = reinterpret_cast<const float*>(base + m.scale);
  } else {
    g.w = reinterpret_cast<const bf16*>(base + m.w);
  }
  return g;
}

// int8 weight-only quantization of one row: scale = max |x| / 127, q = round(x / scale).
float quantize_row_int8(const float* x, int64_t n, int8_t* q) {
  float amax = 0.0f;
  for (int64_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
  const float scale = amax > 0.0f ? amax / 127.0f : 1.0f;
  for (int64_t i = 0; i < n; ++i) q[i] = (int8_t)std::clamp(std::nearbyint(x[i] / scale), -127.0f, 127.0f);
  return scale;
}

// Copies rows of a (quantized) weight matrix into the device matrix dst starting at row `row0`,
// a few MB at a time: bf16 rows, or int8 rows and their scales. col_src: when given,
// destination column c takes source column col_src[c].
void upload_matrix(const WeightView& w, const GpuMatrix& dst, int64_t row0 = 0,
                   const std::vector<int>* col_src = nullptr) {
  const int64_t cols = w.cols;
  const int64_t rows_per = std::max<int64_t>(1, (int64_t)(4 << 20) / cols);
  std::vector<float> f((size_t)(rows_per * cols)), g, scales((size_t)rows_per);
  std::vector<uint16_t> b((size_t)(rows_per * cols));
  std::vector<int8_t> q((size_t)(rows_per * cols));
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
    const int64_t at = row0 + r0;
    if (dst.int8()) {
      for (int64_t r = 0; r < m; ++r) scales[r] = quantize_row_int8(src + r * cols, cols, &q[r * cols]);
      DUO_CUDA_TRY(cudaMemcpy(const_cast<int8_t*>(dst.q) + at * cols, q.data(), (size_t)(m * cols), cudaMemcpyHostToDevice));
      DUO_CUDA_TRY(cudaMemcpy(const_cast<float*>(dst.scale) + at, scales.data(), sizeof(float) * m, cudaMemcpyHostToDevice));
    } else {
      for (int64_t i = 0; i < m * cols; ++i) b[i] = f32_to_bf16(src[i]);
      DUO_CUDA_TRY(cudaMemcpy(const_cast<bf16*>(dst.w) + at * cols, b.data(), sizeof(uint16_t) * m * cols,
                              cudaMemcpyHostToDevice));
    }
  }
}

// A bf16 matrix as a GpuMatrix (the embedding table).
GpuMatrix bf16_matrix(const bf16* w) {
  GpuMatrix g;
  g.w = w;
  return g;
}

void upload_floats(const std::vector<float>& v, float* dst) {
  DUO_CUDA_TRY(cudaMemcpy(dst, v.data(), sizeof(float) * v.size(), cudaMemcpyHostToDevice));
}

// Synthetic weights' RoPE: base theta, positions divided by `linear` (the global layers' scaling).
std::vector<float> rope_inv_freq(const ModelConfig& c, float theta, float linear) {
  std::vector<float> f(c.head_dim / 2);
  for (int i = 0; i < c.head_dim / 2; ++i)
    f[i] = (float)(std::pow((double)theta, -2.0 * i / (double)c.head_dim) / (double)linear);
  return f;
}

}  // namespace

void GpuWeights::allocate(const ModelConfig& cfg, WeightFormat format) {
  cfg_ = cfg;
  format_ = format;
  const Layout L = plan_layout(cfg, format);
  arena_ = DeviceBuffer(L.total, fmt::format("the {} weights of {} ({} layers)", to_string(format), cfg.name,
                                             cfg.n_layers));
  char* base = arena_.as<char>();
  tok_embd_ = reinterpret_cast<const bf16*>(base + L.tok_embd);
  output_ = at(base, L.output);
  output_norm_ = reinterpret_cast<const float*>(base + L.output_norm);
  inv_freq_ = reinterpret_cast<const float*>(base + L.inv_freq);
  inv_freq_local_ = cfg.layer_local.empty() ? nullptr : reinterpret_cast<const float*>(base + L.inv_freq_local);
  layers_.clear();
  for (const LayerSlots& s : L.layers) {
    GpuLayerWeights w;
    w.attn_norm = reinterpret_cast<const float*>(base + s.attn_norm);
    w.ffn_norm = reinterpret_cast<const float*>(base + s.ffn_norm);
    w.wqkv = at(base, s.wqkv);
    w.bqkv = cfg.qkv_bias ? reinterpret_cast<const float*>(base + s.bqkv) : nullptr;
    w.q_norm = cfg.qk_norm ? reinterpret_cast<const float*>(base + s.q_norm) : nullptr;
    w.k_norm = cfg.qk_norm ? reinterpret_cast<const float*>(base + s.k_norm) : nullptr;
    w.post_attn_norm = cfg.sandwich_norms ? reinterpret_cast<const float*>(base + s.post_attn_norm) : nullptr;
    w.post_ffn_norm = cfg.sandwich_norms ? reinterpret_cast<const float*>(base + s.post_ffn_norm) : nullptr;
    w.wo = at(base, s.wo);
    w.wgu = at(base, s.wgu);
    w.wdown = at(base, s.wdown);
    layers_.push_back(w);
  }
}

template <class T>
static T* writable(const T* p) {
  return const_cast<T*>(p);  // the arena is ours; pointers are const only to callers
}

std::unique_ptr<GpuWeights> GpuWeights::upload(const Model& m, WeightFormat format) {
  const ModelConfig& c = m.config();
  // What the attention kernels take, said at load rather than at the first forward.
  DUO_CHECK(c.head_dim == 64 || c.head_dim == 128,
            "{} has heads of {} dimensions; the CUDA attention kernels take 64 or 128; use --device cpu", c.name,
            c.head_dim);
  DUO_CHECK(c.group_size() <= 8, "{} has {} query heads a KV head; the CUDA decode kernels take at most 8", c.name,
            c.group_size());
  const ModelWeights& w = m.weights();
  std::unique_ptr<GpuWeights> g(new GpuWeights());
  g->allocate(c, format);
  const int64_t D = c.head_dim, Q = (int64_t)c.n_heads * D, KV = (int64_t)c.n_kv_heads * D, F = c.n_ff,
                G = c.group_size();
  upload_matrix(w.tok_embd, bf16_matrix(g->tok_embd_));
  if (!c.tied_embeddings) upload_matrix(w.output, g->output_);
  upload_floats(w.output_norm, writable(g->output_norm_));
  DUO_CHECK((int)m.rope_inv_freq().size() == D / 2, "model has {} RoPE frequencies, expected {}",
            m.rope_inv_freq().size(), D / 2);
  upload_floats(m.rope_inv_freq(), writable(g->inv_freq_));
  if (!c.layer_local.empty()) {
    DUO_CHECK((int)m.rope_inv_freq_local().size() == D / 2, "model has {} local RoPE frequencies, expected {}",
              m.rope_inv_freq_local().size(), D / 2);
    upload_floats(m.rope_inv_freq_local(), writable(g->inv_freq_local_));
  }
  std::vector<int> wo_cols((size_t)Q);
  for (int l = 0; l < c.n_layers; ++l) {
    const LayerWeights& L = w.layers[l];
    const GpuLayerWeights& d = g->layers_[l];
    upload_floats(L.attn_norm, writable(d.attn_norm));
    upload_floats(L.ffn_norm, writable(d.ffn_norm));
    if (c.qk_norm) {  // one weight vector a layer for every head (unchanged by reordered heads)
      DUO_CHECK((int64_t)L.q_norm.size() == D && (int64_t)L.k_norm.size() == D,
                "layer {}: q/k norm weights of {} and {} values, expected head_dim {}", l, L.q_norm.size(),
                L.k_norm.size(), D);
      upload_floats(L.q_norm, writable(d.q_norm));
      upload_floats(L.k_norm, writable(d.k_norm));
    }
    if (c.sandwich_norms) {
      DUO_CHECK((int64_t)L.post_attn_norm.size() == c.n_embd && (int64_t)L.post_ffn_norm.size() == c.n_embd,
                "layer {}: sandwich norm weights of {} and {} values, expected n_embd {}", l, L.post_attn_norm.size(),
                L.post_ffn_norm.size(), c.n_embd);
      upload_floats(L.post_attn_norm, writable(d.post_attn_norm));
      upload_floats(L.post_ffn_norm, writable(d.post_ffn_norm));
    }
    upload_matrix(L.wq, d.wqkv, 0);
    upload_matrix(L.wk, d.wqkv, Q);
    upload_matrix(L.wv, d.wqkv, Q + KV);
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
      upload_matrix(L.wo, d.wo, 0, &wo_cols);
    } else {
      upload_matrix(L.wo, d.wo);
    }
    upload_matrix(L.w_gate, d.wgu, 0);
    upload_matrix(L.w_up, d.wgu, F);
    upload_matrix(L.w_down, d.wdown);
  }
  return g;
}

std::unique_ptr<GpuWeights> GpuWeights::synthetic(const ModelConfig& cfg, uint64_t seed, WeightFormat format) {
  DUO_CHECK(cfg.n_layers > 0 && cfg.n_heads > 0 && cfg.n_kv_heads > 0 && cfg.n_heads % cfg.n_kv_heads == 0 &&
                cfg.head_dim > 0 && cfg.head_dim % 2 == 0 && cfg.n_embd > 0 && cfg.n_ff > 0 && cfg.n_vocab > 0,
            "synthetic model: inconsistent shape");
  std::unique_ptr<GpuWeights> g(new GpuWeights());
  g->allocate(cfg, format);
  const ModelConfig& c = g->cfg_;
  const int64_t E = c.n_embd, D = c.head_dim, QKV = (int64_t)(c.n_heads + 2 * c.n_kv_heads) * D,
                Q = (int64_t)c.n_heads * D, F = c.n_ff, V = c.n_vocab;
  uint64_t id = 0;
  // Uniform on [-a, a) has variance a^2 / 3: a = sqrt(3 / fan_in) gives variance 1 / fan_in,
  // which keeps a deep random stack's activations at unit scale (as Model::synthetic).
  // int8: integers uniform on [-127, 127] with the row scale a / 127, the same distribution.
  auto matrix = [&](const GpuMatrix& m, int64_t rows, int64_t fan_in) {
    const float a = std::sqrt(3.0f / (float)fan_in);
    if (m.int8()) {
      fill_int8(writable(m.q), rows * fan_in, tensor_seed(seed, id++), 0);
      fill_uniform(writable(m.scale), rows, 0, a / 127.0f, 0.0f, 0);
    } else {
      fill_uniform(writable(m.w), rows * fan_in, tensor_seed(seed, id++), 0.0f, a, 0);
    }
  };
  auto vec = [&](const float* p, int64_t n, float center, float scale) {
    fill_uniform(writable(p), n, tensor_seed(seed, id++), center, scale, 0);
  };
  matrix(bf16_matrix(g->tok_embd_), V, E);
  if (!c.tied_embeddings) matrix(g->output_, V, E);
  vec(g->output_norm_, E, 1.0f, 0.1f);
  upload_floats(rope_inv_freq(c, c.rope_theta, c.rope_linear_factor), writable(g->inv_freq_));
  if (!c.layer_local.empty()) upload_floats(rope_inv_freq(c, c.rope_local_theta, 1.0f), writable(g->inv_freq_local_));
  for (int l = 0; l < c.n_layers; ++l) {
    const GpuLayerWeights& d = g->layers_[l];
    vec(d.attn_norm, E, 1.0f, 0.1f);
    vec(d.ffn_norm, E, 1.0f, 0.1f);
    matrix(d.wqkv, QKV, E);
    if (c.qkv_bias) vec(d.bqkv, QKV, 0.0f, 0.1f);
    if (c.qk_norm) vec(d.q_norm, D, 1.0f, 0.1f), vec(d.k_norm, D, 1.0f, 0.1f);
    if (c.sandwich_norms) vec(d.post_attn_norm, E, 1.0f, 0.1f), vec(d.post_ffn_norm, E, 1.0f, 0.1f);
    matrix(d.wo, E, Q);
    matrix(d.wgu, 2 * F, E);
    matrix(d.wdown, E, F);
  }
  DUO_CUDA_TRY(cudaDeviceSynchronize());
  return g;
}

}  // namespace duo::cuda
