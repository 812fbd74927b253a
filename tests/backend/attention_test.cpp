// The blocked, threaded attention against the plain reference, for every mask policy, and
// the streaming cache against attention over the whole history with the Λ mask.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "backend/cpu/attention.h"
#include "core/thread_pool.h"
#include "simd_levels.h"

namespace duo {
namespace {

struct Case {
  int n_heads, n_kv, d;
  int64_t n_cached, n_new;
  HeadKind kind;
  StreamingWindow w;
};

std::vector<float> randn(size_t n, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

// Builds a cache holding n_cached positions, then attends n_new queries with both routines.
void run_case(const Case& c, int threads) {
  std::mt19937 rng(1234 + c.n_heads * 7 + c.d + (int)c.n_cached);
  const int64_t kv_row = (int64_t)c.n_kv * c.d;
  auto kc = randn(c.n_cached * kv_row, rng), vc = randn(c.n_cached * kv_row, rng);
  auto kn = randn(c.n_new * kv_row, rng), vn = randn(c.n_new * kv_row, rng);
  // Larger query scale makes the softmax peaky, which stresses the online rescaling.
  auto q = randn(c.n_new * c.n_heads * c.d, rng, 2.0f);

  HeadPlan plan = HeadPlan::uniform(1, c.n_kv, c.kind, c.w);
  KvCache cache(1, c.n_kv, c.d, plan);
  // Fill the cache in uneven chunks so streaming heads wrap their ring several times.
  for (int64_t p = 0; p < c.n_cached;) {
    const int64_t m = std::min<int64_t>(37, c.n_cached - p);
    for (int h = 0; h < c.n_kv; ++h)
      cache.head(0, h).append(kc.data() + p * kv_row + h * c.d, vc.data() + p * kv_row + h * c.d, m, kv_row, p);
    p += m;
    cache.advance(m);
  }
  std::vector<std::vector<KvSegment>> segs(c.n_kv);
  std::vector<HeadKind> kinds(c.n_kv, c.kind);
  for (int h = 0; h < c.n_kv; ++h) {
    cache.head(0, h).segments(c.n_cached, segs[h]);
    segs[h].push_back({kn.data() + h * c.d, vn.data() + h * c.d, c.n_cached, c.n_new, kv_row});
  }
  std::vector<float> out(q.size()), ref(q.size());
  AttentionArgs a;
  a.q = q.data();
  a.n = c.n_new;
  a.pos0 = c.n_cached;
  a.n_heads = c.n_heads;
  a.n_kv_heads = c.n_kv;
  a.head_dim = c.d;
  a.segments = &segs;
  a.kinds = &kinds;
  a.window = c.w;
  a.out = ref.data();
  attention_ref(a);
  ThreadPool pool(threads);
  a.out = out.data();
  for (SimdLevel level : test::simd_levels()) {
    test::ScopedSimdLevel scoped(level);
    std::fill(out.begin(), out.end(), std::nanf(""));
    attention(a, pool);
    double max_err = 0.0;
    for (size_t i = 0; i < out.size(); ++i) {
      const double err = std::fabs(out[i] - ref[i]);
      if (!(err <= max_err)) max_err = err;  // a NaN sticks
    }
    // Outputs are convex combinations of N(0,1) values; float accumulation over <= 1000 keys
    // with a polynomial exp stays well inside 1e-4. (NaN fails too.)
    EXPECT_LT(max_err, 1e-4) << "heads " << c.n_heads << "/" << c.n_kv << " d " << c.d << " cached " << c.n_cached
                             << " new " << c.n_new << " threads " << threads << " " << simd_name(level);
  }
}

TEST(Attention, CausalPrefillMatchesReference) {
  for (int t : {1, 2, 3}) {
    run_case({9, 3, 64, 0, 150, HeadKind::Retrieval, {}}, t);
    run_case({12, 2, 128, 0, 70, HeadKind::Retrieval, {}}, t);
    run_case({4, 4, 64, 0, 33, HeadKind::Retrieval, {}}, t);
  }
}

TEST(Attention, ChunkOverCachedPagesMatchesReference) {
  for (int t : {1, 2}) {
    run_case({9, 3, 64, 600, 90, HeadKind::Retrieval, {}}, t);
    run_case({12, 2, 128, 300, 17, HeadKind::Retrieval, {}}, t);
  }
}

TEST(Attention, DecodeSplitKeysMatchesReference) {
  for (int t : {1, 2, 3}) {
    run_case({9, 3, 64, 1000, 1, HeadKind::Retrieval, {}}, t);
    run_case({12, 2, 128, 777, 1, HeadKind::Retrieval, {}}, t);
    run_case({9, 3, 64, 5, 1, HeadKind::Retrieval, {}}, t);  // fewer keys than splits
  }
}

TEST(Attention, StreamingMaskMatchesReference) {
  for (int t : {1, 2}) {
    run_case({9, 3, 64, 0, 200, HeadKind::Streaming, {4, 16}}, t);
    run_case({9, 3, 64, 500, 70, HeadKind::Streaming, {4, 16}}, t);
    run_case({12, 2, 128, 500, 1, HeadKind::Streaming, {8, 64}}, t);
    run_case({9, 3, 64, 10, 3, HeadKind::Streaming, {16, 32}}, t);  // still inside the sink
    run_case({9, 3, 64, 700, 130, HeadKind::Streaming, {64, 256}}, t);  // the default window, blocks cut by it
    run_case({12, 2, 128, 300, 64, HeadKind::Streaming, {8, 100}}, t);
  }
}

// Streaming heads keep sink + ring only. Attending with that cache must equal attending over
// the whole history (a full cache) with the Λ mask applied.
TEST(Attention, StreamingCacheEqualsMaskedFullHistory) {
  const int H = 6, HKV = 2, d = 64;
  const StreamingWindow w{4, 24};
  const int64_t kv_row = HKV * d;
  std::mt19937 rng(7);
  const int64_t total = 300;
  auto k = randn(total * kv_row, rng), v = randn(total * kv_row, rng), q = randn(total * H * d, rng, 2.0f);
  KvCache streaming(1, HKV, d, HeadPlan::uniform(1, HKV, HeadKind::Streaming, w));
  KvCache full(1, HKV, d, HeadPlan::uniform(1, HKV, HeadKind::Retrieval, w));
  ThreadPool pool(2);
  int64_t p = 0;
  for (int64_t chunk : {1, 7, 40, 1, 1, 100, 3, 64, 83}) {
    std::vector<float> o1(chunk * H * d), o2(chunk * H * d);
    for (int pass = 0; pass < 2; ++pass) {
      KvCache& cache = pass == 0 ? streaming : full;
      std::vector<std::vector<KvSegment>> segs(HKV);
      std::vector<HeadKind> kinds(HKV, HeadKind::Streaming);  // the mask is Λ in both passes
      for (int h = 0; h < HKV; ++h) {
        cache.head(0, h).segments(p, segs[h]);
        segs[h].push_back({k.data() + p * kv_row + h * d, v.data() + p * kv_row + h * d, p, chunk, kv_row});
      }
      AttentionArgs a;
      a.q = q.data() + p * H * d;
      a.out = pass == 0 ? o1.data() : o2.data();
      a.n = chunk;
      a.pos0 = p;
      a.n_heads = H;
      a.n_kv_heads = HKV;
      a.head_dim = d;
      a.segments = &segs;
      a.kinds = &kinds;
      a.window = w;
      attention(a, pool);
      for (int h = 0; h < HKV; ++h)
        cache.head(0, h).append(k.data() + p * kv_row + h * d, v.data() + p * kv_row + h * d, chunk, kv_row, p);
      cache.advance(chunk);
    }
    for (size_t i = 0; i < o1.size(); ++i) ASSERT_NEAR(o1[i], o2[i], 1e-5) << "chunk ending at " << p + chunk;
    p += chunk;
  }
  ASSERT_EQ(p, total);
  // Memory: streaming heads hold exactly sink + recent rows; full heads whole pages.
  EXPECT_EQ(streaming.bytes(), (size_t)HKV * 2 * sizeof(float) * (w.sink + w.recent) * d);
  EXPECT_EQ(full.bytes(), (size_t)HKV * 2 * sizeof(float) * 2 * kPageTokens * d);
}

}  // namespace
}  // namespace duo
