// Ring-buffer bookkeeping of streaming heads and paging of retrieval heads.
#include <gtest/gtest.h>

#include "backend/cpu/kv_cache.h"

namespace duo {
namespace {

// Every row carries its own position in all d values, so segments can be checked exactly.
void append_positions(HeadCache& h, int d, int64_t from, int64_t n) {
  std::vector<float> rows(n * d);
  for (int64_t r = 0; r < n; ++r)
    for (int c = 0; c < d; ++c) rows[r * d + c] = (float)(from + r);
  h.append(rows.data(), rows.data(), n, d, from);
}

std::vector<int64_t> positions_held(const HeadCache& h, int64_t n_past) {
  std::vector<KvSegment> segs;
  h.segments(n_past, segs);
  std::vector<int64_t> pos;
  for (const auto& s : segs)
    for (int64_t r = 0; r < s.n; ++r) {
      EXPECT_EQ(s.k[r * s.stride], (float)(s.pos0 + r)) << "row content does not match its position";
      pos.push_back(s.pos0 + r);
    }
  return pos;
}

TEST(KvCache, StreamingRingWrapsAndKeepsSinkPlusRecent) {
  const int d = 8;
  HeadCache h(HeadKind::Streaming, d, {3, 5});
  int64_t n_past = 0;
  for (int64_t chunk : {2, 1, 4, 9, 1, 1, 13, 2}) {
    append_positions(h, d, n_past, chunk);
    n_past += chunk;
    std::vector<int64_t> expect;
    for (int64_t p = 0; p < std::min<int64_t>(3, n_past); ++p) expect.push_back(p);
    for (int64_t p = std::max<int64_t>(3, n_past - 5); p < n_past; ++p) expect.push_back(p);
    EXPECT_EQ(positions_held(h, n_past), expect) << "after " << n_past << " positions";
  }
  EXPECT_EQ(h.bytes(), 2 * sizeof(float) * 8 * d);
}

TEST(KvCache, RetrievalPagesHoldEverything) {
  const int d = 4;
  HeadCache h(HeadKind::Retrieval, d, {});
  append_positions(h, d, 0, 300);
  append_positions(h, d, 300, 1);
  auto pos = positions_held(h, 301);
  ASSERT_EQ(pos.size(), 301u);
  for (int64_t i = 0; i < 301; ++i) EXPECT_EQ(pos[i], i);
  EXPECT_EQ(h.bytes(), 2 * sizeof(float) * 2 * kPageTokens * d);
}

TEST(KvCache, PlanShapeIsChecked) {
  HeadPlan plan = HeadPlan::uniform(2, 3, HeadKind::Retrieval);
  EXPECT_THROW(KvCache(3, 3, 64, plan), std::runtime_error);
  EXPECT_THROW(KvCache(2, 4, 64, plan), std::runtime_error);
  EXPECT_THROW(HeadCache(HeadKind::Streaming, 8, {4, 0}), std::runtime_error);
}

TEST(KvCache, BytesByKind) {
  HeadPlan plan = HeadPlan::uniform(2, 2, HeadKind::Retrieval, {4, 8});
  plan.kinds[1][0] = HeadKind::Streaming;
  KvCache c(2, 2, 16, plan);
  EXPECT_EQ(c.bytes(HeadKind::Streaming), 2 * sizeof(float) * 12 * 16);
  EXPECT_EQ(c.bytes(HeadKind::Retrieval), 0u);  // pages are allocated on first use
}

}  // namespace
}  // namespace duo
