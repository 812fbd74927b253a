// The closed forms of attention work against counting the mask pair by pair.
#include <gtest/gtest.h>

#include "kv/attention_cost.h"

namespace duo {
namespace {

double brute_pairs(const HeadPlan& p, HeadKind kind, int64_t pos0, int64_t n) {
  double c = 0;
  for (int64_t i = pos0; i < pos0 + n; ++i)
    for (int64_t j = 0; j <= i; ++j) c += p.visible(kind, i, j);
  return c;
}

TEST(AttentionCost, VisiblePairsMatchTheMask) {
  for (StreamingWindow w : {StreamingWindow{4, 16}, StreamingWindow{0, 1}, StreamingWindow{64, 256}}) {
    const HeadPlan p = HeadPlan::uniform(1, 1, HeadKind::Retrieval, w);
    for (int64_t pos0 : {0, 3, 19, 20, 21, 300, 700})
      for (int64_t n : {1, 2, 17, 64, 400}) {
        EXPECT_EQ(visible_pairs(HeadKind::Retrieval, w, pos0, n), brute_pairs(p, HeadKind::Retrieval, pos0, n));
        EXPECT_EQ(visible_pairs(HeadKind::Streaming, w, pos0, n), brute_pairs(p, HeadKind::Streaming, pos0, n))
            << "sink " << w.sink << " recent " << w.recent << " pos0 " << pos0 << " n " << n;
      }
  }
}

TEST(AttentionCost, PrefillFlopsAndDecodeBytes) {
  ModelConfig c;
  c.n_layers = 2, c.n_heads = 8, c.n_kv_heads = 2, c.head_dim = 128;
  HeadPlan plan = HeadPlan::uniform(2, 2, HeadKind::Retrieval, {4, 16});
  plan.kinds[1][1] = HeadKind::Streaming;
  // Chunked or not, a retrieval head sees L (L + 1) / 2 pairs.
  const int64_t L = 1000;
  const double r = L * (L + 1) / 2.0, s = brute_pairs(plan, HeadKind::Streaming, 0, L);
  const double want = 4.0 * 128 * 4 /* query heads a KV head */ * (3 * r + s);
  EXPECT_DOUBLE_EQ(prefill_attention_flops(c, plan, L, L), want);
  EXPECT_DOUBLE_EQ(prefill_attention_flops(c, plan, L, 96), want);
  // Decode: three retrieval heads read all 5000 rows, the streaming head 20, K and V, bf16.
  EXPECT_DOUBLE_EQ(decode_attention_bytes(c, plan, 5000, 2), (3 * 5000.0 + 20) * 2 * 2 * 128);
}

}  // namespace
}  // namespace duo
