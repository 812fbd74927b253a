#include "backend/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "backend/cpu/attention_internal.h"
#include "backend/cpu/ops.h"
#include "backend/cpu/simd_avx512.h"
#include "backend/cpu/simd_level.h"
#include "core/error.h"
#include "core/thread_pool.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define DUO_ATTN_AVX2 1
#endif

namespace duo {

namespace {

using attn::KeyBlock;
using attn::kKeyBlock;
using attn::kMaxHeadDim;
using attn::kMaxRows;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

bool visible(HeadKind kind, const StreamingWindow& w, int64_t i, int64_t j) {
  if (j > i) return false;
  return kind == HeadKind::Retrieval || j < w.sink || j > i - w.recent;
}

void check_args(const AttentionArgs& a) {
  DUO_CHECK(a.n_heads % a.n_kv_heads == 0 && a.head_dim > 0 && a.head_dim <= kMaxHeadDim && a.head_dim % 8 == 0,
            "attention: unsupported shape (heads {}, kv heads {}, head dim {})", a.n_heads, a.n_kv_heads, a.head_dim);
  DUO_CHECK(a.segments && (int)a.segments->size() == a.n_kv_heads && a.kinds && (int)a.kinds->size() == a.n_kv_heads,
            "attention: segments/kinds must be given for each of the {} KV heads", a.n_kv_heads);
}

void make_blocks(const std::vector<KvSegment>& segs, std::vector<KeyBlock>& out) {
  out.clear();
  for (const auto& s : segs)
    for (int64_t o = 0; o < s.n; o += kKeyBlock)
      out.push_back({s.k + o * s.stride, s.v + o * s.stride, s.pos0 + o, (int)std::min<int64_t>(kKeyBlock, s.n - o),
                     s.stride});
}

// Online-softmax state of `rows` query rows.
struct RowState {
  float m[kMaxRows], l[kMaxRows];
  alignas(32) float o[kMaxRows * kMaxHeadDim];
  void reset(int rows, int d) {
    for (int r = 0; r < rows; ++r) m[r] = kNegInf, l[r] = 0.0f;
    std::memset(o, 0, sizeof(float) * rows * d);
  }
};

// s[0..kPad) = scale * (q . key_j) for the transposed key block kt (d x kKeyBlock).
inline void row_scores(const float* q, const float* kt, int d, float scale, float* s) {
#ifdef DUO_ATTN_AVX2
  __m256 acc[8];
  for (int j = 0; j < 8; ++j) acc[j] = _mm256_setzero_ps();
  for (int c = 0; c < d; ++c) {
    const __m256 qc = _mm256_broadcast_ss(q + c);
    const float* kr = kt + c * kKeyBlock;
    for (int j = 0; j < 8; ++j) acc[j] = _mm256_fmadd_ps(qc, _mm256_load_ps(kr + 8 * j), acc[j]);
  }
  const __m256 sc = _mm256_set1_ps(scale);
  for (int j = 0; j < 8; ++j) _mm256_storeu_ps(s + 8 * j, _mm256_mul_ps(acc[j], sc));
#else
  for (int j = 0; j < kKeyBlock; ++j) s[j] = 0.0f;
  for (int c = 0; c < d; ++c)
    for (int j = 0; j < kKeyBlock; ++j) s[j] += q[c] * kt[c * kKeyBlock + j];
  for (int j = 0; j < kKeyBlock; ++j) s[j] *= scale;
#endif
}

// o[0..d) = o * alpha + sum_j p[j] * v_j
inline void row_pv(float* o, float alpha, const float* p, const KeyBlock& b, int d) {
#ifdef DUO_ATTN_AVX2
  const __m256 al = _mm256_set1_ps(alpha);
  for (int c0 = 0; c0 < d; c0 += 64) {
    const int w = std::min(64, d - c0) / 8;
    __m256 acc[8];
    for (int i = 0; i < w; ++i) acc[i] = _mm256_mul_ps(_mm256_load_ps(o + c0 + 8 * i), al);
    for (int j = 0; j < b.n; ++j) {
      if (p[j] == 0.0f) continue;
      const __m256 pj = _mm256_set1_ps(p[j]);
      const float* vr = b.v + j * b.stride + c0;
      for (int i = 0; i < w; ++i) acc[i] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vr + 8 * i), acc[i]);
    }
    for (int i = 0; i < w; ++i) _mm256_store_ps(o + c0 + 8 * i, acc[i]);
  }
#else
  for (int c = 0; c < d; ++c) o[c] *= alpha;
  for (int j = 0; j < b.n; ++j)
    for (int c = 0; c < d; ++c) o[c] += p[j] * b.v[j * b.stride + c];
#endif
}

// Processes key blocks [kb0, kb1) for `rows` query rows into state st.
// Row r is query position pos[r] of query vector qrow[r].
void attend_blocks(const std::vector<KeyBlock>& blocks, size_t kb0, size_t kb1, int rows, const float* const* qrow,
                   const int64_t* pos, HeadKind kind, const StreamingWindow& w, int d, float scale, RowState& st) {
  alignas(32) float kt[kMaxHeadDim * kKeyBlock];
  alignas(32) float s[kKeyBlock];
  int64_t pmin = pos[0], pmax = pos[0];
  for (int r = 1; r < rows; ++r) pmin = std::min(pmin, pos[r]), pmax = std::max(pmax, pos[r]);
  for (size_t bi = kb0; bi < kb1; ++bi) {
    const KeyBlock& b = blocks[bi];
    if (b.pos0 > pmax) continue;  // entirely in the future of every row
    if (kind == HeadKind::Streaming) {
      // Entirely outside both the sink and every row's recent window?
      const int64_t last = b.pos0 + b.n - 1;
      if (b.pos0 >= w.sink && last <= pmin - w.recent) continue;
    }
    // Transpose the key block so a row's scores are a sequence of broadcast-FMAs.
    for (int j = 0; j < b.n; ++j) {
      const float* kr = b.k + j * b.stride;
      for (int c = 0; c < d; ++c) kt[c * kKeyBlock + j] = kr[c];
    }
    for (int j = b.n; j < kKeyBlock; ++j)
      for (int c = 0; c < d; ++c) kt[c * kKeyBlock + j] = 0.0f;
    const bool all_visible_full = kind == HeadKind::Retrieval && b.pos0 + b.n - 1 <= pmin;
    for (int r = 0; r < rows; ++r) {
      row_scores(qrow[r], kt, d, scale, s);
      float mx = kNegInf;
      if (all_visible_full) {
        for (int j = 0; j < b.n; ++j) mx = std::max(mx, s[j]);
      } else {
        for (int j = 0; j < b.n; ++j) {
          if (!visible(kind, w, pos[r], b.pos0 + j)) s[j] = kNegInf;
          mx = std::max(mx, s[j]);
        }
      }
      if (mx == kNegInf) continue;  // nothing visible to this row in this block
      const float m_new = std::max(st.m[r], mx);
      const float alpha = st.m[r] == kNegInf ? 0.0f : std::exp(st.m[r] - m_new);
      for (int j = 0; j < b.n; ++j) s[j] -= m_new;  // -inf stays -inf, exp gives 0
      exp_inplace(s, b.n);
      float sum = 0.0f;
      for (int j = 0; j < b.n; ++j) sum += s[j];
      st.l[r] = st.l[r] * alpha + sum;
      st.m[r] = m_new;
      row_pv(st.o + r * d, alpha, s, b, d);
    }
  }
}

}  // namespace

void attention_ref(const AttentionArgs& a) {
  check_args(a);
  const int d = a.head_dim, g = a.n_heads / a.n_kv_heads;
  const double scale = 1.0 / std::sqrt((double)d);
  std::vector<double> scores, acc(d);
  for (int64_t t = 0; t < a.n; ++t) {
    const int64_t i = a.pos0 + t;
    for (int h = 0; h < a.n_heads; ++h) {
      const int kvh = h / g;
      const HeadKind kind = (*a.kinds)[kvh];
      const float* q = a.q + (t * a.n_heads + h) * d;
      scores.clear();
      std::vector<const float*> vrows;
      for (const auto& s : (*a.segments)[kvh])
        for (int64_t r = 0; r < s.n; ++r) {
          if (!visible(kind, a.window, i, s.pos0 + r)) continue;
          double dot = 0.0;
          for (int c = 0; c < d; ++c) dot += (double)q[c] * s.k[r * s.stride + c];
          scores.push_back(dot * scale);
          vrows.push_back(s.v + r * s.stride);
        }
      float* o = a.out + (t * a.n_heads + h) * d;
      if (scores.empty()) {
        std::fill(o, o + d, 0.0f);
        continue;
      }
      const double mx = *std::max_element(scores.begin(), scores.end());
      double sum = 0.0;
      std::fill(acc.begin(), acc.end(), 0.0);
      for (size_t j = 0; j < scores.size(); ++j) {
        const double p = std::exp(scores[j] - mx);
        sum += p;
        for (int c = 0; c < d; ++c) acc[c] += p * vrows[j][c];
      }
      for (int c = 0; c < d; ++c) o[c] = (float)(acc[c] / sum);
    }
  }
}

void attention(const AttentionArgs& a, ThreadPool& pool) {
  check_args(a);
  const int d = a.head_dim, g = a.n_heads / a.n_kv_heads;
  const float scale = 1.0f / std::sqrt((float)d);
  std::vector<std::vector<KeyBlock>> blocks(a.n_kv_heads);
  for (int h = 0; h < a.n_kv_heads; ++h) make_blocks((*a.segments)[h], blocks[h]);

  // Rows of a task: up to q_per_task positions x the g query heads of one KV head.
  const int q_per_task = std::max(1, kMaxRows / g);
  DUO_CHECK(g <= kMaxRows, "attention: {} query heads per KV head is more than supported ({})", g, kMaxRows);
  const int64_t q_tasks = (a.n + q_per_task - 1) / q_per_task;

  auto run_rows = [&](int kvh, int64_t t0, int64_t t1, size_t kb0, size_t kb1, RowState& st, int& rows) {
    const float* qrow[kMaxRows];
    int64_t pos[kMaxRows];
    rows = 0;
    for (int64_t t = t0; t < t1; ++t)
      for (int j = 0; j < g; ++j) {
        qrow[rows] = a.q + (t * a.n_heads + kvh * g + j) * d;
        pos[rows] = a.pos0 + t;
        ++rows;
      }
    st.reset(rows, d);
#if DUO_HAVE_AVX512
    if (use_avx512() && attn::decode_kernel_fits(d)) {
      attn::attend_rows_decode_avx512(blocks[kvh].data(), kb0, kb1, rows, qrow, pos, (*a.kinds)[kvh], a.window, d,
                                      scale, st.m, st.l, st.o);
      return;
    }
#endif
    attend_blocks(blocks[kvh], kb0, kb1, rows, qrow, pos, (*a.kinds)[kvh], a.window, d, scale, st);
  };
  auto write_out = [&](int kvh, int64_t t0, int64_t t1, const RowState& st) {
    int r = 0;
    for (int64_t t = t0; t < t1; ++t)
      for (int j = 0; j < g; ++j, ++r) {
        float* o = a.out + (t * a.n_heads + kvh * g + j) * d;
        const float inv = st.l[r] > 0.0f ? 1.0f / st.l[r] : 0.0f;
        for (int c = 0; c < d; ++c) o[c] = st.o[r * d + c] * inv;
      }
  };

  const int64_t tasks = q_tasks * a.n_kv_heads;
  if (tasks >= 2 * pool.size() || pool.size() == 1) {
    // Pre-fill: enough (KV head, query block) tasks to keep every thread busy. Later query
    // blocks see more keys (causal), so tasks are handed out dynamically, longest first.
    // With AVX-512, tasks of at least 16 rows go to the query-lanes kernel.
    [[maybe_unused]] const bool lanes = DUO_HAVE_AVX512 && use_avx512();
    pool.parallel_for_dynamic(tasks, 1, [&](int64_t b, int64_t e, int) {
      static thread_local RowState st;
      for (int64_t task = b; task < e; ++task) {
        const int64_t qt = q_tasks - 1 - task / a.n_kv_heads;
        const int kvh = (int)(task % a.n_kv_heads);
        const int64_t t0 = qt * q_per_task, t1 = std::min(a.n, t0 + q_per_task);
#if DUO_HAVE_AVX512
        if (lanes && (t1 - t0) * g >= 16) {
          const float* qrow[kMaxRows];
          float* orow[kMaxRows];
          int64_t pos[kMaxRows];
          int rows = 0;
          for (int64_t t = t0; t < t1; ++t)
            for (int j = 0; j < g; ++j, ++rows) {
              qrow[rows] = a.q + (t * a.n_heads + kvh * g + j) * d;
              orow[rows] = a.out + (t * a.n_heads + kvh * g + j) * d;
              pos[rows] = a.pos0 + t;
            }
          attn::attend_rows_avx512(blocks[kvh].data(), blocks[kvh].size(), rows, qrow, pos, (*a.kinds)[kvh],
                                   a.window, d, scale, orow);
          continue;
        }
#endif
        int rows;
        run_rows(kvh, t0, t1, 0, blocks[kvh].size(), st, rows);
        write_out(kvh, t0, t1, st);
      }
    });
    return;
  }

  // Decode / short chunks: split each head's keys across threads, then merge the partial
  // softmax states (flash-decoding).
  const int splits = std::max(1, (int)std::min<int64_t>(4 * pool.size(), 64));
  struct Partial {
    RowState st;
    int rows = 0;
  };
  // Grow-only and owned by the calling thread: decode calls this once per layer per token.
  // (A reference, so worker threads use the caller's buffer, not their own thread_local.)
  static thread_local std::vector<Partial> parts_buffer;
  if (parts_buffer.size() < (size_t)tasks * splits) parts_buffer.resize((size_t)tasks * splits);
  std::vector<Partial>& parts = parts_buffer;
  pool.parallel_for_dynamic(tasks * splits, 1, [&](int64_t b, int64_t e, int) {
    for (int64_t pi = b; pi < e; ++pi) {
      const int64_t task = pi / splits;
      const int sp = (int)(pi % splits);
      const int kvh = (int)(task % a.n_kv_heads);
      const int64_t qt = task / a.n_kv_heads;
      const int64_t t0 = qt * q_per_task, t1 = std::min(a.n, t0 + q_per_task);
      const size_t nb = blocks[kvh].size();
      const size_t kb0 = nb * sp / splits, kb1 = nb * (sp + 1) / splits;
      run_rows(kvh, t0, t1, kb0, kb1, parts[pi].st, parts[pi].rows);
    }
  });
  for (int64_t task = 0; task < tasks; ++task) {
    const int kvh = (int)(task % a.n_kv_heads);
    const int64_t qt = task / a.n_kv_heads;
    const int64_t t0 = qt * q_per_task, t1 = std::min(a.n, t0 + q_per_task);
    RowState& acc = parts[(size_t)task * splits].st;
    const int rows = parts[(size_t)task * splits].rows;
    for (int sp = 1; sp < splits; ++sp) {
      const RowState& p = parts[(size_t)task * splits + sp].st;
      for (int r = 0; r < rows; ++r) {
        if (p.m[r] == kNegInf) continue;
        const float m = std::max(acc.m[r], p.m[r]);
        const float a1 = acc.m[r] == kNegInf ? 0.0f : std::exp(acc.m[r] - m), a2 = std::exp(p.m[r] - m);
        for (int c = 0; c < d; ++c) acc.o[r * d + c] = acc.o[r * d + c] * a1 + p.o[r * d + c] * a2;
        acc.l[r] = acc.l[r] * a1 + p.l[r] * a2;
        acc.m[r] = m;
      }
    }
    write_out(kvh, t0, t1, acc);
  }
}

}  // namespace duo
