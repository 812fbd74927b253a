// CPU attention throughput on the real models' head shapes: a pre-fill chunk of n queries over
// `cached` earlier positions (chunked pre-fill's later chunks), and decode (n = 1).
// Counter "GFLOP/s" counts 4 * d flops per visible (query head, key) pair (QK^T and PV).
//   ./duo_attention_bench [--benchmark_filter=...]; DUO_BENCH_THREADS (default 2), DUO_SIMD=avx2|avx512
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <random>
#include <vector>

#include "backend/cpu/attention.h"
#include "core/thread_pool.h"
#include "kv/kv_cache.h"

namespace {

int bench_threads() {
  const char* s = std::getenv("DUO_BENCH_THREADS");
  return s ? std::atoi(s) : 2;
}

duo::ThreadPool& pool() {
  static duo::ThreadPool p(bench_threads());
  return p;
}

void BM_Attention(benchmark::State& state, int n_heads, int n_kv, int d) {
  const int64_t n = state.range(0), cached = state.range(1);
  const bool streaming = state.range(2) != 0;
  const duo::StreamingWindow window{64, 256};
  const duo::HeadKind kind = streaming ? duo::HeadKind::Streaming : duo::HeadKind::Retrieval;
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const int64_t kv_row = (int64_t)n_kv * d;
  auto randn = [&](size_t m) {
    std::vector<float> v(m);
    for (auto& x : v) x = nd(rng);
    return v;
  };
  auto kc = randn((size_t)(cached * kv_row)), vc = randn((size_t)(cached * kv_row));
  auto kn = randn((size_t)(n * kv_row)), vn = randn((size_t)(n * kv_row));
  auto q = randn((size_t)(n * n_heads * d));
  std::vector<float> out(q.size());
  duo::KvCache cache(1, n_kv, d, duo::HeadPlan::uniform(1, n_kv, kind, window));
  for (int h = 0; h < n_kv; ++h) cache.head(0, h).append(kc.data() + h * d, vc.data() + h * d, cached, kv_row, 0);
  cache.advance(cached);
  std::vector<std::vector<duo::KvSegment>> segs(n_kv);
  std::vector<duo::HeadKind> kinds(n_kv, kind);
  for (int h = 0; h < n_kv; ++h) {
    cache.head(0, h).segments(cached, segs[h]);
    segs[h].push_back({kn.data() + h * d, vn.data() + h * d, cached, n, kv_row});
  }
  duo::AttentionArgs a;
  a.q = q.data();
  a.out = out.data();
  a.n = n;
  a.pos0 = cached;
  a.n_heads = n_heads;
  a.n_kv_heads = n_kv;
  a.head_dim = d;
  a.segments = &segs;
  a.kinds = &kinds;
  a.window = window;
  double pairs = 0;  // visible (query, key) pairs per head
  for (int64_t i = cached; i < cached + n; ++i) {
    const int64_t all = i + 1;
    pairs += streaming ? (double)std::min<int64_t>(all, window.sink + window.recent) : (double)all;
  }
  duo::attention(a, pool());  // warm-up
  for (auto _ : state) {
    duo::attention(a, pool());
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["GFLOP/s"] =
      benchmark::Counter(4.0 * d * n_heads * pairs * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

// Args: {queries, cached positions, streaming}.
BENCHMARK_CAPTURE(BM_Attention, smollm2_9x3x64, 9, 3, 64)
    ->Args({512, 0, 0})->Args({512, 3584, 0})->Args({512, 3584, 1})->Args({1, 512, 0})->Args({1, 4096, 0})
    ->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_Attention, qwen_12x2x128, 12, 2, 128)
    ->Args({512, 0, 0})->Args({512, 3584, 0})->Args({1, 4096, 0})
    ->Unit(benchmark::kMicrosecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
