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

GateMatrix rank_heads_by_needle_mass(Engine& engine, const HeadRankingOptions& opts,
                                     const std::function<void(size_t, size_t)>& progress = nullptr);

}  // namespace duo
