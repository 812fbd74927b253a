// --ratio-policy (io/head_pattern.h RatioPolicy): the head sets of each policy on a small gate
// matrix worked out by hand, and the invariants on a published pattern.
#include <gtest/gtest.h>

#include <algorithm>

#include "core/error.h"
#include "io/head_pattern.h"
#include "test_support.h"

namespace duo {
namespace {

// The retrieval heads as "layer:head" strings, in order.
std::vector<std::string> heads(const std::vector<std::vector<HeadKind>>& k) {
  std::vector<std::string> out;
  for (size_t l = 0; l < k.size(); ++l)
    for (size_t h = 0; h < k[l].size(); ++h)
      if (k[l][h] == HeadKind::Retrieval) out.push_back(std::to_string(l) + ":" + std::to_string(h));
  return out;
}

using V = std::vector<std::string>;

// Layer 0 holds the four best-but-one gates, layer 1 middling ones, layer 2 the best gate and
// the worst: a global ranking starves layer 1 (and mostly layer 2).
const char* kGates =
    "0.9\t0.8\t0.7\t0.6\n"
    "0.5\t0.4\t0.3\t0.2\n"
    "0.1\t0.95\t0.05\t0\n";

TEST(RatioPolicy, HeadSetsOnASmallMatrix) {
  const GateMatrix g = parse_gates_tsv(kGates);
  const RatioPolicy global = parse_ratio_policy("global"), per_layer = parse_ratio_policy("per-layer"),
                    min1 = parse_ratio_policy("min-per-layer=1"), min2 = parse_ratio_policy("min-per-layer=2");
  // Ratio 0.5: 6 of 12 heads.
  EXPECT_EQ(heads(binarize_ratio(g, 0.5, global)), (V{"0:0", "0:1", "0:2", "0:3", "1:0", "2:1"}));
  EXPECT_EQ(heads(binarize_ratio(g, 0.5, global)), heads(binarize_ratio(g, 0.5)));
  EXPECT_EQ(heads(binarize_ratio(g, 0.5, per_layer)), (V{"0:0", "0:1", "1:0", "1:1", "2:0", "2:1"}));
  // Ratio 0.6: 7 heads; per layer 2 each and one more to the layer whose third head is best
  // (layer 0: 0.7, against 0.3 and 0.05).
  EXPECT_EQ(heads(binarize_ratio(g, 0.6, per_layer)), (V{"0:0", "0:1", "0:2", "1:0", "1:1", "2:0", "2:1"}));
  // Ratio 0.25: 3 heads. Globally the three best gates; at least one a layer: each layer's best.
  EXPECT_EQ(heads(binarize_ratio(g, 0.25, global)), (V{"0:0", "0:1", "2:1"}));
  EXPECT_EQ(heads(binarize_ratio(g, 0.25, min1)), (V{"0:0", "1:0", "2:1"}));
  EXPECT_EQ(heads(binarize_ratio(g, 0.25, per_layer)), (V{"0:0", "1:0", "2:1"}));
  // min-per-layer=1 at 0.5: each layer's best (3), then the 3 best of the rest (0.8, 0.7, 0.6).
  EXPECT_EQ(heads(binarize_ratio(g, 0.5, min1)), (V{"0:0", "0:1", "0:2", "0:3", "1:0", "2:1"}));
  // min-per-layer=2 at 0.25: 2 a layer is kept although it exceeds the 3 heads of the ratio.
  EXPECT_EQ(heads(binarize_ratio(g, 0.25, min2)), (V{"0:0", "0:1", "1:0", "1:1", "2:0", "2:1"}));
  // K above the layer's heads: every head.
  EXPECT_EQ(heads(binarize_ratio(g, 0.0, parse_ratio_policy("min-per-layer=9"))).size(), 12u);
  // Ratio 0 and 1.
  EXPECT_TRUE(heads(binarize_ratio(g, 0.0, per_layer)).empty());
  EXPECT_EQ(heads(binarize_ratio(g, 1.0, per_layer)).size(), 12u);
  EXPECT_THROW(binarize_ratio(g, 1.5, per_layer), Error);
}

TEST(RatioPolicy, TiesGoToEarlierLayersAndHeads) {
  const GateMatrix g = parse_gates_tsv("0.5\t0.5\n0.5\t0.5\n0.5\t0.5\n");
  // 4 of 6: one a layer, the extra one to layer 0; within a layer head 0 first.
  EXPECT_EQ(heads(binarize_ratio(g, 0.67, parse_ratio_policy("per-layer"))), (V{"0:0", "0:1", "1:0", "2:0"}));
  EXPECT_EQ(heads(binarize_ratio(g, 0.5, parse_ratio_policy("per-layer"))), (V{"0:0", "1:0", "2:0"}));
  EXPECT_EQ(heads(binarize_ratio(g, 0.34, parse_ratio_policy("min-per-layer=0"))), (V{"0:0", "0:1"}));
}

TEST(RatioPolicy, ParsesAndNames) {
  EXPECT_EQ(parse_ratio_policy("global").kind, RatioPolicy::Kind::Global);
  EXPECT_EQ(parse_ratio_policy("per-layer").kind, RatioPolicy::Kind::PerLayer);
  const RatioPolicy m = parse_ratio_policy("min-per-layer=3");
  EXPECT_EQ(m.kind, RatioPolicy::Kind::MinPerLayer);
  EXPECT_EQ(m.min_per_layer, 3);
  for (const char* s : {"global", "per-layer", "min-per-layer=3"}) EXPECT_EQ(to_string(parse_ratio_policy(s)), s);
  for (const char* bad : {"", "layer", "min-per-layer", "min-per-layer=", "min-per-layer=-1", "min-per-layer=x",
                          "min-per-layer=1.5", "min-per-layer=99999999"})
    EXPECT_THROW(parse_ratio_policy(bad), Error) << bad;
}

// On the reference's Llama-3.1-8B pattern (32 layers x 8 KV heads): per-layer keeps the global
// count with floor or floor + 1 heads a layer; min-per-layer=K at least K a layer and the
// global count when that is larger; every policy keeps each layer's best heads.
TEST(RatioPolicy, InvariantsOnAPublishedPattern) {
  const GateMatrix g = load_gates_tsv(test::fixture_path("patterns/Meta-Llama-3.1-8B-Instruct.tsv"));
  for (double r : {0.1, 0.25, 0.5, 0.75}) {
    const size_t keep = heads(binarize_ratio(g, r)).size();
    for (const char* name : {"per-layer", "min-per-layer=1", "min-per-layer=2", "min-per-layer=6"}) {
      const RatioPolicy p = parse_ratio_policy(name);
      const auto k = binarize_ratio(g, r, p);
      size_t total = 0;
      for (int l = 0; l < 32; ++l) {
        int n = 0;
        float min_ret = 2.0f, max_str = -1.0f;
        for (int h = 0; h < 8; ++h) {
          if (k[l][h] == HeadKind::Retrieval)
            ++n, min_ret = std::min(min_ret, g.at(l, h));
          else
            max_str = std::max(max_str, g.at(l, h));
        }
        if (n > 0 && n < 8) {
          EXPECT_GE(min_ret, max_str) << name << " layer " << l;
        }
        if (p.kind == RatioPolicy::Kind::PerLayer) {
          EXPECT_TRUE(n == (int)(keep / 32) || n == (int)(keep / 32) + 1) << name << " r " << r << " layer " << l;
        } else {
          EXPECT_GE(n, p.min_per_layer) << name << " layer " << l;
        }
        total += (size_t)n;
      }
      EXPECT_EQ(total, p.kind == RatioPolicy::Kind::PerLayer ? keep : std::max(keep, (size_t)32 * p.min_per_layer))
          << name << " r " << r;
    }
  }
}

}  // namespace
}  // namespace duo
