// libFuzzer entry for the head-pattern TSV parser: any text either parses into a consistent
// gate matrix or fails with duo::Error, and a parsed matrix binarizes.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/error.h"
#include "io/head_pattern.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  duo::GateMatrix g;
  try {
    g = duo::parse_gates_tsv(std::string(reinterpret_cast<const char*>(data), size), "fuzz");
  } catch (const duo::Error&) {
    return 0;
  }
  if (g.n_layers <= 0 || g.n_kv_heads <= 0 || g.values.size() != size_t(g.n_layers) * size_t(g.n_kv_heads))
    __builtin_trap();
  for (float v : g.values)
    if (!std::isfinite(v)) __builtin_trap();
  const auto by_threshold = duo::binarize_threshold(g, 0.5f);
  const auto by_ratio = duo::binarize_ratio(g, 0.25);
  if ((int)by_threshold.size() != g.n_layers || (int)by_ratio.size() != g.n_layers) __builtin_trap();
  return 0;
}
