// The shared KV page pool's bookkeeping against a plain model of it (a set of pages in use):
// random takes and gives never hand out a page twice, reuse freed pages lowest first before
// raising the high-water mark, and refuse what does not fit without taking anything.
#include "kv/page_allocator.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <set>

namespace duo {
namespace {

TEST(PageAllocator, RandomTakesAndGivesMatchAModel) {
  for (uint32_t seed = 1; seed <= 20; ++seed) {
    std::mt19937 rng(seed);
    const int64_t cap = 1 + rng() % 300;
    PageAllocator a(cap);
    std::set<int32_t> in_use;
    std::vector<std::vector<int32_t>> owners;  // pages held by pretend sequences
    int64_t high = 0;
    for (int op = 0; op < 400; ++op) {
      if (owners.empty() || rng() % 3) {
        const int64_t n = rng() % 40;
        std::vector<int32_t> got;
        if (n > cap - (int64_t)in_use.size()) {
          EXPECT_THROW(a.take(n, got), Error);
          EXPECT_TRUE(got.empty());
          continue;
        }
        // What a model of the policy expects: freed pages below the high-water mark, lowest
        // first, then fresh pages above it.
        std::vector<int32_t> want;
        for (int32_t p = 0; p < high && (int64_t)want.size() < n; ++p)
          if (!in_use.count(p)) want.push_back(p);
        while ((int64_t)want.size() < n) want.push_back((int32_t)high++);
        a.take(n, got);
        EXPECT_EQ(got, want) << "seed " << seed << " op " << op;
        for (int32_t p : got) EXPECT_TRUE(in_use.insert(p).second) << "page " << p << " handed out twice";
        owners.push_back(got);
      } else {
        const size_t k = rng() % owners.size();
        a.give(owners[k]);
        for (int32_t p : owners[k]) in_use.erase(p);
        owners.erase(owners.begin() + (long)k);
      }
      ASSERT_EQ(a.used(), (int64_t)in_use.size());
      ASSERT_EQ(a.free(), cap - (int64_t)in_use.size());
      ASSERT_EQ(a.high_water(), high);
      ASSERT_LE(a.high_water(), cap);
    }
    for (const auto& o : owners) a.give(o);
    EXPECT_EQ(a.used(), 0);
  }
}

TEST(PageAllocator, RefusesForeignAndDoubleReturns) {
  PageAllocator a(8);
  std::vector<int32_t> p;
  a.take(3, p);
  EXPECT_THROW(a.give({5}), Error);  // never handed out
  a.give({p[1]});
  EXPECT_THROW(a.give({p[1]}), Error);  // given twice
  EXPECT_THROW(a.give({-1}), Error);
  EXPECT_THROW(a.give({p[0], p[0]}), Error);  // twice in one list: nothing returned
  EXPECT_EQ(a.used(), 2);
  std::vector<int32_t> q;
  EXPECT_THROW(a.take(7, q), Error);  // 6 free
  EXPECT_TRUE(q.empty());
  EXPECT_EQ(a.used(), 2);
  a.take(6, q);
  EXPECT_EQ(q.front(), p[1]);  // the freed page first
  EXPECT_EQ(a.free(), 0);
}

}  // namespace
}  // namespace duo
