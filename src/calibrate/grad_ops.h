// Row-wise ops of the llama-family layer with their backward passes w.r.t. activations,
// templated on the scalar type (float for real runs, double for finite-difference checks).
// Weights are frozen: no op computes a weight gradient. Layout is [token][feature] throughout.
//
// Each `*_backward` writes the input gradient (`dx = ...`) unless it says it accumulates; the
// caller adds residual branches. Rows are split over the pool in fixed chunks, and per-token
// reductions (the gate gradient) are summed chunk by chunk in a fixed order, so results do not
// depend on the number of threads.
#pragma once
#include <cstdint>
#include <vector>

#include "model/config.h"

namespace duo {

class ThreadPool;

// --- RMSNorm: y = x / sqrt(mean(x^2) + eps) * w, per row of `dim` ---
template <typename T>
void rmsnorm_forward(const T* x, const T* w, T* y, int64_t n, int64_t dim, double eps, ThreadPool& pool);
// dx = r * (dy*w) - r^3 * x * sum(dy*w*x) / dim, r = 1/sqrt(mean(x^2) + eps). accumulate: dx +=.
template <typename T>
void rmsnorm_backward(const T* x, const T* w, const T* dy, T* dx, int64_t n, int64_t dim, double eps, bool accumulate,
                      ThreadPool& pool);

// --- RoPE: rotation of dimension pairs by pos * inv_freq[i] ---
// cos/sin of every (position, frequency) of a sequence, shared by all layers and by both
// directions. For float the angle is computed as the inference forward does ((float)pos * f).
template <typename T>
struct RopeTable {
  int64_t n = 0;
  int half = 0;
  std::vector<T> cos, sin;  // [position][i], half values per position
  void build(int64_t pos0, int64_t n_pos, const std::vector<float>& inv_freq);
};
// Rotates `n_heads` head vectors of `head_dim` in each of n rows (row stride `stride`) in place.
// inverse: rotate by -angle, which is the backward pass (the rotation is orthogonal).
template <typename T>
void rope_apply(T* x, int64_t n, int64_t stride, int n_heads, int head_dim, const RopeTable<T>& table,
                RopeStyle style, bool inverse, ThreadPool& pool);

// --- SwiGLU: h = silu(g) * u ---
template <typename T>
void swiglu_forward(const T* g, const T* u, T* h, int64_t count, ThreadPool& pool);
// dg = dh * u * s * (1 + g * (1 - s)), du = dh * silu(g), s = sigmoid(g).
template <typename T>
void swiglu_backward(const T* g, const T* u, const T* dh, T* dg, T* du, int64_t count, ThreadPool& pool);

// --- y += x (residual) and y = x + b per row (bias) ---
template <typename T>
void add_inplace_rows(T* y, const T* x, int64_t count, ThreadPool& pool);
template <typename T>
void add_bias_rows(T* y, const T* b, int64_t n, int64_t dim, ThreadPool& pool);

// --- Gate mixing of attention outputs, one gate per KV head ---
// o[t][h][:] = a[h / G] * full[t][h][:] + (1 - a[h / G]) * stream[t][h][:], h < n_heads,
// rows of n_heads * head_dim, G = n_heads / n_kv_heads.
template <typename T>
void gate_mix_forward(const T* full, const T* stream, const T* gates, T* o, int64_t n, int n_heads, int n_kv_heads,
                      int head_dim, ThreadPool& pool);
// d_full = a * d_o, d_stream = (1 - a) * d_o (written), d_gates[h] += sum d_o . (full - stream)
// over the tokens and query heads of KV head h (accumulated in double).
template <typename T>
void gate_mix_backward(const T* full, const T* stream, const T* gates, const T* d_o, T* d_full, T* d_stream,
                       double* d_gates, int64_t n, int n_heads, int n_kv_heads, int head_dim, ThreadPool& pool);

}  // namespace duo
