// The bf16 scratch of a quantized past (dequant_past_kv, prefill_quant.cu) against the CPU:
// a GPU cache and a CPU cache of the same type get the same random bf16 rows in the same
// pre-fill chunks (kv_quantize + kv_append on the GPU, HeadCache::append on the CPU); the
// scratch must then hold, for every retrieval head and position < pos0, the CPU's
// dequantization of that position (segment_rows: dequantize_group for quantized groups, the bf16
// sink and residual rows as stored) rounded to bf16, bit for bit, at the page its page table
// names. Lengths end mid-group and mid-page, below sink16, on group and page boundaries; q8 and
// q4, head dim 64 and 128, all-retrieval and mixed layers, sink16 > 0. The scratch starts as
// NaN bits, so a position the kernel skips fails.
// The path choice (prefill_quant_path_for) and the scratch size are checked against their
// definitions in kernels.h.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <set>

#include "backend/cpu/kv_cache.h"
#include "backend/cuda/gpu_kv_cache.h"
#include "backend/cuda/kernels.h"
#include "core/error.h"
#include "core/fp16.h"
#include "cuda_test_util.h"
#include "kv/kv_codec.h"

namespace duo::cuda {
namespace {

using test::Dev;

struct Case {
  KvType type;
  int d, n_kv;
  bool mixed;  // odd heads streaming
  StreamingWindow w;
  int len;     // positions in the cache (the chunk's pos0)
  int chunk;   // pre-fill chunk size of the fill
};

HeadPlan plan_of(const Case& c) {
  HeadPlan plan = HeadPlan::uniform(1, c.n_kv, HeadKind::Retrieval, c.w);
  plan.kv_type = c.type;
  if (c.mixed)
    for (int h = 1; h < c.n_kv; h += 2) plan.kinds[0][h] = HeadKind::Streaming;
  return plan;
}

struct Filled {
  ModelConfig cfg;
  HeadPlan plan;
  std::unique_ptr<GpuKvCache> gpu;
  std::unique_ptr<KvCache> cpu;
};

// One layer holding c.len positions of random bf16 rows (every fifth element scaled up: outlier
// channels, as kv_quant_test), stored in pre-fill chunks of c.chunk.
Filled fill(const Case& c, uint32_t seed) {
  Filled f;
  f.cfg.n_layers = 1, f.cfg.n_kv_heads = c.n_kv, f.cfg.n_heads = c.n_kv, f.cfg.head_dim = c.d;
  f.plan = plan_of(c);
  f.gpu = std::make_unique<GpuKvCache>(f.cfg, f.plan, c.len + 1, nullptr);
  f.cpu = std::make_unique<KvCache>(1, c.n_kv, c.d, f.plan);
  std::mt19937 rng(seed);
  const int64_t row = (int64_t)c.n_kv * c.d;
  const int R = f.gpu->retrieval_heads(0);
  for (int pos0 = 0; pos0 < c.len;) {
    const int n = std::min(c.chunk, c.len - pos0);
    auto kr = test::randn_bf16(rng, (size_t)(n * row)), vr = test::randn_bf16(rng, (size_t)(n * row));
    for (size_t i = 0; i < kr.size(); i += 5) kr[i] = test::round_bf16(kr[i] * 6.0f);
    Dev<bf16> dk(test::to_bf16(kr)), dv(test::to_bf16(vr));
    f.gpu->reserve(pos0 + n);
    const LayerKv& view = f.gpu->layer(0);
    kv_quantize(dk.get(), dv.get(), row, n, pos0, c.n_kv, c.d, R, view, 0);
    kv_append(dk.get(), dv.get(), row, n, pos0, c.n_kv, c.d, view, 0);
    DUO_CUDA_TRY(cudaDeviceSynchronize());
    for (int h = 0; h < c.n_kv; ++h) f.cpu->head(0, h).append(kr.data() + h * c.d, vr.data() + h * c.d, n, row, pos0);
    f.gpu->advance(n);
    f.cpu->advance(n);
    pos0 += n;
  }
  return f;
}

PrefillArgs chunk_args(const Case& c, const Filled& f) {
  PrefillArgs a;
  a.n = 1, a.pos0 = c.len, a.n_heads = c.n_kv, a.n_kv_heads = c.n_kv, a.head_dim = c.d;
  a.q_stride = a.o_stride = a.kv_stride = (int64_t)c.n_kv * c.d;
  a.cache = f.gpu->layer(0);
  if (a.cache.mode == HeadMode::Mixed) a.retrieval_kv_heads = f.gpu->retrieval_heads(0);
  return a;
}

void run(const Case& c, uint32_t seed) {
  SCOPED_TRACE(::testing::Message() << to_string(c.type) << " d " << c.d << " heads " << c.n_kv
                                    << (c.mixed ? " mixed" : "") << " sink " << c.w.sink << " length " << c.len);
  Filled f = fill(c, seed);
  const PrefillArgs a = chunk_args(c, f);
  const int R = f.gpu->retrieval_heads(0);
  const int P = (c.len + kPageTokens - 1) / kPageTokens;
  const size_t table = ((size_t)c.n_kv * P * 4 + 255) / 256 * 256;
  const size_t bytes = prefill_quant_scratch_bytes(a);
  ASSERT_EQ(bytes, table + 2 * (size_t)R * P * kPageTokens * c.d * 2) << "page table + K and V pages of R heads";
  Dev<uint8_t> scratch(bytes);
  DUO_CUDA_TRY(cudaMemset(scratch.get(), 0xff, bytes));  // bf16 0xffff is a NaN
  const LayerKv v = dequant_past_kv(a, scratch.get(), bytes, 0);
  const auto host = scratch.download();  // synchronizes

  // The view: bf16, pages and table in the scratch, everything else the cache's.
  const LayerKv& q = a.cache;
  EXPECT_EQ(v.type, KvType::BF16);
  EXPECT_EQ(v.max_pages, P);
  EXPECT_EQ((const void*)v.page_table, (const void*)scratch.get());
  EXPECT_EQ((const uint8_t*)v.k_pages, scratch.get() + table);
  EXPECT_EQ((const uint8_t*)v.v_pages, scratch.get() + table + bytes / 2 - table / 2);
  EXPECT_EQ(v.k_ring, q.k_ring);
  EXPECT_EQ(v.v_ring, q.v_ring);
  EXPECT_EQ(v.kinds, q.kinds);
  EXPECT_EQ(v.mode, q.mode);
  EXPECT_EQ(v.sink, q.sink);
  EXPECT_EQ(v.recent, q.recent);

  std::vector<int32_t> tab((size_t)c.n_kv * P);
  std::memcpy(tab.data(), host.data(), tab.size() * 4);
  const uint16_t* kp = reinterpret_cast<const uint16_t*>(host.data() + table);
  const uint16_t* vp = reinterpret_cast<const uint16_t*>(host.data() + table + bytes / 2 - table / 2);
  std::set<int32_t> used;
  std::vector<float> kf, vf;
  for (int h = 0; h < c.n_kv; ++h) {
    if (f.plan.kinds[0][h] == HeadKind::Streaming) {
      for (int p = 0; p < P; ++p) EXPECT_EQ(tab[(size_t)h * P + p], 0) << "streaming head " << h << " page " << p;
      continue;
    }
    for (int p = 0; p < P; ++p) {
      const int32_t e = tab[(size_t)h * P + p];
      ASSERT_TRUE(e >= 0 && e < R * P) << "head " << h << " page " << p << ": entry " << e;
      ASSERT_TRUE(used.insert(e).second) << "scratch page " << e << " given twice";
    }
    std::vector<KvSegment> segs;
    f.cpu->head(0, h).segments(c.len, segs);
    int64_t covered = 0;
    for (const KvSegment& s : segs) {
      kf.resize((size_t)s.n * c.d), vf.resize((size_t)s.n * c.d);
      segment_rows(s, 0, s.n, c.d, kf.data(), vf.data());
      for (int64_t r = 0; r < s.n; ++r) {
        const int64_t pos = s.pos0 + r;
        const int64_t srow = (int64_t)tab[(size_t)h * P + pos / kPageTokens] * kPageTokens + pos % kPageTokens;
        for (int ch = 0; ch < c.d; ++ch) {
          const uint16_t wk = f32_to_bf16(kf[(size_t)r * c.d + ch]), wv = f32_to_bf16(vf[(size_t)r * c.d + ch]);
          const uint16_t gk = kp[srow * c.d + ch], gv = vp[srow * c.d + ch];
          if (gk != wk || gv != wv)
            FAIL() << "head " << h << " position " << pos << " channel " << ch << " ("
                   << (is_quantized(s.type) ? "quantized group" : pos < q.sink16 ? "sink row" : "residual row")
                   << "): K " << std::hex << gk << " want " << wk << ", V " << gv << " want " << wv;
        }
      }
      covered += s.n;
    }
    EXPECT_EQ(covered, c.len) << "the CPU segments of head " << h << " cover the past";
  }
}

// Lengths: 1000 = 3 pages + 232 (mid-page, 40 into a group); 700 = 2 pages + 188 (60 into a
// group); 1337 (57 into the page and the group); 575 (63 in: the last row of a group missing).
TEST(CudaPrefillDequant, Q8D128MidPageMidGroup) { run({KvType::Q8, 128, 4, false, {64, 256}, 1000, 300}, 1); }
TEST(CudaPrefillDequant, Q4D128MixedTwoSinkGroups) { run({KvType::Q4, 128, 4, true, {100, 64}, 700, 250}, 2); }
TEST(CudaPrefillDequant, Q4D64SmallSink) { run({KvType::Q4, 64, 3, false, {4, 256}, 1337, 500}, 3); }
TEST(CudaPrefillDequant, Q8D64MixedGroupShortOfOne) { run({KvType::Q8, 64, 4, true, {4, 64}, 575, 200}, 4); }
// Below sink16 (sink rows only, the second sink group partial), a group boundary (no residual
// rows) and a page boundary.
TEST(CudaPrefillDequant, Q4D128InsideTheSink) { run({KvType::Q4, 128, 2, false, {100, 64}, 90, 37}, 5); }
TEST(CudaPrefillDequant, Q8D128GroupBoundary) { run({KvType::Q8, 128, 2, false, {64, 256}, 320, 100}, 6); }
TEST(CudaPrefillDequant, Q4D64PageBoundaryEightHeads) { run({KvType::Q4, 64, 8, false, {64, 256}, 512, 512}, 7); }

TEST(CudaPrefillDequant, PathChoice) {
  const Case c{KvType::Q4, 128, 4, true, {64, 256}, 300, 300};
  Filled f = fill(c, 8);
  PrefillArgs a = chunk_args(c, f);
  const size_t need = prefill_quant_scratch_bytes(a);
  // 2 retrieval heads, 2 pages: a 32-byte table padded to 256, then 2 x 2 x 2 pages of 64 KiB.
  EXPECT_EQ(need, 256u + 8u * 65536u);
  EXPECT_EQ(prefill_quant_path_for(a, PrefillQuantPath::Bf16Scratch, need), PrefillQuantPath::Bf16Scratch);
  EXPECT_EQ(prefill_quant_path_for(a, PrefillQuantPath::Bf16Scratch, need - 1), PrefillQuantPath::Mma)
      << "a scratch too small falls back to the mma kernel";
  EXPECT_EQ(prefill_quant_path_for(a, PrefillQuantPath::Mma, need), PrefillQuantPath::Mma);
  if (std::getenv("DUO_PREFILL_QUANT") == nullptr) {
    EXPECT_EQ(prefill_quant_path_for(a, PrefillQuantPath::Auto, need), PrefillQuantPath::Bf16Scratch)
        << "the default path";
  }
  Dev<uint8_t> small(need - 1);
  EXPECT_THROW(dequant_past_kv(a, small.get(), need - 1, 0), Error);
  // Without the count of a Mixed layer's retrieval heads, room for every head.
  a.retrieval_kv_heads = 0;
  EXPECT_EQ(prefill_quant_scratch_bytes(a), 256u + 16u * 65536u);
  // Nothing cached: no scratch, and the bf16 kernels run (no quantized pages to read).
  a.pos0 = 0;
  EXPECT_EQ(prefill_quant_scratch_bytes(a), 0u);
  EXPECT_EQ(prefill_quant_path_for(a, PrefillQuantPath::Bf16Scratch, 0), PrefillQuantPath::Bf16Scratch);
  const LayerKv v = dequant_past_kv(a, nullptr, 0, 0);
  EXPECT_EQ(v.type, KvType::BF16);
  EXPECT_EQ(v.page_table, nullptr);
  // bf16 caches and all-streaming layers hold no quantized pages.
  Case b = c;
  b.type = KvType::BF16;
  Filled fb = fill(b, 9);
  EXPECT_EQ(prefill_quant_path_for(chunk_args(b, fb), PrefillQuantPath::Bf16Scratch, 0), PrefillQuantPath::Auto);
  EXPECT_EQ(prefill_quant_scratch_bytes(chunk_args(b, fb)), 0u);
  Case s = c;
  s.n_kv = 1;
  s.mixed = false;
  Filled fs = fill(s, 10);
  PrefillArgs as = chunk_args(s, fs);
  as.cache.mode = HeadMode::AllStreaming;
  EXPECT_EQ(prefill_quant_path_for(as, PrefillQuantPath::Bf16Scratch, 0), PrefillQuantPath::Auto);
}

}  // namespace
}  // namespace duo::cuda
