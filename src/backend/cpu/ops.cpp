#include "backend/cpu/ops.h"

#include <cmath>

#include "core/exp_avx2.h"  // exp256 (swiglu)

namespace duo {

void rmsnorm(const float* x, const float* w, float* y, int n, float eps) {
  const float ss = dot_f32(x, x, n);  // vectorized (a plain loop's float sum would not be)
  const float scale = 1.0f / std::sqrt(ss / (float)n + eps);
  for (int i = 0; i < n; ++i) y[i] = x[i] * scale * w[i];
}

void rope(float* v, int n_dims, int pos, const float* inv_freq, RopeStyle style) {
  const int half = n_dims / 2;
  for (int i = 0; i < half; ++i) {
    const float angle = (float)pos * inv_freq[i];
    const float c = std::cos(angle), s = std::sin(angle);
    const int a = style == RopeStyle::Interleaved ? 2 * i : i;
    const int b = style == RopeStyle::Interleaved ? 2 * i + 1 : i + half;
    const float x0 = v[a], x1 = v[b];
    v[a] = x0 * c - x1 * s;
    v[b] = x0 * s + x1 * c;
  }
}

void rope_heads(float* v, int n_heads, int n_dims, int pos, const float* inv_freq, RopeStyle style) {
  constexpr int kMaxHalf = 256;
  const int half = n_dims / 2;
  if (half > kMaxHalf) {
    for (int h = 0; h < n_heads; ++h) rope(v + h * n_dims, n_dims, pos, inv_freq, style);
    return;
  }
  float cs[kMaxHalf], sn[kMaxHalf];
  for (int i = 0; i < half; ++i) {
    const float angle = (float)pos * inv_freq[i];
    cs[i] = std::cos(angle);
    sn[i] = std::sin(angle);
  }
  for (int h = 0; h < n_heads; ++h) {
    float* x = v + h * n_dims;
    if (style == RopeStyle::Interleaved) {
      for (int i = 0; i < half; ++i) {
        const float x0 = x[2 * i], x1 = x[2 * i + 1];
        x[2 * i] = x0 * cs[i] - x1 * sn[i];
        x[2 * i + 1] = x0 * sn[i] + x1 * cs[i];
      }
    } else {
      for (int i = 0; i < half; ++i) {
        const float x0 = x[i], x1 = x[i + half];
        x[i] = x0 * cs[i] - x1 * sn[i];
        x[i + half] = x0 * sn[i] + x1 * cs[i];
      }
    }
  }
}

void add_inplace(float* y, const float* x, int n) {
  for (int i = 0; i < n; ++i) y[i] += x[i];
}


void geglu(const float* gate, const float* up, float* out, int n) {
  const float k = 0.7978845608028654f;  // sqrt(2 / pi)
  for (int i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = 0.5f * g * (1.0f + std::tanh(k * (g + 0.044715f * g * g * g))) * up[i];
  }
}

void swiglu(const float* gate, const float* up, float* out, int n) {
  int i = 0;
#if defined(__AVX2__) && defined(__FMA__)
  // silu(g) = g / (1 + exp(-g))
  const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
  for (; i + 8 <= n; i += 8) {
    const __m256 g = _mm256_loadu_ps(gate + i);
    const __m256 e = exp256(_mm256_xor_ps(g, sign));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, e)), _mm256_loadu_ps(up + i)));
  }
#endif
  for (; i < n; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

void softmax(float* x, int n) {
  float m = -INFINITY;
  for (int i = 0; i < n; ++i) m = x[i] > m ? x[i] : m;
  for (int i = 0; i < n; ++i) x[i] -= m;
  exp_inplace(x, n);
  float s = 0.0f;
  for (int i = 0; i < n; ++i) s += x[i];
  const float inv = 1.0f / s;
  for (int i = 0; i < n; ++i) x[i] *= inv;
}

float dot_f32(const float* a, const float* b, int n) {
  int i = 0;
#if defined(__AVX2__) && defined(__FMA__)
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
  }
  acc0 = _mm256_add_ps(acc0, acc1);
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc0), _mm256_extractf128_ps(acc0, 1));
  s = _mm_hadd_ps(s, s);
  s = _mm_hadd_ps(s, s);
  float r = _mm_cvtss_f32(s);
#else
  float r = 0.0f;
#endif
  for (; i < n; ++i) r += a[i] * b[i];
  return r;
}

}  // namespace duo
