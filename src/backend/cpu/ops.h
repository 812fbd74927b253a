// Element-wise and row-wise CPU ops of the llama-family forward. Each has the obvious
// plain meaning; the loops are written so the compiler vectorizes them.
#pragma once
#include <cstdint>

#include "core/fast_exp.h"  // exp_inplace, which softmax and attention use
#include "model/config.h"

namespace duo {

// y[i] = x[i] / sqrt(mean(x^2) + eps) * w[i]  for one row of n.
void rmsnorm(const float* x, const float* w, float* y, int n, float eps);

// Rotates one head vector (n_dims values) in place for position `pos`.
// inv_freq[i] = theta^(-2i/n_dims) / factor[i], precomputed by the caller (n_dims/2 values).
void rope(float* v, int n_dims, int pos, const float* inv_freq, RopeStyle style);
// rope() on n_heads consecutive head vectors of n_dims (one token's heads), with the angles'
// cos/sin computed once for all of them (n_dims <= 512). Same values as rope() per head.
void rope_heads(float* v, int n_heads, int n_dims, int pos, const float* inv_freq, RopeStyle style);

// out[i] = silu(gate[i]) * up[i]
void swiglu(const float* gate, const float* up, float* out, int n);

// out[i] = gelu(gate[i]) * up[i], gelu with the tanh approximation (PyTorch's
// gelu(approximate="tanh"), gemma3's gelu_pytorch_tanh): 0.5 g (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3)))
void geglu(const float* gate, const float* up, float* out, int n);

// y[i] += x[i]
void add_inplace(float* y, const float* x, int n);

// Numerically stable softmax of one row in place.
void softmax(float* x, int n);

// dot product of two float vectors
float dot_f32(const float* a, const float* b, int n);

}  // namespace duo
