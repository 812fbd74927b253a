// DuoAttention head patterns: the gate matrix (one value in [0,1] per layer and KV head,
// TSV with one row per layer, the layout of the reference implementation's
// full_attention_heads.tsv) and its binarization into retrieval/streaming heads.
#pragma once
#include <string>
#include <vector>

#include "duo/head_plan.h"

namespace duo {

struct GateMatrix {
  int n_layers = 0;
  int n_kv_heads = 0;
  std::vector<float> values;  // row-major [layer][kv head]
  float at(int layer, int head) const { return values[(size_t)layer * n_kv_heads + head]; }
};

// Parses a TSV gate matrix; errors name the file, line and column.
GateMatrix load_gates_tsv(const std::string& path);
GateMatrix parse_gates_tsv(const std::string& text, const std::string& origin = "<text>");
void save_gates_tsv(const GateMatrix& g, const std::string& path);

// Retrieval heads are those with gate >= threshold.
std::vector<std::vector<HeadKind>> binarize_threshold(const GateMatrix& g, float threshold);
// The round(ratio * heads) heads with the largest gates are retrieval heads (ties broken by
// position, earlier first), as the reference does with a target sparsity of 1 - ratio.
std::vector<std::vector<HeadKind>> binarize_ratio(const GateMatrix& g, double retrieval_ratio);

// How a ratio's retrieval heads are spread over the layers (--ratio-policy).
//   global            the top round(ratio x all heads) over all layers (binarize_ratio above)
//   per-layer         the same total, spread evenly: each layer keeps its top (total / layers,
//                     rounded down) heads or one more; the layers whose next head has the
//                     largest gate get the extra ones
//   min-per-layer=K   each layer's top K heads, then the rest of the global count by gate over
//                     all layers; when layers x K exceeds the global count, K a layer is kept
//                     (the ratio is exceeded: the guarantee wins)
// Ties are broken by position, earlier first, as in binarize_ratio.
struct RatioPolicy {
  enum class Kind { Global, PerLayer, MinPerLayer };
  Kind kind = Kind::Global;
  int min_per_layer = 0;  // MinPerLayer's K
};
RatioPolicy parse_ratio_policy(const std::string& s);  // "global" | "per-layer" | "min-per-layer=K"
std::string to_string(const RatioPolicy& p);
std::vector<std::vector<HeadKind>> binarize_ratio(const GateMatrix& g, double retrieval_ratio, const RatioPolicy& policy);

// A HeadPlan for a model, checking the pattern's shape against it.
HeadPlan make_head_plan(const std::vector<std::vector<HeadKind>>& kinds, int n_layers, int n_kv_heads,
                        StreamingWindow window, const std::string& origin);

// Fraction of retrieval heads.
double retrieval_fraction(const std::vector<std::vector<HeadKind>>& kinds);

}  // namespace duo
