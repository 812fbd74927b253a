// CPU attention throughput on the real models' head shapes: a pre-fill chunk of n queries over
// `cached` earlier positions (chunked pre-fill's later chunks), and decode (n = 1).
// Counter "GFLOP/s" counts 4 * d flops per visible (query head, key) pair (QK^T and PV).
//   ./duo_attention_bench [--benchmark_filter=...]; DUO_BENCH_THREADS (default 2), DUO_SIMD=avx2|avx512
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <memory>
#include <random>
#include <vector>

#include "backend/cpu/attention.h"
#include "core/thread_pool.h"
#include "backend/cpu/kv_cache.h"

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

// A batched decode step as `duo serve` runs it: `seqs` sequences, one query each, over their
// own caches of `cached` positions, for 30 layers (SmolLM2's), attention_many per layer. The
// caches (seqs x 30 x cached x 1.5 KB) are far larger than the CPU caches, so this measures
// attention reading K/V from DRAM. Time is per step (all layers). Third argument: the cache's
// storage (0 f32, 1 f16, 2 bf16; 16-bit rows are half the bytes).
void BM_DecodeStep(benchmark::State& state) {
  const int n_heads = 9, n_kv = 3, d = 64, layers = 30;
  const int64_t seqs = state.range(0), cached = state.range(1);
  const duo::KvType type =
      state.range(2) == 1 ? duo::KvType::F16 : state.range(2) == 2 ? duo::KvType::BF16 : duo::KvType::F32;
  state.SetLabel(duo::to_string(type));
  const int64_t kv_row = (int64_t)n_kv * d;
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> kc((size_t)(cached * kv_row)), q((size_t)(seqs * n_heads * d)), kn((size_t)(seqs * kv_row));
  for (auto& x : kc) x = nd(rng);
  for (auto& x : q) x = nd(rng);
  for (auto& x : kn) x = nd(rng);
  std::vector<float> out(q.size());
  const duo::StreamingWindow window{64, 256};
  std::vector<std::unique_ptr<duo::KvCache>> caches;
  for (int64_t s = 0; s < seqs; ++s) {
    duo::HeadPlan plan = duo::HeadPlan::uniform(layers, n_kv, duo::HeadKind::Retrieval, window);
    plan.kv_type = type;
    caches.push_back(std::make_unique<duo::KvCache>(layers, n_kv, d, plan));
    for (int l = 0; l < layers; ++l)
      for (int h = 0; h < n_kv; ++h) caches[s]->head(l, h).append(kc.data() + h * d, kc.data() + h * d, cached, kv_row, 0);
    caches[s]->advance(cached);
  }
  std::vector<std::vector<std::vector<duo::KvSegment>>> segs((size_t)(seqs * layers));
  std::vector<duo::HeadKind> kinds(n_kv, duo::HeadKind::Retrieval);
  std::vector<std::vector<duo::AttentionArgs>> calls(layers);
  for (int l = 0; l < layers; ++l)
    for (int64_t s = 0; s < seqs; ++s) {
      auto& sg = segs[(size_t)(l * seqs + s)];
      sg.resize(n_kv);
      for (int h = 0; h < n_kv; ++h) {
        caches[s]->head(l, h).segments(cached, sg[h]);
        sg[h].push_back({kn.data() + s * kv_row + h * d, kn.data() + s * kv_row + h * d, cached, 1, kv_row});
      }
      duo::AttentionArgs a;
      a.q = q.data() + s * n_heads * d;
      a.out = out.data() + s * n_heads * d;
      a.n = 1;
      a.pos0 = cached;
      a.n_heads = n_heads;
      a.n_kv_heads = n_kv;
      a.head_dim = d;
      a.segments = &sg;
      a.kinds = &kinds;
      a.window = window;
      calls[l].push_back(a);
    }
  for (auto _ : state) {
    for (int l = 0; l < layers; ++l) duo::attention_many(calls[l], pool());
    benchmark::DoNotOptimize(out.data());
  }
  const double elem_bytes = type == duo::KvType::F32 ? 4.0 : 2.0;
  state.counters["GB/s"] = benchmark::Counter(2.0 * elem_bytes * kv_row * (cached + 1) * seqs * layers * 1e-9,
                                              benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_DecodeStep)
    ->Args({32, 160, 0})->Args({32, 160, 1})->Args({32, 160, 2})->Args({32, 400, 0})->Args({32, 400, 1})
    ->Args({1, 160, 0})->Args({1, 160, 1})->Args({1, 20, 0})
    ->Unit(benchmark::kMillisecond)->UseRealTime();

// Args: {queries, cached positions, streaming}.
BENCHMARK_CAPTURE(BM_Attention, smollm2_9x3x64, 9, 3, 64)
    ->Args({512, 0, 0})->Args({512, 3584, 0})->Args({512, 3584, 1})->Args({1, 512, 0})->Args({1, 4096, 0})
    ->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_Attention, qwen_12x2x128, 12, 2, 128)
    ->Args({512, 0, 0})->Args({512, 3584, 0})->Args({1, 4096, 0})
    ->Unit(benchmark::kMicrosecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
