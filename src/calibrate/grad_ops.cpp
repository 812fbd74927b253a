#include "calibrate/grad_ops.h"

#include <algorithm>
#include <cmath>

#include "calibrate/scalar_math.h"
#include "core/error.h"
#include "core/thread_pool.h"

namespace duo {

using calib_detail::exp_inplace_t;
using calib_detail::kRowChunk;

namespace {

// Runs fn(row_begin, row_end) over [0, n) in chunks of kRowChunk rows.
template <typename Fn>
void for_rows(int64_t n, ThreadPool& pool, Fn&& fn) {
  pool.parallel_for_dynamic(n, kRowChunk, [&](int64_t b, int64_t e, int) { fn(b, e); });
}

// Elements per task of the element-wise ops.
constexpr int64_t kElemChunk = 16384;

}  // namespace

// ------------------------------------------------------------------------------- RMSNorm
template <typename T>
void rmsnorm_forward(const T* x, const T* w, T* y, int64_t n, int64_t dim, double eps, ThreadPool& pool) {
  for_rows(n, pool, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const T* xr = x + t * dim;
      T* yr = y + t * dim;
      T ss = 0;
      for (int64_t i = 0; i < dim; ++i) ss += xr[i] * xr[i];
      const T r = T(1) / std::sqrt(ss / (T)dim + (T)eps);
      for (int64_t i = 0; i < dim; ++i) yr[i] = xr[i] * r * w[i];
    }
  });
}

template <typename T>
void rmsnorm_backward(const T* x, const T* w, const T* dy, T* dx, int64_t n, int64_t dim, double eps, bool accumulate,
                      ThreadPool& pool) {
  for_rows(n, pool, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const T* xr = x + t * dim;
      const T* gr = dy + t * dim;
      T* dr = dx + t * dim;
      T ss = 0, gx = 0;
      for (int64_t i = 0; i < dim; ++i) ss += xr[i] * xr[i], gx += gr[i] * w[i] * xr[i];
      const T r = T(1) / std::sqrt(ss / (T)dim + (T)eps);
      const T c = r * r * r * gx / (T)dim;
      if (accumulate)
        for (int64_t i = 0; i < dim; ++i) dr[i] += r * gr[i] * w[i] - c * xr[i];
      else
        for (int64_t i = 0; i < dim; ++i) dr[i] = r * gr[i] * w[i] - c * xr[i];
    }
  });
}

// ------------------------------------------------------------------------------- RoPE
template <typename T>
void RopeTable<T>::build(int64_t pos0, int64_t n_pos, const std::vector<float>& inv_freq) {
  n = n_pos;
  half = (int)inv_freq.size();
  cos.resize((size_t)(n * half));
  sin.resize((size_t)(n * half));
  for (int64_t t = 0; t < n; ++t)
    for (int i = 0; i < half; ++i) {
      // Same expression as the inference forward for float (float angle, float cos/sin).
      const T angle = (T)(pos0 + t) * (T)inv_freq[i];
      cos[t * half + i] = std::cos(angle);
      sin[t * half + i] = std::sin(angle);
    }
}

template <typename T>
void rope_apply(T* x, int64_t n, int64_t stride, int n_heads, int head_dim, const RopeTable<T>& table,
                RopeStyle style, bool inverse, ThreadPool& pool) {
  DUO_CHECK(table.n >= n && 2 * table.half == head_dim, "rope: table of {} positions x {} pairs for {} rows of head dim {}",
            table.n, table.half, n, head_dim);
  const int half = table.half;
  const T sign = inverse ? T(-1) : T(1);
  for_rows(n, pool, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const T* cs = table.cos.data() + t * half;
      const T* sn = table.sin.data() + t * half;
      for (int h = 0; h < n_heads; ++h) {
        T* v = x + t * stride + (int64_t)h * head_dim;
        for (int i = 0; i < half; ++i) {
          const int a = style == RopeStyle::Interleaved ? 2 * i : i;
          const int bb = style == RopeStyle::Interleaved ? 2 * i + 1 : i + half;
          const T c = cs[i], s = sign * sn[i];
          const T x0 = v[a], x1 = v[bb];
          v[a] = x0 * c - x1 * s;
          v[bb] = x0 * s + x1 * c;
        }
      }
    }
  });
}

// ------------------------------------------------------------------------------- SwiGLU
template <typename T>
void swiglu_forward(const T* g, const T* u, T* h, int64_t count, ThreadPool& pool) {
  pool.parallel_for_dynamic(count, kElemChunk, [&](int64_t b, int64_t e, int) {
    T buf[64];
    for (int64_t i0 = b; i0 < e; i0 += 64) {
      const int m = (int)std::min<int64_t>(64, e - i0);
      for (int j = 0; j < m; ++j) buf[j] = -g[i0 + j];
      exp_inplace_t(buf, m);
      for (int j = 0; j < m; ++j) h[i0 + j] = g[i0 + j] / (T(1) + buf[j]) * u[i0 + j];
    }
  });
}

template <typename T>
void swiglu_backward(const T* g, const T* u, const T* dh, T* dg, T* du, int64_t count, ThreadPool& pool) {
  pool.parallel_for_dynamic(count, kElemChunk, [&](int64_t b, int64_t e, int) {
    T buf[64];
    for (int64_t i0 = b; i0 < e; i0 += 64) {
      const int m = (int)std::min<int64_t>(64, e - i0);
      for (int j = 0; j < m; ++j) buf[j] = -g[i0 + j];
      exp_inplace_t(buf, m);
      for (int j = 0; j < m; ++j) {
        const int64_t i = i0 + j;
        const T s = T(1) / (T(1) + buf[j]);
        const T silu = g[i] * s;
        dg[i] = dh[i] * u[i] * s * (T(1) + g[i] * (T(1) - s));
        du[i] = dh[i] * silu;
      }
    }
  });
}

// ------------------------------------------------------------------------------- residual, bias
template <typename T>
void add_inplace_rows(T* y, const T* x, int64_t count, ThreadPool& pool) {
  pool.parallel_for_dynamic(count, kElemChunk, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) y[i] += x[i];
  });
}

template <typename T>
void add_bias_rows(T* y, const T* bias, int64_t n, int64_t dim, ThreadPool& pool) {
  for_rows(n, pool, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t)
      for (int64_t i = 0; i < dim; ++i) y[t * dim + i] += bias[i];
  });
}

// ------------------------------------------------------------------------------- gate mixing
template <typename T>
void gate_mix_forward(const T* full, const T* stream, const T* gates, T* o, int64_t n, int n_heads, int n_kv_heads,
                      int head_dim, ThreadPool& pool) {
  DUO_CHECK(n_kv_heads > 0 && n_heads % n_kv_heads == 0, "gate mix: {} heads over {} KV heads", n_heads, n_kv_heads);
  const int G = n_heads / n_kv_heads;
  const int64_t width = (int64_t)n_heads * head_dim;
  for_rows(n, pool, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t)
      for (int h = 0; h < n_heads; ++h) {
        const T a = gates[h / G];
        const int64_t off = t * width + (int64_t)h * head_dim;
        for (int d = 0; d < head_dim; ++d) o[off + d] = a * full[off + d] + (T(1) - a) * stream[off + d];
      }
  });
}

template <typename T>
void gate_mix_backward(const T* full, const T* stream, const T* gates, const T* d_o, T* d_full, T* d_stream,
                       double* d_gates, int64_t n, int n_heads, int n_kv_heads, int head_dim, ThreadPool& pool) {
  DUO_CHECK(n_kv_heads > 0 && n_heads % n_kv_heads == 0, "gate mix: {} heads over {} KV heads", n_heads, n_kv_heads);
  const int G = n_heads / n_kv_heads;
  const int64_t width = (int64_t)n_heads * head_dim;
  const int64_t n_chunks = (n + kRowChunk - 1) / kRowChunk;
  // Partial gate sums per chunk of rows, added in chunk order afterwards.
  std::vector<double> partial((size_t)(n_chunks * n_kv_heads), 0.0);
  pool.parallel_for_dynamic(n_chunks, 1, [&](int64_t cb, int64_t ce, int) {
    for (int64_t c = cb; c < ce; ++c) {
      double* ps = partial.data() + c * n_kv_heads;
      for (int64_t t = c * kRowChunk; t < std::min(n, (c + 1) * kRowChunk); ++t)
        for (int h = 0; h < n_heads; ++h) {
          const T a = gates[h / G];
          const int64_t off = t * width + (int64_t)h * head_dim;
          T s = 0;
          for (int d = 0; d < head_dim; ++d) {
            const T g = d_o[off + d];
            s += g * (full[off + d] - stream[off + d]);
            d_full[off + d] = a * g;
            d_stream[off + d] = (T(1) - a) * g;
          }
          ps[h / G] += (double)s;
        }
    }
  });
  for (int64_t c = 0; c < n_chunks; ++c)
    for (int h = 0; h < n_kv_heads; ++h) d_gates[h] += partial[c * n_kv_heads + h];
}

#define DUO_INSTANTIATE_GRAD_OPS(T)                                                                                \
  template void rmsnorm_forward<T>(const T*, const T*, T*, int64_t, int64_t, double, ThreadPool&);                 \
  template void rmsnorm_backward<T>(const T*, const T*, const T*, T*, int64_t, int64_t, double, bool, ThreadPool&); \
  template struct RopeTable<T>;                                                                                    \
  template void rope_apply<T>(T*, int64_t, int64_t, int, int, const RopeTable<T>&, RopeStyle, bool, ThreadPool&);  \
  template void swiglu_forward<T>(const T*, const T*, T*, int64_t, ThreadPool&);                                   \
  template void swiglu_backward<T>(const T*, const T*, const T*, T*, T*, int64_t, ThreadPool&);                    \
  template void add_inplace_rows<T>(T*, const T*, int64_t, ThreadPool&);                                           \
  template void add_bias_rows<T>(T*, const T*, int64_t, int64_t, ThreadPool&);                                     \
  template void gate_mix_forward<T>(const T*, const T*, const T*, T*, int64_t, int, int, int, ThreadPool&);        \
  template void gate_mix_backward<T>(const T*, const T*, const T*, const T*, T*, T*, double*, int64_t, int, int,   \
                                     int, ThreadPool&);

DUO_INSTANTIATE_GRAD_OPS(float)
DUO_INSTANTIATE_GRAD_OPS(double)

}  // namespace duo
