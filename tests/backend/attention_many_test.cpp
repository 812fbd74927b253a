// attention_many (the sequences of a batched step in one go) against one attention() call
// per sequence: bitwise equal outputs for pre-fill calls and up to kExactDecodeCalls decoders,
// within rounding for more decoders; both head kinds, several thread counts, float and 16-bit
// caches; and against the plain reference.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "backend/cpu/attention.h"
#include "core/thread_pool.h"

namespace duo {
namespace {

// One sequence: cached keys/values, queries and keys of its new rows, its head kinds and window.
struct Seq {
  int64_t n_cached = 0, n_new = 0;
  HeadKind kind = HeadKind::Retrieval;
  StreamingWindow w;
  std::vector<float> kc, vc, kn, vn, q;
  std::vector<std::vector<KvSegment>> segs;
  std::vector<HeadKind> kinds;
  std::unique_ptr<KvCache> cache;
};

constexpr int kHeads = 9, kKv = 3, kD = 64;

void build(Seq& s, std::mt19937& rng, KvType type) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  auto fill = [&](std::vector<float>& v, size_t n, float scale) {
    v.resize(n);
    for (auto& x : v) x = scale * nd(rng);
  };
  const int64_t row = (int64_t)kKv * kD;
  fill(s.kc, s.n_cached * row, 1.0f);
  fill(s.vc, s.n_cached * row, 1.0f);
  fill(s.kn, s.n_new * row, 1.0f);
  fill(s.vn, s.n_new * row, 1.0f);
  fill(s.q, s.n_new * kHeads * kD, 2.0f);
  HeadPlan plan = HeadPlan::uniform(1, kKv, s.kind, s.w);
  plan.kv_type = type;
  s.cache = std::make_unique<KvCache>(1, kKv, kD, plan);
  for (int h = 0; h < kKv; ++h) s.cache->head(0, h).append(s.kc.data() + h * kD, s.vc.data() + h * kD, s.n_cached, row, 0);
  s.cache->advance(s.n_cached);
  s.segs.assign(kKv, {});
  s.kinds.assign(kKv, s.kind);
  for (int h = 0; h < kKv; ++h) {
    s.cache->head(0, h).segments(s.n_cached, s.segs[h]);
    s.segs[h].push_back({s.kn.data() + h * kD, s.vn.data() + h * kD, s.n_cached, s.n_new, row});
  }
}

AttentionArgs args_of(Seq& s, float* out) {
  AttentionArgs a;
  a.q = s.q.data();
  a.out = out;
  a.n = s.n_new;
  a.pos0 = s.n_cached;
  a.n_heads = kHeads;
  a.n_kv_heads = kKv;
  a.head_dim = kD;
  a.segments = &s.segs;
  a.kinds = &s.kinds;
  a.window = s.w;
  return a;
}

class AttentionMany : public ::testing::TestWithParam<KvType> {};

// `decoders` one-query calls (of the shapes below, cycled) next to three pre-fill chunks; up to
// kExactDecodeCalls decoders every output is bitwise what attention() gives alone, beyond that
// the decoders' (whole keys per head instead of split and merged) are equal within rounding.
void check_many(int decoders, KvType type) {
  std::mt19937 rng(99 + decoders);
  struct Shape {
    int64_t n_cached, n_new;
    HeadKind kind;
    StreamingWindow w;
  };
  const Shape decode[] = {{700, 1, HeadKind::Retrieval, {}},     {40, 1, HeadKind::Streaming, {4, 16}},
                          {300, 1, HeadKind::Retrieval, {}},     {500, 1, HeadKind::Streaming, {8, 64}},
                          {3, 1, HeadKind::Retrieval, {}},       {130, 1, HeadKind::Retrieval, {}}};
  const Shape chunks[] = {{0, 70, HeadKind::Retrieval, {}}, {90, 23, HeadKind::Streaming, {2, 32}},
                          {200, 3, HeadKind::Retrieval, {}}};
  std::vector<Shape> shapes;
  for (int i = 0; i < decoders; ++i) {
    shapes.push_back(decode[i % std::size(decode)]);
    if (i < (int)std::size(chunks)) shapes.push_back(chunks[i]);
  }
  std::vector<Seq> seqs(shapes.size());
  for (size_t i = 0; i < seqs.size(); ++i) {
    seqs[i].n_cached = shapes[i].n_cached;
    seqs[i].n_new = shapes[i].n_new;
    seqs[i].kind = shapes[i].kind;
    seqs[i].w = shapes[i].w;
    build(seqs[i], rng, type);
  }
  const bool exact = decoders <= (int)kExactDecodeCalls;
  for (int threads : {1, 2, 3}) {
    ThreadPool pool(threads);
    std::vector<std::vector<float>> alone(seqs.size()), together(seqs.size()), ref(seqs.size());
    std::vector<AttentionArgs> calls;
    for (size_t i = 0; i < seqs.size(); ++i) {
      const size_t n = seqs[i].q.size();
      alone[i].assign(n, 0.0f);
      together[i].assign(n, -1.0f);
      ref[i].assign(n, 0.0f);
      attention(args_of(seqs[i], alone[i].data()), pool);
      attention_ref(args_of(seqs[i], ref[i].data()));
      calls.push_back(args_of(seqs[i], together[i].data()));
    }
    attention_many(calls, pool);
    for (size_t i = 0; i < seqs.size(); ++i) {
      double err = 0, diff = 0;
      for (size_t j = 0; j < ref[i].size(); ++j) {
        err = std::max(err, (double)std::fabs(together[i][j] - ref[i][j]));
        diff = std::max(diff, (double)std::fabs(together[i][j] - alone[i][j]));
      }
      if (exact || seqs[i].n_new > 1) {
        EXPECT_EQ(together[i], alone[i]) << "sequence " << i << ", " << threads << " threads, " << decoders
                                         << " decoders";
      } else {
        EXPECT_LT(diff, 1e-5) << "sequence " << i << ", " << decoders << " decoders";
      }
      EXPECT_LT(err, 1e-4) << "sequence " << i;
    }
  }
}

TEST_P(AttentionMany, EqualsOneCallPerSequence) {
  for (int decoders : {1, 3, 4}) check_many(decoders, GetParam());
}

TEST_P(AttentionMany, ManyDecodersEqualWithinRounding) {
  for (int decoders : {5, 9, 32}) check_many(decoders, GetParam());
}

INSTANTIATE_TEST_SUITE_P(KvTypes, AttentionMany, ::testing::Values(KvType::F32, KvType::F16, KvType::BF16),
                         [](const auto& info) { return std::string(to_string(info.param)); });

}  // namespace
}  // namespace duo
