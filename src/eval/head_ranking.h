// A training-free stand-in for DuoAttention's gate optimization: rank KV heads by how much
// attention the question tokens of needle prompts pay to the needle under full attention.
// Retrieval heads are the ones that look back at the needle; the ranking becomes a gate
// matrix (scaled to [0, 1]) that binarizes like a calibrated one.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "io/head_pattern.h"

namespace duo {

class Engine;

struct HeadRankingOptions {
  std::vector<int64_t> lengths{1024, 2048};
  std::vector<double> depths{0.1, 0.5, 0.9};
  uint64_t seed = 11;
};

// Needle attention mass of every query head, summed over the probe prompts' question rows
// (row-major [layer][query head]; a KV head's group is g = n_heads / n_kv_heads consecutive heads).
struct NeedleMass {
  int n_layers = 0, n_heads = 0, n_kv_heads = 0;
  std::vector<double> query;
};

NeedleMass measure_needle_mass(Engine& engine, const HeadRankingOptions& opts,
                               const std::function<void(size_t, size_t)>& progress = nullptr);

// The KV heads' gates: each group's total mass, scaled by the largest (as its mean would be).
GateMatrix gates_of(const NeedleMass& m);

// What grouping query heads under a KV head costs a retrieval budget of `fraction` of the heads:
// the needle mass the top KV heads hold (k = round(fraction * layers * KV heads), each holding its
// whole group), against what the same fraction of query heads would hold if each could be kept on
// its own, how many KV heads those query heads sit in, and how many top KV heads it takes to hold
// as much mass as those query heads do.
struct GqaCoverage {
  int kv_kept = 0, query_kept = 0;
  double kv_share = 0, query_share = 0;  // of the total mass
  int kv_holding_top_queries = 0;
  int kv_for_query_share = 0;
};
GqaCoverage gqa_coverage(const NeedleMass& m, double fraction);

GateMatrix rank_heads_by_needle_mass(Engine& engine, const HeadRankingOptions& opts,
                                     const std::function<void(size_t, size_t)>& progress = nullptr);

}  // namespace duo
