#include "calibrate/dense_gemm.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "core/thread_pool.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define DUO_GEMM_AVX2 1
#endif

namespace duo {

namespace {

// Register tile (MR x NR), and the blocks one task packs and multiplies: MC rows of A by NC
// columns of B, KC deep at a time (A panel ~96 KB, B panel ~256 KB in float).
constexpr int MR = 6, NR = 16;
constexpr int64_t MC = 96, NC = 256, KC = 256;

// A[m0.., k0..] as ceil(mc/MR) strips, each kc x MR (k-major), zero-padded past mc.
template <typename T>
void pack_a(const T* A, int64_t lda, int64_t m0, int64_t mc, int64_t k0, int64_t kc, T* out) {
  for (int64_t s = 0; s < mc; s += MR) {
    const int rows = (int)std::min<int64_t>(MR, mc - s);
    T* dst = out + s * kc;
    for (int64_t k = 0; k < kc; ++k) {
      for (int r = 0; r < rows; ++r) dst[k * MR + r] = A[(m0 + s + r) * lda + k0 + k];
      for (int r = rows; r < MR; ++r) dst[k * MR + r] = T(0);
    }
  }
}

// op(B)[k0.., n0..] as ceil(nc/NR) strips, each kc x NR (k-major), zero-padded past nc.
template <typename T>
void pack_b(const T* B, int64_t ldb, bool trans_b, int64_t n0, int64_t nc, int64_t k0, int64_t kc, T* out) {
  for (int64_t s = 0; s < nc; s += NR) {
    const int cols = (int)std::min<int64_t>(NR, nc - s);
    T* dst = out + s * kc;
    if (trans_b) {
      for (int c = 0; c < cols; ++c) {
        const T* src = B + (n0 + s + c) * ldb + k0;
        for (int64_t k = 0; k < kc; ++k) dst[k * NR + c] = src[k];
      }
      for (int c = cols; c < NR; ++c)
        for (int64_t k = 0; k < kc; ++k) dst[k * NR + c] = T(0);
    } else {
      for (int64_t k = 0; k < kc; ++k) {
        const T* src = B + (k0 + k) * ldb + n0 + s;
        for (int c = 0; c < cols; ++c) dst[k * NR + c] = src[c];
        for (int c = cols; c < NR; ++c) dst[k * NR + c] = T(0);
      }
    }
  }
}

// acc (MR x NR, row-major) = sum_k a[k][r] * b[k][c]
template <typename T>
void micro_kernel(int64_t kc, const T* a, const T* b, T* acc) {
  T c[MR][NR] = {};
  for (int64_t k = 0; k < kc; ++k)
    for (int r = 0; r < MR; ++r) {
      const T ar = a[k * MR + r];
      for (int j = 0; j < NR; ++j) c[r][j] += ar * b[k * NR + j];
    }
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NR; ++j) acc[r * NR + j] = c[r][j];
}

#ifdef DUO_GEMM_AVX2
template <>
void micro_kernel<float>(int64_t kc, const float* a, const float* b, float* acc) {
  __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps(), c10 = _mm256_setzero_ps(),
         c11 = _mm256_setzero_ps(), c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps(),
         c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps(), c40 = _mm256_setzero_ps(),
         c41 = _mm256_setzero_ps(), c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
  for (int64_t k = 0; k < kc; ++k, a += MR, b += NR) {
    const __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
    __m256 x = _mm256_broadcast_ss(a + 0);
    c00 = _mm256_fmadd_ps(x, b0, c00), c01 = _mm256_fmadd_ps(x, b1, c01);
    x = _mm256_broadcast_ss(a + 1);
    c10 = _mm256_fmadd_ps(x, b0, c10), c11 = _mm256_fmadd_ps(x, b1, c11);
    x = _mm256_broadcast_ss(a + 2);
    c20 = _mm256_fmadd_ps(x, b0, c20), c21 = _mm256_fmadd_ps(x, b1, c21);
    x = _mm256_broadcast_ss(a + 3);
    c30 = _mm256_fmadd_ps(x, b0, c30), c31 = _mm256_fmadd_ps(x, b1, c31);
    x = _mm256_broadcast_ss(a + 4);
    c40 = _mm256_fmadd_ps(x, b0, c40), c41 = _mm256_fmadd_ps(x, b1, c41);
    x = _mm256_broadcast_ss(a + 5);
    c50 = _mm256_fmadd_ps(x, b0, c50), c51 = _mm256_fmadd_ps(x, b1, c51);
  }
  _mm256_storeu_ps(acc + 0 * NR, c00), _mm256_storeu_ps(acc + 0 * NR + 8, c01);
  _mm256_storeu_ps(acc + 1 * NR, c10), _mm256_storeu_ps(acc + 1 * NR + 8, c11);
  _mm256_storeu_ps(acc + 2 * NR, c20), _mm256_storeu_ps(acc + 2 * NR + 8, c21);
  _mm256_storeu_ps(acc + 3 * NR, c30), _mm256_storeu_ps(acc + 3 * NR + 8, c31);
  _mm256_storeu_ps(acc + 4 * NR, c40), _mm256_storeu_ps(acc + 4 * NR + 8, c41);
  _mm256_storeu_ps(acc + 5 * NR, c50), _mm256_storeu_ps(acc + 5 * NR + 8, c51);
}

// Double (finite-difference checks on real models): the 16 columns as two passes of 8, so the
// 12 accumulators of a pass fit the 16 AVX2 registers.
template <>
void micro_kernel<double>(int64_t kc, const double* a0, const double* b0, double* acc) {
  for (int half = 0; half < 2; ++half) {
    __m256d c[MR][2];
    for (int r = 0; r < MR; ++r) c[r][0] = _mm256_setzero_pd(), c[r][1] = _mm256_setzero_pd();
    const double* a = a0;
    const double* b = b0 + 8 * half;
    for (int64_t k = 0; k < kc; ++k, a += MR, b += NR) {
      const __m256d x0 = _mm256_loadu_pd(b), x1 = _mm256_loadu_pd(b + 4);
      for (int r = 0; r < MR; ++r) {
        const __m256d y = _mm256_broadcast_sd(a + r);
        c[r][0] = _mm256_fmadd_pd(y, x0, c[r][0]);
        c[r][1] = _mm256_fmadd_pd(y, x1, c[r][1]);
      }
    }
    for (int r = 0; r < MR; ++r) {
      _mm256_storeu_pd(acc + r * NR + 8 * half, c[r][0]);
      _mm256_storeu_pd(acc + r * NR + 8 * half + 4, c[r][1]);
    }
  }
}
#endif

// One output tile [m0, m0 + mc) x [n0, n0 + nc), all of K.
template <typename T>
void gemm_tile(const T* A, int64_t lda, const T* B, int64_t ldb, bool trans_b, T* C, int64_t ldc, int64_t m0,
               int64_t mc, int64_t n0, int64_t nc, int64_t K, bool accumulate) {
  static thread_local std::vector<T> ap, bp;
  ap.resize((size_t)(MC * KC));
  bp.resize((size_t)(NC * KC));
  alignas(32) T acc[MR * NR];
  for (int64_t k0 = 0; k0 < K; k0 += KC) {
    const int64_t kc = std::min(KC, K - k0);
    pack_a(A, lda, m0, mc, k0, kc, ap.data());
    pack_b(B, ldb, trans_b, n0, nc, k0, kc, bp.data());
    const bool add = accumulate || k0 > 0;
    for (int64_t js = 0; js < nc; js += NR) {
      const int cols = (int)std::min<int64_t>(NR, nc - js);
      for (int64_t is = 0; is < mc; is += MR) {
        const int rows = (int)std::min<int64_t>(MR, mc - is);
        micro_kernel<T>(kc, ap.data() + is * kc, bp.data() + js * kc, acc);
        for (int r = 0; r < rows; ++r) {
          T* c = C + (m0 + is + r) * ldc + n0 + js;
          const T* s = acc + r * NR;
          if (add)
            for (int j = 0; j < cols; ++j) c[j] += s[j];
          else
            for (int j = 0; j < cols; ++j) c[j] = s[j];
        }
      }
    }
  }
  if (K == 0 && !accumulate)
    for (int64_t r = 0; r < mc; ++r) std::fill_n(C + (m0 + r) * ldc + n0, nc, T(0));
}

}  // namespace

template <typename T>
void gemm(const T* A, int64_t lda, const T* B, int64_t ldb, bool trans_b, T* C, int64_t ldc, int64_t M, int64_t N,
          int64_t K, bool accumulate, ThreadPool& pool) {
  if (M <= 0 || N <= 0) return;
  const int64_t tm = (M + MC - 1) / MC, tn = (N + NC - 1) / NC;
  pool.parallel_for_dynamic(tm * tn, 1, [&](int64_t b, int64_t e, int) {
    for (int64_t t = b; t < e; ++t) {
      const int64_t m0 = (t / tn) * MC, n0 = (t % tn) * NC;
      gemm_tile(A, lda, B, ldb, trans_b, C, ldc, m0, std::min(MC, M - m0), n0, std::min(NC, N - n0), K, accumulate);
    }
  });
}

template <typename T>
void gemm_ref(const T* A, int64_t lda, const T* B, int64_t ldb, bool trans_b, T* C, int64_t ldc, int64_t M,
              int64_t N, int64_t K, bool accumulate) {
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double s = accumulate ? (double)C[m * ldc + n] : 0.0;
      for (int64_t k = 0; k < K; ++k) s += (double)A[m * lda + k] * (double)(trans_b ? B[n * ldb + k] : B[k * ldb + n]);
      C[m * ldc + n] = (T)s;
    }
}

template void gemm<float>(const float*, int64_t, const float*, int64_t, bool, float*, int64_t, int64_t, int64_t,
                          int64_t, bool, ThreadPool&);
template void gemm<double>(const double*, int64_t, const double*, int64_t, bool, double*, int64_t, int64_t, int64_t,
                           int64_t, bool, ThreadPool&);
template void gemm_ref<float>(const float*, int64_t, const float*, int64_t, bool, float*, int64_t, int64_t, int64_t,
                              int64_t, bool);
template void gemm_ref<double>(const double*, int64_t, const double*, int64_t, bool, double*, int64_t, int64_t,
                               int64_t, int64_t, bool);

}  // namespace duo
