// Head ranking by needle attention mass (src/eval/head_ranking.cpp) on the hand-set byte model
// (tests/eval/byte_model.h), where each head's attention is known in closed form:
//  - a digit head puts all its attention on the digits, and the only digits of a needle prompt
//    are in its needle: mass 1 for every question row;
//  - an even head spreads attention uniformly: a question row at position i puts
//    (needle length) / (i + 1) on the needle.
// The ranking sums the question rows' mass over every prompt and scales by the largest head.
#include <gtest/gtest.h>

#include "duo/engine.h"
#include "eval/byte_model.h"
#include "eval/head_ranking.h"
#include "eval/needle.h"
#include "io/head_pattern.h"
#include "model/model.h"
#include "tokenizer/chat_template.h"

namespace duo {
namespace {

TEST(HeadRanking, NeedleMassOfHandSetHeads) {
  using M = test::ByteModel;
  test::TempFile file("duo_head_ranking.gguf");
  test::write_byte_model(file.path);
  EngineOptions o;
  o.model_path = file.path;
  o.threads = 2;
  o.chunk = 128;  // several pre-fill chunks: the observer sees each one
  Engine e(o);
  HeadRankingOptions ro;
  ro.lengths = {400, 700};
  ro.depths = {0.2, 0.9};
  ro.seed = 3;
  size_t calls = 0;
  const GateMatrix g = rank_heads_by_needle_mass(e, ro, [&](size_t done, size_t total) {
    EXPECT_EQ(done, ++calls);
    EXPECT_EQ(total, 4u);
  });
  EXPECT_EQ(calls, 4u);
  ASSERT_EQ(g.n_layers, M::kLayers);
  ASSERT_EQ(g.n_kv_heads, M::kKvHeads);

  // The reference, from the prompts the ranking builds (same seeds, same order).
  const ChatTemplate tmpl = ChatTemplate::from_gguf(e.model().gguf());
  double digit_mass = 0, even_mass = 0;
  uint64_t cell = 0;
  for (int64_t L : ro.lengths)
    for (double d : ro.depths) {
      const NeedlePrompt p = build_needle_prompt(e.tokenizer(), &tmpl, NeedleTask::Niah, L, d, ro.seed + cell++);
      const double needle = (double)(p.needle_end - p.needle_begin);
      for (int64_t i = p.question_begin; i < L; ++i) {
        digit_mass += 1.0;
        even_mass += needle / (double)(i + 1);
      }
    }
  for (int l = 0; l < M::kLayers; ++l)
    for (int h = 0; h < M::kKvHeads; ++h) {
      const double want = h == M::digit_head(l) ? 1.0 : even_mass / digit_mass;
      EXPECT_NEAR(g.at(l, h), want, 1e-5) << "layer " << l << " KV head " << h;
    }
  // Half the heads as retrieval heads: exactly the digit heads.
  const auto kinds = binarize_ratio(g, 0.5);
  for (int l = 0; l < M::kLayers; ++l)
    for (int h = 0; h < M::kKvHeads; ++h)
      EXPECT_EQ(kinds[l][h], h == M::digit_head(l) ? HeadKind::Retrieval : HeadKind::Streaming) << l << " " << h;
}

// GQA coverage on a hand-set mass: 2 layers, 4 query heads over 2 KV heads (groups {0, 1}, {2, 3}).
//   layer 0: 8 0 | 1 1      KV means 4, 1
//   layer 1: 3 3 | 0 0      KV means 3, 0       total 16
// At 25%: one KV head, layer 0 head 0 (group mass 8 of 16: 50%); two query heads, the 8 and one 3
// (11/16 = 68.75%) in two KV heads, which the top two KV heads also reach (14/16). At 50%: KV heads
// (0, 0) and (1, 0), 14/16 = 87.5%; query heads 8, 3, 3, 1 (15/16 = 93.75%) in three KV heads, as
// much as the top three KV heads hold (16/16).
TEST(HeadRanking, GqaCoverageOfHandSetMass) {
  NeedleMass m;
  m.n_layers = 2, m.n_heads = 4, m.n_kv_heads = 2;
  m.query = {8, 0, 1, 1, 3, 3, 0, 0};
  const GateMatrix g = gates_of(m);
  EXPECT_FLOAT_EQ(g.at(0, 0), 1.0f);
  EXPECT_FLOAT_EQ(g.at(0, 1), 0.25f);
  EXPECT_FLOAT_EQ(g.at(1, 0), 0.75f);
  EXPECT_FLOAT_EQ(g.at(1, 1), 0.0f);
  const GqaCoverage q = gqa_coverage(m, 0.25);
  EXPECT_EQ(q.kv_kept, 1);
  EXPECT_EQ(q.query_kept, 2);
  EXPECT_DOUBLE_EQ(q.kv_share, 0.5);
  EXPECT_DOUBLE_EQ(q.query_share, 11.0 / 16);
  EXPECT_EQ(q.kv_holding_top_queries, 2);
  EXPECT_EQ(q.kv_for_query_share, 2);
  const GqaCoverage h = gqa_coverage(m, 0.5);
  EXPECT_EQ(h.kv_kept, 2);
  EXPECT_EQ(h.query_kept, 4);
  EXPECT_DOUBLE_EQ(h.kv_share, 14.0 / 16);
  EXPECT_DOUBLE_EQ(h.query_share, 15.0 / 16);
  EXPECT_EQ(h.kv_holding_top_queries, 3);
  EXPECT_EQ(h.kv_for_query_share, 3);
  EXPECT_THROW(gqa_coverage(m, 1.5), std::runtime_error);
}

TEST(HeadRanking, NeedsFullAttention) {
  test::TempFile file("duo_head_ranking_mode.gguf");
  test::write_byte_model(file.path);
  EngineOptions o;
  o.model_path = file.path;
  o.threads = 1;
  o.attention = AttentionMode::Streaming;
  Engine e(o);
  EXPECT_THROW(rank_heads_by_needle_mass(e, {}), std::runtime_error);
}

}  // namespace
}  // namespace duo
