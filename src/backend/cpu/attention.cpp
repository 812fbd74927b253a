#include "backend/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>

#include "backend/cpu/attention_internal.h"
#include "backend/cpu/ops.h"
#include "backend/cpu/simd_level.h"
#include "core/error.h"
#include "core/thread_pool.h"


namespace duo {

namespace {

using attn::KeyBlock;
using attn::kKeyBlock;
using attn::kMaxHeadDim;
using attn::kMaxRows;
using attn::kNegInf;
using attn::RowState;

void check_args(const AttentionArgs& a) {
  DUO_CHECK(a.n_heads % a.n_kv_heads == 0 && a.head_dim > 0 && a.head_dim <= kMaxHeadDim && a.head_dim % 8 == 0,
            "attention: unsupported shape (heads {}, kv heads {}, head dim {})", a.n_heads, a.n_kv_heads, a.head_dim);
  DUO_CHECK(a.segments && (int)a.segments->size() == a.n_kv_heads && a.kinds && (int)a.kinds->size() == a.n_kv_heads,
            "attention: segments/kinds must be given for each of the {} KV heads", a.n_kv_heads);
}

void make_blocks(const std::vector<KvSegment>& segs, std::vector<KeyBlock>& out) {
  out.clear();
  for (const auto& s : segs)
    for (int64_t o = 0; o < s.n; o += kKeyBlock) {
      const int n = (int)std::min<int64_t>(kKeyBlock, s.n - o);
      if (s.type == KvType::F32)
        out.push_back({s.k + o * s.stride, s.v + o * s.stride, s.pos0 + o, n, s.stride});
      else if (s.type == KvType::F16 || s.type == KvType::BF16)
        out.push_back({nullptr, nullptr, s.pos0 + o, n, s.stride, &s, o, s.type,
                       static_cast<const uint16_t*>(s.kx) + o * s.stride,
                       static_cast<const uint16_t*>(s.vx) + o * s.stride});
      else
        out.push_back({nullptr, nullptr, s.pos0 + o, n, 0, &s, o, s.type});
    }
}



}  // namespace

void attention_ref(const AttentionArgs& a) {
  check_args(a);
  const int d = a.head_dim, g = a.n_heads / a.n_kv_heads;
  const double scale = 1.0 / std::sqrt((double)d);
  // Every segment's rows as floats (segment_rows decodes 16-bit and quantized rows).
  std::vector<std::vector<std::vector<float>>> kf(a.n_kv_heads), vf(a.n_kv_heads);
  for (int h = 0; h < a.n_kv_heads; ++h)
    for (const auto& s : (*a.segments)[h]) {
      kf[h].emplace_back((size_t)(s.n * d)), vf[h].emplace_back((size_t)(s.n * d));
      segment_rows(s, 0, s.n, d, kf[h].back().data(), vf[h].back().data());
    }
  std::vector<double> scores, acc(d);
  for (int64_t t = 0; t < a.n; ++t) {
    const int64_t i = a.pos0 + t;
    for (int h = 0; h < a.n_heads; ++h) {
      const int kvh = h / g;
      const HeadKind kind = (*a.kinds)[kvh];
      const float* q = a.q + (t * a.n_heads + h) * d;
      scores.clear();
      std::vector<const float*> vrows;
      const auto& segs = (*a.segments)[kvh];
      for (size_t si = 0; si < segs.size(); ++si)
        for (int64_t r = 0; r < segs[si].n; ++r) {
          if (!visible(kind, a.window, i, segs[si].pos0 + r)) continue;
          const float* kr = kf[kvh][si].data() + r * d;
          double dot = 0.0;
          for (int c = 0; c < d; ++c) dot += (double)q[c] * kr[c];
          scores.push_back(dot * scale);
          vrows.push_back(vf[kvh][si].data() + r * d);
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

namespace {

// One attention call made ready: its key blocks, and its queries cut into tasks of up to
// q_per_task positions x the g query heads of one KV head.
struct Prepared {
  explicit Prepared(const AttentionArgs& args) : a(args) {
    check_args(a);
    d = a.head_dim;
    g = a.n_heads / a.n_kv_heads;
    DUO_CHECK(g <= kMaxRows, "attention: {} query heads per KV head is more than supported ({})", g, kMaxRows);
    scale = 1.0f / std::sqrt((float)d);
    blocks.resize(a.n_kv_heads);
    for (int h = 0; h < a.n_kv_heads; ++h) {
      make_blocks((*a.segments)[h], blocks[h]);
      for (const KeyBlock& b : blocks[h]) in_place = in_place && attn::reads_in_place(b);
    }
    q_per_task = std::max(1, kMaxRows / g);
    q_tasks = (a.n + q_per_task - 1) / q_per_task;
    tasks = q_tasks * a.n_kv_heads;
  }
  // Pre-fill: enough tasks to keep every thread busy. Otherwise (decode, short chunks) each
  // head's keys are split across threads.
  bool split_keys(const ThreadPool& pool) const { return !(tasks >= 2 * pool.size() || pool.size() == 1); }
  void task_rows(int64_t task, int& kvh, int64_t& t0, int64_t& t1) const {
    kvh = (int)(task % a.n_kv_heads);
    t0 = (task / a.n_kv_heads) * q_per_task;
    t1 = std::min(a.n, t0 + q_per_task);
  }
  void run_rows(int kvh, int64_t t0, int64_t t1, size_t kb0, size_t kb1, RowState& st, int& rows) const {
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
#if DUO_SIMD_X86
    if (in_place && use_avx512() && attn::decode_kernel_fits(d)) {
      attn::attend_rows_decode_avx512(blocks[kvh].data(), kb0, kb1, rows, qrow, pos, (*a.kinds)[kvh], a.window, d,
                                      scale, st.m, st.l, st.o);
      return;
    }
#endif
#if DUO_SIMD_X86
    if (simd_level() >= SimdLevel::Avx2) {
      attn::avx2::attend_blocks(blocks[kvh].data(), kb0, kb1, rows, qrow, pos, (*a.kinds)[kvh], a.window, d, scale, st);
      return;
    }
#endif
    attn::scalar::attend_blocks(blocks[kvh].data(), kb0, kb1, rows, qrow, pos, (*a.kinds)[kvh], a.window, d, scale, st);
  }
  void write_out(int kvh, int64_t t0, int64_t t1, const RowState& st) const {
    int r = 0;
    for (int64_t t = t0; t < t1; ++t)
      for (int j = 0; j < g; ++j, ++r) {
        float* o = a.out + (t * a.n_heads + kvh * g + j) * d;
        const float inv = st.l[r] > 0.0f ? 1.0f / st.l[r] : 0.0f;
        for (int c = 0; c < d; ++c) o[c] = st.o[r * d + c] * inv;
      }
  }

  const AttentionArgs& a;
  int d = 0, g = 0, q_per_task = 0;
  float scale = 0.0f;
  int64_t q_tasks = 0, tasks = 0;
  bool in_place = true;  // every block float or 16-bit, read in place (the AVX-512 kernels need this)
  std::vector<std::vector<KeyBlock>> blocks;
};

void run_prefill(const Prepared& p, ThreadPool& pool) {
  // Later query blocks see more keys (causal), so tasks are handed out dynamically, longest
  // first.
  [[maybe_unused]] const bool lanes = DUO_SIMD_X86 && use_avx512() && p.in_place;
  pool.parallel_for_dynamic(p.tasks, 1, [&](int64_t b, int64_t e, int) {
    static thread_local RowState st;
    for (int64_t task = b; task < e; ++task) {
      const int64_t qt = p.q_tasks - 1 - task / p.a.n_kv_heads;
      const int kvh = (int)(task % p.a.n_kv_heads);
      const int64_t t0 = qt * p.q_per_task, t1 = std::min(p.a.n, t0 + p.q_per_task);
#if DUO_SIMD_X86
      // With AVX-512, tasks of at least 16 rows go to the query-lanes kernel.
      if (lanes && (t1 - t0) * p.g >= 16) {
        const float* qrow[kMaxRows];
        float* orow[kMaxRows];
        int64_t pos[kMaxRows];
        int rows = 0;
        for (int64_t t = t0; t < t1; ++t)
          for (int j = 0; j < p.g; ++j, ++rows) {
            qrow[rows] = p.a.q + (t * p.a.n_heads + kvh * p.g + j) * p.d;
            orow[rows] = p.a.out + (t * p.a.n_heads + kvh * p.g + j) * p.d;
            pos[rows] = p.a.pos0 + t;
          }
        attn::attend_rows_avx512(p.blocks[kvh].data(), p.blocks[kvh].size(), rows, qrow, pos, (*p.a.kinds)[kvh],
                                 p.a.window, p.d, p.scale, orow);
        continue;
      }
#endif
      int rows;
      p.run_rows(kvh, t0, t1, 0, p.blocks[kvh].size(), st, rows);
      p.write_out(kvh, t0, t1, st);
    }
  });
}

// Split each head's keys across threads, then merge the partial softmax states
// (flash-decoding). Several calls share one parallel region; each call's partial states and
// their merge order are those it has alone, so the results do not depend on the company.
void run_split(const std::vector<const Prepared*>& ps, ThreadPool& pool) {
  const int splits = std::max(1, (int)std::min<int64_t>(4 * pool.size(), 64));
  struct Partial {
    RowState st;
    int rows = 0;
  };
  // A call whose heads have at most `splits` key blocks takes one part per block: the same
  // partition as `splits` parts (those put each block alone and leave the rest empty, and
  // empty parts drop out of the merge exactly), without the empty tasks. A batched decode step
  // of many short sequences then runs a few tasks per sequence, not `splits`.
  std::vector<int> call_splits(ps.size());
  std::vector<int64_t> first_part(ps.size() + 1, 0);  // parts of call i: [first_part[i], first_part[i + 1])
  for (size_t i = 0; i < ps.size(); ++i) {
    size_t most = 1;
    for (const auto& hb : ps[i]->blocks) most = std::max(most, hb.size());
    call_splits[i] = (int)std::min<size_t>((size_t)splits, most);
    first_part[i + 1] = first_part[i] + ps[i]->tasks * call_splits[i];
  }
  // Grow-only and owned by the calling thread: decode calls this once per layer per token.
  // (A reference, so worker threads use the caller's buffer, not their own thread_local.)
  static thread_local std::vector<Partial> parts_buffer;
  if (parts_buffer.size() < (size_t)first_part.back()) parts_buffer.resize((size_t)first_part.back());
  std::vector<Partial>& parts = parts_buffer;
  pool.parallel_for_dynamic(first_part.back(), 1, [&](int64_t b, int64_t e, int) {
    size_t i = (size_t)(std::upper_bound(first_part.begin(), first_part.end(), b) - first_part.begin()) - 1;
    for (int64_t pi = b; pi < e; ++pi) {
      while (pi >= first_part[i + 1]) ++i;
      const Prepared& p = *ps[i];
      const int64_t local = pi - first_part[i];
      const int ns = call_splits[i], sp = (int)(local % ns);
      int kvh;
      int64_t t0, t1;
      p.task_rows(local / ns, kvh, t0, t1);
      const size_t nb = p.blocks[kvh].size();
      const size_t kb0 = nb * sp / ns, kb1 = nb * (sp + 1) / ns;
      p.run_rows(kvh, t0, t1, kb0, kb1, parts[pi].st, parts[pi].rows);
    }
  });
  // Merge each task's parts in order and write its rows: tasks in parallel (each merge is the
  // same serial fold whichever thread runs it).
  std::vector<int64_t> first_task(ps.size() + 1, 0);
  for (size_t i = 0; i < ps.size(); ++i) first_task[i + 1] = first_task[i] + ps[i]->tasks;
  pool.parallel_for(first_task.back(), [&](int64_t b, int64_t e, int) {
    size_t i = (size_t)(std::upper_bound(first_task.begin(), first_task.end(), b) - first_task.begin()) - 1;
    for (int64_t gt = b; gt < e; ++gt) {
      while (gt >= first_task[i + 1]) ++i;
      const Prepared& p = *ps[i];
      const int64_t task = gt - first_task[i];
      const int ns = call_splits[i];
      int kvh;
      int64_t t0, t1;
      p.task_rows(task, kvh, t0, t1);
      const size_t base = (size_t)(first_part[i] + task * ns);
      RowState& acc = parts[base].st;
      const int rows = parts[base].rows;
      for (int sp = 1; sp < ns; ++sp) {
        const RowState& q = parts[base + sp].st;
        for (int r = 0; r < rows; ++r) {
          if (q.m[r] == kNegInf) continue;
          const float m = std::max(acc.m[r], q.m[r]);
          const float a1 = acc.m[r] == kNegInf ? 0.0f : std::exp(acc.m[r] - m), a2 = std::exp(q.m[r] - m);
          for (int c = 0; c < p.d; ++c) acc.o[r * p.d + c] = acc.o[r * p.d + c] * a1 + q.o[r * p.d + c] * a2;
          acc.l[r] = acc.l[r] * a1 + q.l[r] * a2;
          acc.m[r] = m;
        }
      }
      p.write_out(kvh, t0, t1, acc);
    }
  });
}

}  // namespace

void attention(const AttentionArgs& a, ThreadPool& pool) {
  const Prepared p(a);
  if (p.split_keys(pool))
    run_split({&p}, pool);
  else
    run_prefill(p, pool);
}

namespace {

// Calls whose tasks each take all of their head's keys (no split, no merge), in one parallel
// region: a batched step of many decoders has tasks enough for every thread without splitting.
void run_whole(const std::vector<const Prepared*>& ps, ThreadPool& pool) {
  std::vector<int64_t> first_task(ps.size() + 1, 0);
  for (size_t i = 0; i < ps.size(); ++i) first_task[i + 1] = first_task[i] + ps[i]->tasks;
  pool.parallel_for_dynamic(first_task.back(), 1, [&](int64_t b, int64_t e, int) {
    static thread_local RowState st;
    size_t i = (size_t)(std::upper_bound(first_task.begin(), first_task.end(), b) - first_task.begin()) - 1;
    for (int64_t gt = b; gt < e; ++gt) {
      while (gt >= first_task[i + 1]) ++i;
      const Prepared& p = *ps[i];
      int kvh, rows;
      int64_t t0, t1;
      p.task_rows(gt - first_task[i], kvh, t0, t1);
      p.run_rows(kvh, t0, t1, 0, p.blocks[kvh].size(), st, rows);
      p.write_out(kvh, t0, t1, st);
    }
  });
}

}  // namespace

void attention_many(const std::vector<AttentionArgs>& calls, ThreadPool& pool) {
  std::vector<std::unique_ptr<Prepared>> prepared;
  std::vector<const Prepared*> split, decoders;
  for (const AttentionArgs& a : calls) {
    prepared.push_back(std::make_unique<Prepared>(a));
    if (!prepared.back()->split_keys(pool))
      run_prefill(*prepared.back(), pool);
    else if (a.n == 1)
      decoders.push_back(prepared.back().get());
    else
      split.push_back(prepared.back().get());
  }
  // Up to kExactDecodeCalls decoders split their keys as attention() does alone (same bits);
  // more each take whole heads (one online softmax over all keys instead of merged parts:
  // equal within rounding), saving the partial states and the merge.
  if (decoders.size() > kExactDecodeCalls)
    run_whole(decoders, pool);
  else
    split.insert(split.end(), decoders.begin(), decoders.end());
  if (!split.empty()) run_split(split, pool);
}

}  // namespace duo
