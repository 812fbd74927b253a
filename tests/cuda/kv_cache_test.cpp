// The GPU KV cache against the CPU HeadCache: the same rows appended in the same chunks
// (kv_append on the GPU, HeadCache::append on the CPU) must leave, for every position a head
// still holds, exactly the same key and value (bf16 values, compared exactly) at the place
// attention.cuh's layout says: page_table[h][p / 256] for retrieval heads, sink + ring rows for
// streaming heads. Byte accounting must equal the CPU's for bf16 (half of its float bytes).
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <stdexcept>

#include "backend/cuda/gpu_kv_cache.h"
#include "backend/cuda/kernels.h"
#include "core/error.h"
#include "cuda_test_util.h"
#include "backend/cpu/kv_cache.h"

namespace duo::cuda {
namespace {

using test::Dev;

ModelConfig cache_config(int layers, int kv_heads, int d) {
  ModelConfig c;
  c.n_layers = layers;
  c.n_kv_heads = kv_heads;
  c.n_heads = kv_heads;
  c.head_dim = d;
  return c;
}

// Reads back what head (l, h) of the GPU cache holds for position p (K then V, d values each).
struct GpuView {
  const GpuKvCache& kv;
  int d;
  std::vector<int32_t> table;
  std::vector<bf16> kpool, vpool, kring, vring;

  GpuView(const GpuKvCache& cache, int layer, int d_) : kv(cache), d(d_) {
    DUO_CUDA_TRY(cudaDeviceSynchronize());
    const LayerKv& v = kv.layer(layer);
    table.resize((size_t)kv.plan().kinds[layer].size() * v.max_pages);
    DUO_CUDA_TRY(cudaMemcpy(table.data(), v.page_table, table.size() * 4, cudaMemcpyDeviceToHost));
    const size_t pool = kv.bytes(HeadKind::Retrieval) / 2 / sizeof(bf16);  // used pages, K or V
    kpool.resize(pool), vpool.resize(pool);
    if (pool) {
      DUO_CUDA_TRY(cudaMemcpy(kpool.data(), v.k_pages, pool * 2, cudaMemcpyDeviceToHost));
      DUO_CUDA_TRY(cudaMemcpy(vpool.data(), v.v_pages, pool * 2, cudaMemcpyDeviceToHost));
    }
    if (v.k_ring) {
      const size_t ring = kv.plan().kinds[layer].size() * (size_t)(v.sink + v.recent) * d;
      kring.resize(ring), vring.resize(ring);
      DUO_CUDA_TRY(cudaMemcpy(kring.data(), v.k_ring, ring * 2, cudaMemcpyDeviceToHost));
      DUO_CUDA_TRY(cudaMemcpy(vring.data(), v.v_ring, ring * 2, cudaMemcpyDeviceToHost));
    }
  }
};

void expect_same_contents(const GpuKvCache& gpu, const KvCache& cpu, int layers, int n_kv, int d) {
  for (int l = 0; l < layers; ++l) {
    GpuView g(gpu, l, d);
    const LayerKv& v = gpu.layer(l);
    for (int h = 0; h < n_kv; ++h) {
      std::vector<KvSegment> segs;
      cpu.head(l, h).segments(cpu.n_past(), segs);
      const bool streaming = cpu.head(l, h).kind() == HeadKind::Streaming;
      int checked = 0;
      for (const KvSegment& s : segs)
        for (int64_t r = 0; r < s.n; ++r) {
          const int64_t p = s.pos0 + r;
          const bf16 *gk, *gv;
          if (streaming) {
            const int64_t row = p < v.sink ? p : v.sink + (p - v.sink) % v.recent;
            const size_t off = ((size_t)h * (v.sink + v.recent) + row) * d;
            gk = &g.kring[off], gv = &g.vring[off];
          } else {
            const int32_t page = g.table[(size_t)h * v.max_pages + p / kPageTokens];
            ASSERT_GE(page, 0);
            const size_t off = ((size_t)page * kPageTokens + p % kPageTokens) * d;
            ASSERT_LE(off + d, g.kpool.size()) << "page " << page << " outside the used pool";
            gk = &g.kpool[off], gv = &g.vpool[off];
          }
          for (int c = 0; c < d; ++c) {
            ASSERT_EQ(test::to_float(gk[c]), s.k[r * s.stride + c])
                << "K layer " << l << " head " << h << " position " << p << " dim " << c;
            ASSERT_EQ(test::to_float(gv[c]), s.v[r * s.stride + c])
                << "V layer " << l << " head " << h << " position " << p << " dim " << c;
          }
          ++checked;
        }
      EXPECT_GT(checked, 0);
    }
  }
  EXPECT_EQ(gpu.bytes(HeadKind::Retrieval) * 2, cpu.bytes(HeadKind::Retrieval));
  EXPECT_EQ(gpu.bytes(HeadKind::Streaming) * 2, cpu.bytes(HeadKind::Streaming));
}

// Appends the same random rows in `chunks` to both caches and compares after every chunk.
// local (empty, or one window a layer, 0 for a global layer): gemma3's local layers, given to the
// GPU cache through the model's config and to the CPU cache as its layer windows.
void run_appends(int d, const HeadPlan& plan, const std::vector<int>& chunks, uint32_t seed,
                 const std::vector<int>& local = {}) {
  const int layers = (int)plan.kinds.size(), n_kv = (int)plan.kinds[0].size();
  ModelConfig c = cache_config(layers, n_kv, d);
  for (int w : local) {
    c.layer_local.push_back(w > 0);
    if (w > 0) c.local_window = w;
  }
  ASSERT_EQ(GpuKvCache::layer_windows(c), local);
  int total = 0;
  for (int n : chunks) total += n;
  GpuKvCache gpu(c, plan, total + 3, 0);
  KvCache cpu(layers, n_kv, d, plan, local);
  std::mt19937 rng(seed);
  const int64_t row = (int64_t)n_kv * d;
  for (int n : chunks) {
    const int64_t pos0 = gpu.n_past();
    gpu.reserve(pos0 + n);
    for (int l = 0; l < layers; ++l) {
      auto k = test::randn_bf16(rng, (size_t)(n * row)), v = test::randn_bf16(rng, (size_t)(n * row));
      Dev<bf16> dk(test::to_bf16(k)), dv(test::to_bf16(v));
      kv_append(dk.get(), dv.get(), row, n, (int)pos0, n_kv, d, gpu.layer(l), 0);
      DUO_CUDA_TRY(cudaDeviceSynchronize());
      for (int h = 0; h < n_kv; ++h) cpu.head(l, h).append(k.data() + h * d, v.data() + h * d, n, row, pos0);
    }
    gpu.advance(n);
    cpu.advance(n);
    SCOPED_TRACE("after " + std::to_string(gpu.n_past()) + " positions");
    expect_same_contents(gpu, cpu, layers, n_kv, d);
    EXPECT_EQ(GpuKvCache::bytes_for(c, plan, gpu.n_past()), gpu.bytes());
  }
}

TEST(CudaKvCache, MixedHeadsMatchHeadCache) {
  HeadPlan plan = HeadPlan::uniform(3, 4, HeadKind::Retrieval, {4, 40});
  plan.kinds[0] = {HeadKind::Retrieval, HeadKind::Streaming, HeadKind::Retrieval, HeadKind::Streaming};
  plan.kinds[1] = std::vector<HeadKind>(4, HeadKind::Streaming);  // layer 2 stays all retrieval
  run_appends(64, plan, {100, 1, 300, 37, 1, 1, 256}, 1);
}

TEST(CudaKvCache, StreamingOnlyD128NoSink) {
  run_appends(128, HeadPlan::uniform(2, 2, HeadKind::Streaming, {0, 33}), {10, 50, 1, 1, 200}, 2);
}

// gemma3's local layers (0 and 2 here) hold every head as a no-sink streaming head of their own
// window (24 rows) whatever the plan says (all retrieval there, sink 4 + recent 40 for the global
// layer's streaming head): the same rows as the CPU cache with those layer windows, across many
// wraps of both rings, and the same bytes, which bytes_for (kv_plan_bytes with the windows) prices.
TEST(CudaKvCache, LocalLayersKeepTheirOwnWindow) {
  HeadPlan plan = HeadPlan::uniform(3, 2, HeadKind::Retrieval, {4, 40});
  plan.kinds[1][1] = HeadKind::Streaming;
  run_appends(64, plan, {10, 50, 1, 1, 200, 7}, 5, {24, 0, 24});
  ModelConfig c = cache_config(3, 2, 64);
  c.layer_local = {1, 0, 1}, c.local_window = 24;
  GpuKvCache gpu(c, plan, 1000, 0);
  for (int l : {0, 2}) {
    EXPECT_EQ(gpu.layer(l).mode, HeadMode::AllStreaming) << l;
    EXPECT_EQ(gpu.layer(l).sink, 0) << l;
    EXPECT_EQ(gpu.layer(l).recent, 24) << l;
    EXPECT_EQ(gpu.retrieval_heads(l), 0) << l;
  }
  EXPECT_EQ(gpu.layer(1).mode, HeadMode::Mixed);
  EXPECT_EQ(gpu.layer(1).sink, 4);
  EXPECT_EQ(gpu.layer(1).recent, 40);
  // Streaming rows before any position: two local layers' 2 heads x 24 rows, one head x 44 rows.
  EXPECT_EQ(gpu.bytes(HeadKind::Streaming), (size_t)(2 * 2 * 24 + 44) * 64 * 2 * 2);
  gpu.reserve(600);
  gpu.advance(600);
  EXPECT_EQ(gpu.bytes(), GpuKvCache::bytes_for(c, plan, 600));
  // (Its own pool maps memory a slab at a time, so the device figure is a lower bound here.)
  EXPECT_GE(gpu.device_bytes(), GpuKvCache::device_bytes_for(c, plan, 1000, 600));
}

TEST(CudaKvCache, PoolGrowsAcrossSlabsAndClears) {
  // 4 layers x 8 retrieval heads x d 128: 64 KB pages, 32 MiB slabs of 512 pages; 5000 tokens
  // need 20 pages a head = 640 pages: the pool maps a second slab on the way.
  const ModelConfig c = cache_config(4, 8, 128);
  const HeadPlan plan = HeadPlan::uniform(4, 8, HeadKind::Retrieval);
  GpuKvCache gpu(c, plan, 5000, 0);
  EXPECT_EQ(gpu.bytes(), 0u);
  gpu.reserve(256 * 12);
  const size_t early = gpu.device_bytes();
  gpu.reserve(5000);
  EXPECT_GT(gpu.device_bytes(), early) << "more pages must map more memory";
  EXPECT_EQ(gpu.bytes(), (size_t)32 * 20 * 2 * 256 * 128 * 2);
  EXPECT_THROW(gpu.reserve(5001), Error);
  gpu.clear();
  EXPECT_EQ(gpu.bytes(), 0u);
  EXPECT_EQ(gpu.n_past(), 0);
  // After clear() the pages are handed out again and hold new rows correctly.
  run_appends(128, plan, {700, 1}, 3);
}

TEST(CudaKvCache, FillRandomHoldsPositions) {
  const ModelConfig c = cache_config(2, 4, 64);
  HeadPlan plan = HeadPlan::uniform(2, 4, HeadKind::Retrieval, {4, 16});
  plan.kinds[1][3] = HeadKind::Streaming;
  GpuKvCache gpu(c, plan, 10000, 0);
  gpu.fill_random(9000, 7);
  EXPECT_EQ(gpu.n_past(), 9000);
  EXPECT_EQ(gpu.bytes(), GpuKvCache::bytes_for(c, plan, 9000));
  GpuView g(gpu, 0, 64);
  double sum = 0, sq = 0;
  for (bf16 x : g.kpool) sum += test::to_float(x), sq += test::to_float(x) * test::to_float(x);
  const double n = (double)g.kpool.size();
  EXPECT_NEAR(sum / n, 0.0, 0.01);
  EXPECT_NEAR(sq / n, 1.0 / 3, 0.01);  // uniform [-1, 1)
}

// The decode step writes the token's K and V from qkv_bias_rope straight into the cache
// (to_cache, position in device memory) instead of kv_append: the cache must then hold exactly
// what rope-to-buffers + HeadCache::append hold, for retrieval and streaming heads, across a
// page boundary (256) and many wraps of the ring (sink 4 + recent 40).
TEST(CudaKvCache, RopeWritesDecodeTokenIntoCache) {
  constexpr int layers = 3, n_kv = 4, H = 8, d = 64;
  HeadPlan plan = HeadPlan::uniform(layers, n_kv, HeadKind::Retrieval, {4, 40});
  plan.kinds[0] = {HeadKind::Streaming, HeadKind::Retrieval, HeadKind::Streaming, HeadKind::Retrieval};
  plan.kinds[1] = std::vector<HeadKind>(n_kv, HeadKind::Streaming);  // layer 2 stays all retrieval
  const ModelConfig c = cache_config(layers, n_kv, d);
  constexpr int steps = 300;
  GpuKvCache gpu(c, plan, steps, 0);
  KvCache cpu(layers, n_kv, d, plan);
  std::mt19937 rng(9);
  const int64_t Q = (int64_t)H * d, KV = (int64_t)n_kv * d, ld = Q + 2 * KV;
  std::vector<float> inv(d / 2);
  for (int i = 0; i < d / 2; ++i) inv[i] = std::pow(10000.0f, -2.0f * i / d);
  Dev<float> dinv(inv);
  Dev<bf16> dq((size_t)Q), dk((size_t)KV), dv((size_t)KV), dq2((size_t)Q);
  Dev<int32_t> dpos(1);
  for (int pos = 0; pos < steps; ++pos) {
    gpu.reserve(pos + 1);
    dpos.upload(std::vector<int32_t>{pos});
    for (int l = 0; l < layers; ++l) {
      Dev<float> qkv(test::randn(rng, (size_t)ld, 2.0f));
      QkvRopeArgs a;
      a.qkv = qkv.get(), a.ld = ld, a.inv_freq = dinv.get();
      a.n = 1, a.pos0 = pos, a.n_heads = H, a.n_kv_heads = n_kv, a.head_dim = d;
      a.q = dq.get(), a.k = dk.get(), a.v = dv.get();
      qkv_bias_rope(a, 0);  // to buffers: what the CPU cache appends
      a.pos0 = -1, a.pos_d = dpos.get(), a.q = dq2.get(), a.k = a.v = nullptr;
      a.to_cache = true, a.cache = gpu.layer(l);
      qkv_bias_rope(a, 0);  // decode form: into the GPU cache
      const auto k = test::to_float(dk.download()), v = test::to_float(dv.download());
      ASSERT_EQ(test::to_float(dq2.download()), test::to_float(dq.download())) << "q must not depend on where K/V go";
      for (int h = 0; h < n_kv; ++h) cpu.head(l, h).append(k.data() + h * d, v.data() + h * d, 1, KV, pos);
    }
    gpu.advance(1);
    cpu.advance(1);
    if (pos % 37 == 0 || pos == 255 || pos == 256 || pos + 1 == steps) {
      SCOPED_TRACE("after " + std::to_string(pos + 1) + " positions");
      expect_same_contents(gpu, cpu, layers, n_kv, d);
    }
  }
  QkvRopeArgs bad;
  bad.n = 2, bad.n_heads = H, bad.n_kv_heads = n_kv, bad.head_dim = d, bad.to_cache = true;
  EXPECT_THROW(qkv_bias_rope(bad, 0), Error) << "to_cache takes one token";
}

TEST(CudaKvCache, RejectsUnsupportedShapes) {
  EXPECT_THROW(GpuKvCache(cache_config(1, 2, 96), HeadPlan::uniform(1, 2, HeadKind::Retrieval), 100, 0), Error);
  EXPECT_THROW(GpuKvCache(cache_config(1, 2, 64), HeadPlan::uniform(2, 2, HeadKind::Retrieval), 100, 0), Error);
  EXPECT_THROW(GpuKvCache(cache_config(1, 2, 64), HeadPlan::uniform(1, 2, HeadKind::Streaming, {4, 0}), 100, 0),
               Error);
}

}  // namespace
}  // namespace duo::cuda
