// Quantized matmul throughput on the real models' shapes (SmolLM2-135M Q4_1/Q8_0,
// Qwen2.5-Coder-1.5B Q4_K/Q6_K), for decode (1 token) and pre-fill (512 tokens).
// Weights are seeded random valid blocks: speed does not depend on the values.
// Counter "GFLOP/s" counts 2 * rows * cols * n_tokens per iteration.
//   ./duo_matmul_bench --benchmark_filter=Q4_1 [--threads via DUO_BENCH_THREADS, default 2]
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "backend/cpu/matmul.h"
#include "core/fp16.h"
#include "core/thread_pool.h"

namespace {

using duo::GgmlType;

int bench_threads() {
  const char* s = std::getenv("DUO_BENCH_THREADS");
  return s ? std::atoi(s) : 2;
}

duo::ThreadPool& pool() {
  static duo::ThreadPool p(bench_threads());
  return p;
}

// Random bytes with every f16 scale field set to a small normal value.
std::vector<uint8_t> random_weights(GgmlType type, int64_t rows, int64_t cols) {
  std::mt19937 rng(1234);
  const auto& tt = duo::type_traits(type);
  std::vector<uint8_t> data(duo::row_bytes(type, cols) * rows);
  for (size_t i = 0; i < data.size(); i += 4) {
    const uint32_t r = rng();
    std::memcpy(&data[i], &r, std::min<size_t>(4, data.size() - i));
  }
  std::normal_distribution<float> nd(0.0f, 0.02f);
  auto put = [&](uint8_t* p) {
    const uint16_t h = duo::f32_to_f16(nd(rng));
    std::memcpy(p, &h, 2);
  };
  const int64_t blocks = rows * cols / tt.block_elems;
  for (int64_t b = 0; b < blocks; ++b) {
    uint8_t* blk = data.data() + b * tt.block_bytes;
    switch (type) {
      case GgmlType::Q4_0: case GgmlType::Q5_0: case GgmlType::Q8_0: put(blk); break;
      case GgmlType::Q4_1: case GgmlType::Q5_1: case GgmlType::Q4_K: case GgmlType::Q5_K: put(blk); put(blk + 2); break;
      case GgmlType::Q6_K: put(blk + 208); break;
      case GgmlType::F16: put(blk); break;
      case GgmlType::F32: { const float v = nd(rng); std::memcpy(blk, &v, 4); break; }
      default: break;
    }
  }
  return data;
}

void BM_Matmul(benchmark::State& state, GgmlType type, int64_t rows, int64_t cols) {
  const int64_t n = state.range(0);
  const auto data = random_weights(type, rows, cols);
  duo::MatmulWeight w{type, data.data(), rows, cols, duo::row_bytes(type, cols)};
  std::vector<float> x((size_t)(n * cols)), y((size_t)(n * rows));
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (auto& v : x) v = nd(rng);
  duo::matmul(w, x.data(), n, y.data(), pool());  // warm-up (scratch buffers)
  for (auto _ : state) {
    duo::matmul(w, x.data(), n, y.data(), pool());
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  const double flops = 2.0 * rows * cols * n;
  state.counters["GFLOP/s"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GB/s_w"] =
      benchmark::Counter((double)data.size() * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = pool().size();
}

#define DUO_MM_BENCH(name, type, rows, cols)                                            \
  BENCHMARK_CAPTURE(BM_Matmul, name, GgmlType::type, rows, cols)->Arg(1)->Arg(512)     \
      ->Unit(benchmark::kMicrosecond)->UseRealTime()

// SmolLM2-135M: hidden 576, ffn 1536, Q4_1; token_embd (tied output head) Q8_0.
DUO_MM_BENCH(Q4_1_576x576, Q4_1, 576, 576);
DUO_MM_BENCH(Q4_1_1536x576, Q4_1, 1536, 576);
DUO_MM_BENCH(Q4_1_576x1536, Q4_1, 576, 1536);
DUO_MM_BENCH(Q8_0_1536x576, Q8_0, 1536, 576);
BENCHMARK_CAPTURE(BM_Matmul, Q8_0_49152x576_head, GgmlType::Q8_0, 49152, 576)->Arg(1)->Unit(benchmark::kMicrosecond)->UseRealTime();
// Qwen2.5-Coder-1.5B: hidden 1536, ffn 8960.
DUO_MM_BENCH(Q4_K_1536x8960, Q4_K, 1536, 8960);
DUO_MM_BENCH(Q4_K_8960x1536, Q4_K, 8960, 1536);
DUO_MM_BENCH(Q6_K_8960x1536, Q6_K, 8960, 1536);
DUO_MM_BENCH(Q6_K_1536x8960, Q6_K, 1536, 8960);
// Others, for completeness.
DUO_MM_BENCH(Q4_0_1536x576, Q4_0, 1536, 576);
DUO_MM_BENCH(Q5_K_1536x1536, Q5_K, 1536, 1536);
DUO_MM_BENCH(F16_576x576, F16, 576, 576);

// SmolLM2's 30 layers of Q4_1 matrices (q, k, v, o, gate, up, down; ~100 MB, 290 MB packed),
// each multiplied by n tokens, as a batched decode step of `duo serve` runs them: the weights
// stream from DRAM, not from the CPU caches. Args: {tokens, packed (pack_weight) or not,
// activation bits (MatmulWeight::act_bits: 16, or 8 for the int8 kernel)}.
void BM_LayerStack(benchmark::State& state) {
  const int64_t n = state.range(0);
  const bool packed = state.range(1) != 0;
  const int act_bits = (int)state.range(2);
  const int64_t E = 576, KV = 192, F = 1536;
  struct Mat {
    std::vector<uint8_t> data;
    duo::MatmulWeight w;
    std::shared_ptr<const duo::PackedWeight> p;
  };
  std::vector<Mat> mats;
  double flops = 0;
  for (int l = 0; l < 30; ++l)
    for (auto [rows, cols] : {std::pair{E, E}, {KV, E}, {KV, E}, {E, E}, {F, E}, {F, E}, {E, F}}) {
      Mat m;
      m.data = random_weights(GgmlType::Q4_1, rows, cols);
      m.w = {GgmlType::Q4_1, m.data.data(), rows, cols, duo::row_bytes(GgmlType::Q4_1, cols)};
      m.w.act_bits = act_bits;
      if (packed) {
        m.p = duo::pack_weight(m.w, pool());
        m.w.packed = m.p.get();
      }
      flops += 2.0 * rows * cols * n;
      mats.push_back(std::move(m));
    }
  std::vector<float> x((size_t)(n * F)), y((size_t)(n * F));
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (auto& v : x) v = nd(rng);
  for (auto _ : state) {
    for (const Mat& m : mats) duo::matmul(m.w, x.data(), n, y.data(), pool());
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.counters["GFLOP/s"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_LayerStack)->Args({48, 0, 16})->Args({48, 1, 16})->Args({24, 1, 16})->Args({128, 1, 16})
    ->Args({48, 0, 8})->Args({48, 1, 8})->Args({24, 1, 8})->Args({128, 1, 8})
    ->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
