#include "calibrate/flash_attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "calibrate/scalar_math.h"
#include "core/error.h"
#include "core/thread_pool.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define DUO_FLASH_AVX2 1
#endif

namespace duo {

using calib_detail::exp_inplace_t;

namespace {

constexpr int B = 64;  // query rows and key columns per block

template <typename T>
constexpr T neg_inf() {
  return -std::numeric_limits<T>::infinity();
}

void check_dims(const AttentionDims& d) {
  DUO_CHECK(d.n > 0 && d.n_heads > 0 && d.n_kv_heads > 0 && d.n_heads % d.n_kv_heads == 0 && d.head_dim > 0,
            "attention: bad shape (n {}, heads {}, KV heads {}, head dim {})", d.n, d.n_heads, d.n_kv_heads,
            d.head_dim);
}

// Per-thread scratch of one block task.
template <typename T>
struct Scratch {
  std::vector<T> kt, vt;   // D x B: key / value block transposed, zero past the block's end
  std::vector<T> s, p;     // B x B: scores, then probabilities; dP, then dS
  std::vector<T> acc, acc2;  // B x D accumulators
  void reserve(int d) {
    kt.assign((size_t)d * B, T(0));
    vt.assign((size_t)d * B, T(0));
    s.resize((size_t)B * B);
    p.resize((size_t)B * B);
    acc.resize((size_t)B * d);
    acc2.resize((size_t)B * d);
  }
};

template <typename T>
Scratch<T>& scratch(int d) {
  static thread_local Scratch<T> s;
  if (s.kt.size() < (size_t)d * B) s.reserve(d);
  return s;
}

// kt[dd][c] = rows[c][dd] for c < bk, 0 for bk <= c < B.
template <typename T>
void transpose_block(const T* rows, int64_t stride, int bk, int d, T* kt) {
  for (int c = 0; c < bk; ++c)
    for (int dd = 0; dd < d; ++dd) kt[dd * B + c] = rows[c * stride + dd];
  for (int dd = 0; dd < d; ++dd)
    for (int c = bk; c < B; ++c) kt[dd * B + c] = T(0);
}

// The two products every block step is made of (the float versions keep their accumulators
// in registers):
//   row_dot_block:   out[0..B) = x[0..d) . bt[0..d)[0..B)         (scores, dP rows)
//   accumulate_rows: out[0..d) += sum_j coef[j * cs] * rows[j][0..d)  (P V, dV, dK, dQ)
// Zero coefficients (masked entries) are skipped: they contribute exactly nothing.
template <typename T>
void row_dot_block(const T* x, const T* bt, int d, T* out) {
  for (int c = 0; c < B; ++c) out[c] = T(0);
  for (int dd = 0; dd < d; ++dd) {
    const T xv = x[dd];
    const T* br = bt + dd * B;
    for (int c = 0; c < B; ++c) out[c] += xv * br[c];
  }
}

template <typename T>
void accumulate_rows(T* out, const T* coef, int64_t cs, const T* rows, int64_t ld, int m, int d) {
  for (int j = 0; j < m; ++j) {
    const T cj = coef[j * cs];
    if (cj == T(0)) continue;
    const T* r = rows + j * ld;
    for (int dd = 0; dd < d; ++dd) out[dd] += cj * r[dd];
  }
}

#ifdef DUO_FLASH_AVX2
static_assert(B == 64, "the AVX2 row kernels hold a 64-wide row in 8 registers");
template <>
void row_dot_block<float>(const float* x, const float* bt, int d, float* out) {
  __m256 acc[8];
  for (int j = 0; j < 8; ++j) acc[j] = _mm256_setzero_ps();
  for (int dd = 0; dd < d; ++dd) {
    const __m256 xv = _mm256_broadcast_ss(x + dd);
    const float* br = bt + dd * B;
    for (int j = 0; j < 8; ++j) acc[j] = _mm256_fmadd_ps(xv, _mm256_loadu_ps(br + 8 * j), acc[j]);
  }
  for (int j = 0; j < 8; ++j) _mm256_storeu_ps(out + 8 * j, acc[j]);
}

template <>
void accumulate_rows<float>(float* out, const float* coef, int64_t cs, const float* rows, int64_t ld, int m, int d) {
  if (d % 8 != 0) {  // not a whole number of vectors: the plain loop
    for (int j = 0; j < m; ++j) {
      const float cj = coef[j * cs];
      if (cj == 0.0f) continue;
      for (int dd = 0; dd < d; ++dd) out[dd] += cj * rows[j * ld + dd];
    }
    return;
  }
  for (int c0 = 0; c0 < d; c0 += 64) {
    const int w = std::min(64, d - c0) / 8;
    __m256 acc[8];
    for (int i = 0; i < w; ++i) acc[i] = _mm256_loadu_ps(out + c0 + 8 * i);
    for (int j = 0; j < m; ++j) {
      const float cj = coef[j * cs];
      if (cj == 0.0f) continue;
      const __m256 cv = _mm256_set1_ps(cj);
      const float* r = rows + j * ld + c0;
      for (int i = 0; i < w; ++i) acc[i] = _mm256_fmadd_ps(cv, _mm256_loadu_ps(r + 8 * i), acc[i]);
    }
    for (int i = 0; i < w; ++i) _mm256_storeu_ps(out + c0 + 8 * i, acc[i]);
  }
}
#endif

// s[r][c] = scale * q_r . key_c over a B-wide row, then the mask (and c >= bk) as -inf.
template <typename T, typename Mask>
void block_scores(const T* q, int64_t ldq, int bq, const T* kt, int bk, int d, T scale, const Mask& mask, int64_t i0,
                  int64_t j0, T* s) {
  const bool full = mask.all(i0, i0 + bq, j0, j0 + bk);
  for (int r = 0; r < bq; ++r) {
    T* sr = s + r * B;
    row_dot_block(q + r * ldq, kt, d, sr);
    for (int c = 0; c < B; ++c) sr[c] *= scale;
    for (int c = bk; c < B; ++c) sr[c] = neg_inf<T>();
    if (!full)
      for (int c = 0; c < bk; ++c)
        if (!mask.visible(i0 + r, j0 + c)) sr[c] = neg_inf<T>();
  }
}

// p[r][c] = exp(s[r][c] - lse_r) and, with dp, ds[r][c] = p * (dp[r][c] - delta_r) where
// dp[r][c] = dO_r . value_c. On return p holds P and s holds dS.
template <typename T>
void block_probs_and_ds(T* s, T* p, const T* lse, const T* delta, const T* dout, int64_t ldo, int bq, const T* vt,
                        int d) {
  for (int r = 0; r < bq; ++r) {
    T* sr = s + r * B;
    T* pr = p + r * B;
    for (int c = 0; c < B; ++c) pr[c] = sr[c] - lse[r];
    exp_inplace_t(pr, B);
    row_dot_block(dout + r * ldo, vt, d, sr);  // dP row, reusing s
    for (int c = 0; c < B; ++c) sr[c] = pr[c] * (sr[c] - delta[r]);
  }
}

// ------------------------------------------------------------------------------- forward
template <typename T, typename Mask>
void forward_impl(const T* q, const T* k, const T* v, T* o, T* lse, const AttentionDims& dm, const Mask& mask,
                  ThreadPool& pool) {
  const int64_t n = dm.n;
  const int H = dm.n_heads, D = dm.head_dim, G = dm.n_heads / dm.n_kv_heads;
  const int64_t ldq = (int64_t)H * D, ldk = (int64_t)dm.n_kv_heads * D;
  const int64_t nb = (n + B - 1) / B;
  const T scale = T(1) / std::sqrt((T)D);
  pool.parallel_for_dynamic(H * nb, 1, [&](int64_t tb, int64_t te, int) {
    Scratch<T>& sc = scratch<T>(D);
    for (int64_t task = tb; task < te; ++task) {
      // Later query blocks see more keys: hand them out first.
      const int h = (int)(task % H), hk = h / G;
      const int64_t i0 = (nb - 1 - task / H) * B;
      const int bq = (int)std::min<int64_t>(B, n - i0);
      const T* qb = q + i0 * ldq + (int64_t)h * D;
      T m[B], l[B];
      for (int r = 0; r < bq; ++r) m[r] = neg_inf<T>(), l[r] = T(0);
      std::fill_n(sc.acc.data(), (size_t)bq * D, T(0));
      for (int64_t j0 = 0; j0 < i0 + bq; j0 += B) {
        const int bk = (int)std::min<int64_t>(B, n - j0);
        if (!mask.any(i0, i0 + bq, j0, j0 + bk)) continue;
        const T* kb = k + j0 * ldk + (int64_t)hk * D;
        const T* vb = v + j0 * ldk + (int64_t)hk * D;
        transpose_block(kb, ldk, bk, D, sc.kt.data());
        block_scores(qb, ldq, bq, sc.kt.data(), bk, D, scale, mask, i0, j0, sc.s.data());
        for (int r = 0; r < bq; ++r) {
          T* sr = sc.s.data() + r * B;
          T mx = m[r];
          for (int c = 0; c < bk; ++c) mx = std::max(mx, sr[c]);
          if (mx == neg_inf<T>()) continue;  // nothing visible to this row yet
          const T alpha = std::exp(m[r] - mx);  // 0 when m was -inf
          for (int c = 0; c < B; ++c) sr[c] -= mx;
          exp_inplace_t(sr, B);
          T sum = 0;
          for (int c = 0; c < bk; ++c) sum += sr[c];
          l[r] = l[r] * alpha + sum;
          m[r] = mx;
          T* ar = sc.acc.data() + r * D;
          if (alpha != T(1))
            for (int dd = 0; dd < D; ++dd) ar[dd] *= alpha;
          accumulate_rows(ar, sr, 1, vb, ldk, bk, D);
        }
      }
      for (int r = 0; r < bq; ++r) {
        T* orow = o + (i0 + r) * ldq + (int64_t)h * D;
        const T* ar = sc.acc.data() + r * D;
        const T inv = T(1) / l[r];
        for (int dd = 0; dd < D; ++dd) orow[dd] = ar[dd] * inv;
        lse[(int64_t)h * n + i0 + r] = m[r] + std::log(l[r]);
      }
    }
  });
}

// ------------------------------------------------------------------------------- backward
template <typename T, typename Mask>
void backward_impl(const T* q, const T* k, const T* v, const T* o, const T* lse, const T* d_o, T* dq, T* dk, T* dv,
                   bool accumulate, const AttentionDims& dm, const Mask& mask, ThreadPool& pool) {
  const int64_t n = dm.n;
  const int H = dm.n_heads, HKV = dm.n_kv_heads, D = dm.head_dim, G = dm.n_heads / dm.n_kv_heads;
  const int64_t ldq = (int64_t)H * D, ldk = (int64_t)HKV * D;
  const int64_t nb = (n + B - 1) / B;
  const T scale = T(1) / std::sqrt((T)D);

  // delta[h][i] = dO_i . O_i (the softmax backward's row term).
  std::vector<T> delta((size_t)(H * n));
  pool.parallel_for_dynamic(n, calib_detail::kRowChunk, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i)
      for (int h = 0; h < H; ++h) {
        const T* a = o + i * ldq + (int64_t)h * D;
        const T* g = d_o + i * ldq + (int64_t)h * D;
        T s = 0;
        for (int dd = 0; dd < D; ++dd) s += a[dd] * g[dd];
        delta[(size_t)h * n + i] = s;
      }
  });

  // Pass 1: dK, dV per (KV head, key block) over the visible query blocks of its query heads.
  pool.parallel_for_dynamic(HKV * nb, 1, [&](int64_t tb, int64_t te, int) {
    Scratch<T>& sc = scratch<T>(D);
    for (int64_t task = tb; task < te; ++task) {
      const int hk = (int)(task % HKV);
      const int64_t j0 = (task / HKV) * B;  // earlier key blocks are seen by more queries: first
      const int bk = (int)std::min<int64_t>(B, n - j0);
      const T* kb = k + j0 * ldk + (int64_t)hk * D;
      const T* vb = v + j0 * ldk + (int64_t)hk * D;
      transpose_block(kb, ldk, bk, D, sc.kt.data());
      transpose_block(vb, ldk, bk, D, sc.vt.data());
      T* dka = sc.acc.data();
      T* dva = sc.acc2.data();
      std::fill_n(dka, (size_t)bk * D, T(0));
      std::fill_n(dva, (size_t)bk * D, T(0));
      for (int g = 0; g < G; ++g) {
        const int h = hk * G + g;
        for (int64_t i0 = j0; i0 < n; i0 += B) {
          const int bq = (int)std::min<int64_t>(B, n - i0);
          if (!mask.any(i0, i0 + bq, j0, j0 + bk)) continue;
          const T* qb = q + i0 * ldq + (int64_t)h * D;
          const T* gb = d_o + i0 * ldq + (int64_t)h * D;
          block_scores(qb, ldq, bq, sc.kt.data(), bk, D, scale, mask, i0, j0, sc.s.data());
          block_probs_and_ds(sc.s.data(), sc.p.data(), lse + (int64_t)h * n + i0, delta.data() + (int64_t)h * n + i0,
                             gb, ldq, bq, sc.vt.data(), D);
          // dV_c += sum_r P[r][c] dO_r ; dK_c += sum_r dS[r][c] q_r (dS is 0 where P is).
          for (int c = 0; c < bk; ++c) {
            accumulate_rows(dva + c * D, sc.p.data() + c, B, gb, ldq, bq, D);
            accumulate_rows(dka + c * D, sc.s.data() + c, B, qb, ldq, bq, D);
          }
        }
      }
      for (int c = 0; c < bk; ++c) {
        T* dkr = dk + (j0 + c) * ldk + (int64_t)hk * D;
        T* dvr = dv + (j0 + c) * ldk + (int64_t)hk * D;
        const T* ka = dka + c * D;
        const T* va = dva + c * D;
        if (accumulate) {
          for (int dd = 0; dd < D; ++dd) dkr[dd] += scale * ka[dd], dvr[dd] += va[dd];
        } else {
          for (int dd = 0; dd < D; ++dd) dkr[dd] = scale * ka[dd], dvr[dd] = va[dd];
        }
      }
    }
  });

  // Pass 2: dQ per (query head, query block) over its visible key blocks.
  pool.parallel_for_dynamic(H * nb, 1, [&](int64_t tb, int64_t te, int) {
    Scratch<T>& sc = scratch<T>(D);
    for (int64_t task = tb; task < te; ++task) {
      const int h = (int)(task % H), hk = h / G;
      const int64_t i0 = (nb - 1 - task / H) * B;  // longest first
      const int bq = (int)std::min<int64_t>(B, n - i0);
      const T* qb = q + i0 * ldq + (int64_t)h * D;
      const T* gb = d_o + i0 * ldq + (int64_t)h * D;
      T* dqa = sc.acc.data();
      std::fill_n(dqa, (size_t)bq * D, T(0));
      for (int64_t j0 = 0; j0 < i0 + bq; j0 += B) {
        const int bk = (int)std::min<int64_t>(B, n - j0);
        if (!mask.any(i0, i0 + bq, j0, j0 + bk)) continue;
        const T* kb = k + j0 * ldk + (int64_t)hk * D;
        const T* vb = v + j0 * ldk + (int64_t)hk * D;
        transpose_block(kb, ldk, bk, D, sc.kt.data());
        transpose_block(vb, ldk, bk, D, sc.vt.data());
        block_scores(qb, ldq, bq, sc.kt.data(), bk, D, scale, mask, i0, j0, sc.s.data());
        block_probs_and_ds(sc.s.data(), sc.p.data(), lse + (int64_t)h * n + i0, delta.data() + (int64_t)h * n + i0, gb,
                           ldq, bq, sc.vt.data(), D);
        for (int r = 0; r < bq; ++r) accumulate_rows(dqa + r * D, sc.s.data() + r * B, 1, kb, ldk, bk, D);
      }
      for (int r = 0; r < bq; ++r) {
        T* dqr = dq + (i0 + r) * ldq + (int64_t)h * D;
        const T* ar = dqa + r * D;
        if (accumulate)
          for (int dd = 0; dd < D; ++dd) dqr[dd] += scale * ar[dd];
        else
          for (int dd = 0; dd < D; ++dd) dqr[dd] = scale * ar[dd];
      }
    }
  });
}

}  // namespace

template <typename T>
void flash_attention_forward(const T* q, const T* k, const T* v, T* o, T* lse, const AttentionDims& dims,
                             const AttentionMask& mask, ThreadPool& pool) {
  check_dims(dims);
  if (mask.kind == AttentionMask::Kind::Causal)
    forward_impl(q, k, v, o, lse, dims, CausalMask<int64_t>{}, pool);
  else
    forward_impl(q, k, v, o, lse, dims, StreamingMask<int64_t>{mask.window()}, pool);
}

template <typename T>
void flash_attention_backward(const T* q, const T* k, const T* v, const T* o, const T* lse, const T* d_o, T* dq,
                              T* dk, T* dv, bool accumulate, const AttentionDims& dims, const AttentionMask& mask,
                              ThreadPool& pool) {
  check_dims(dims);
  if (mask.kind == AttentionMask::Kind::Causal)
    backward_impl(q, k, v, o, lse, d_o, dq, dk, dv, accumulate, dims, CausalMask<int64_t>{}, pool);
  else
    backward_impl(q, k, v, o, lse, d_o, dq, dk, dv, accumulate, dims, StreamingMask<int64_t>{mask.window()}, pool);
}

template <typename T>
void attention_reference(const T* q, const T* k, const T* v, T* o, const AttentionDims& dm, const AttentionMask& mask) {
  check_dims(dm);
  const int H = dm.n_heads, D = dm.head_dim, G = dm.n_heads / dm.n_kv_heads;
  const int64_t ldq = (int64_t)H * D, ldk = (int64_t)dm.n_kv_heads * D;
  const StreamingMask<int64_t> lam{mask.window()};
  auto visible = [&](int64_t i, int64_t j) {
    return mask.kind == AttentionMask::Kind::Causal ? j <= i : lam.visible(i, j);
  };
  const double scale = 1.0 / std::sqrt((double)D);
  std::vector<double> w((size_t)dm.n);
  for (int h = 0; h < H; ++h)
    for (int64_t i = 0; i < dm.n; ++i) {
      const T* qi = q + i * ldq + (int64_t)h * D;
      double mx = -INFINITY;
      for (int64_t j = 0; j < dm.n; ++j) {
        if (!visible(i, j)) continue;
        const T* kj = k + j * ldk + (int64_t)(h / G) * D;
        double s = 0;
        for (int dd = 0; dd < D; ++dd) s += (double)qi[dd] * (double)kj[dd];
        w[j] = s * scale;
        mx = std::max(mx, w[j]);
      }
      double z = 0;
      for (int64_t j = 0; j < dm.n; ++j)
        if (visible(i, j)) z += (w[j] = std::exp(w[j] - mx));
      T* oi = o + i * ldq + (int64_t)h * D;
      for (int dd = 0; dd < D; ++dd) {
        double s = 0;
        for (int64_t j = 0; j < dm.n; ++j)
          if (visible(i, j)) s += w[j] * (double)v[j * ldk + (int64_t)(h / G) * D + dd];
        oi[dd] = (T)(s / z);
      }
    }
}

#define DUO_INSTANTIATE_ATTN(T)                                                                                      \
  template void flash_attention_forward<T>(const T*, const T*, const T*, T*, T*, const AttentionDims&,              \
                                           const AttentionMask&, ThreadPool&);                                     \
  template void flash_attention_backward<T>(const T*, const T*, const T*, const T*, const T*, const T*, T*, T*, T*, \
                                            bool, const AttentionDims&, const AttentionMask&, ThreadPool&);        \
  template void attention_reference<T>(const T*, const T*, const T*, T*, const AttentionDims&, const AttentionMask&);

DUO_INSTANTIATE_ATTN(float)
DUO_INSTANTIATE_ATTN(double)

}  // namespace duo
