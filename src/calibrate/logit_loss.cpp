#include "calibrate/logit_loss.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "core/thread_pool.h"

namespace duo {

namespace {

// log sum exp of a row, in double.
template <typename T>
double log_sum_exp(const T* z, int64_t n) {
  double m = -INFINITY;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, (double)z[i]);
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += std::exp((double)z[i] - m);
  return m + std::log(s);
}

// KL of one row and its gradient (already divided by the row count).
template <typename T>
double row_kl(const T* zf, const T* zm, int64_t V, double inv_rows, T* d) {
  const double lf = log_sum_exp(zf, V), lm = log_sum_exp(zm, V);
  // KL = sum p (log p - log q) = sum p (zf - zm) - lf + lm; each p, q in (0, 1].
  double kl = 0;
  for (int64_t i = 0; i < V; ++i) {
    const double p = std::exp((double)zf[i] - lf), q = std::exp((double)zm[i] - lm);
    kl += p * ((double)zf[i] - (double)zm[i]);
    d[i] = (T)((q - p) * inv_rows);
  }
  return kl - lf + lm;
}

}  // namespace

template <typename T>
double logit_kl(const T* z_full, const T* z_mix, int64_t rows, int64_t vocab, T* d_mix, ThreadPool* pool) {
  DUO_CHECK(rows > 0 && vocab > 0, "logit distillation over {} rows of {} logits", rows, vocab);
  std::vector<double> per_row((size_t)rows);
  const double inv = 1.0 / (double)rows;
  auto run = [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r)
      per_row[(size_t)r] = row_kl(z_full + r * vocab, z_mix + r * vocab, vocab, inv, d_mix + r * vocab);
  };
  if (pool)
    pool->parallel_for_dynamic(rows, 1, [&](int64_t b, int64_t e, int) { run(b, e); });
  else
    run(0, rows);
  double total = 0;  // in row order: the same bits for any thread count
  for (double x : per_row) total += x;
  return total * inv;
}

template double logit_kl<float>(const float*, const float*, int64_t, int64_t, float*, ThreadPool*);
template double logit_kl<double>(const double*, const double*, int64_t, int64_t, double*, ThreadPool*);

}  // namespace duo
