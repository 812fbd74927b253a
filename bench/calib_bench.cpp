// Calibration kernels on SmolLM2 / Qwen2.5-1.5B shapes: the dense GEMM in both forms (forward
// y = x W^T, input gradient dx = dy W) and blockwise attention forward / backward, causal and
// Λ. Counter "GFLOP/s": 2*M*N*K for a GEMM; for attention the visible (query, key) pairs times
// 4*head_dim*heads (forward: QK^T and PV) or 10*head_dim*heads (backward as scheduled here:
// QK^T and dO V^T twice, P^T dO, dS^T Q, dS K), per second of wall time.
//   ./duo_calib_bench [--benchmark_filter=Attention]   (threads: DUO_BENCH_THREADS, default 2)
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <random>
#include <vector>

#include "calibrate/dense_gemm.h"
#include "calibrate/flash_attention.h"
#include "core/thread_pool.h"

namespace {

duo::ThreadPool& pool() {
  static duo::ThreadPool p([] {
    const char* s = std::getenv("DUO_BENCH_THREADS");
    return s ? std::atoi(s) : 2;
  }());
  return p;
}

std::vector<float> random(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

// args: tokens, rows (out features), cols (in features), trans_b (1: forward, 0: input gradient)
void BM_Gemm(benchmark::State& st) {
  const int64_t n = st.range(0), rows = st.range(1), cols = st.range(2);
  const bool fwd = st.range(3) != 0;
  const auto w = random((size_t)(rows * cols), 1);
  const int64_t in = fwd ? cols : rows, out = fwd ? rows : cols;
  const auto x = random((size_t)(n * in), 2);
  std::vector<float> y((size_t)(n * out));
  for (auto _ : st) {
    duo::gemm<float>(x.data(), in, w.data(), cols, fwd, y.data(), out, n, out, in, false, pool());
    benchmark::DoNotOptimize(y.data());
  }
  st.counters["GFLOP/s"] = benchmark::Counter(2.0 * n * rows * cols, benchmark::Counter::kIsIterationInvariantRate,
                                              benchmark::Counter::kIs1000);
}
// SmolLM2 (E 576, F 1536) and Qwen2.5-1.5B (E 1536, F 8960) FFN shapes at 1024 tokens.
BENCHMARK(BM_Gemm)
    ->Args({1024, 1536, 576, 1})
    ->Args({1024, 1536, 576, 0})
    ->Args({1024, 576, 1536, 1})
    ->Args({1024, 576, 1536, 0})
    ->Args({1024, 8960, 1536, 1})
    ->Args({1024, 8960, 1536, 0})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// args: tokens, heads, kv heads, head dim, mask (0 causal, 1 Λ sink 128 recent 256), backward
void BM_Attention(benchmark::State& st) {
  const duo::AttentionDims d{st.range(0), (int)st.range(1), (int)st.range(2), (int)st.range(3)};
  const auto mask = st.range(4) ? duo::AttentionMask::streaming(128, 256) : duo::AttentionMask::causal();
  const bool bwd = st.range(5) != 0;
  const size_t nq = d.n * d.n_heads * d.head_dim, nk = d.n * d.n_kv_heads * d.head_dim;
  const auto q = random(nq, 3), k = random(nk, 4), v = random(nk, 5), g = random(nq, 6);
  std::vector<float> o(nq), lse(d.n * d.n_heads), dq(nq), dk(nk), dv(nk);
  duo::flash_attention_forward<float>(q.data(), k.data(), v.data(), o.data(), lse.data(), d, mask, pool());
  for (auto _ : st) {
    if (bwd)
      duo::flash_attention_backward<float>(q.data(), k.data(), v.data(), o.data(), lse.data(), g.data(), dq.data(),
                                           dk.data(), dv.data(), false, d, mask, pool());
    else
      duo::flash_attention_forward<float>(q.data(), k.data(), v.data(), o.data(), lse.data(), d, mask, pool());
    benchmark::DoNotOptimize(o.data());
  }
  double pairs = 0;
  for (int64_t i = 0; i < d.n; ++i)
    pairs += st.range(4) ? (double)std::min<int64_t>(i + 1, std::min<int64_t>(128, i + 1) + std::min<int64_t>(256, std::max<int64_t>(0, i + 1 - 128)))
                         : (double)(i + 1);
  st.counters["GFLOP/s"] = benchmark::Counter(pairs * d.head_dim * d.n_heads * (bwd ? 10.0 : 4.0),
                                              benchmark::Counter::kIsIterationInvariantRate,
                                              benchmark::Counter::kIs1000);
}
BENCHMARK(BM_Attention)
    ->Args({2048, 9, 3, 64, 0, 0})
    ->Args({2048, 9, 3, 64, 0, 1})
    ->Args({2048, 9, 3, 64, 1, 0})
    ->Args({2048, 9, 3, 64, 1, 1})
    ->Args({2048, 12, 2, 128, 0, 0})
    ->Args({2048, 12, 2, 128, 0, 1})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
