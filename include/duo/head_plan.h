// Which KV heads keep everything (retrieval heads) and which keep only attention sinks plus
// a recent window (streaming heads). This is the seam DuoAttention plugs into: the same
// forward runs `full` (all retrieval), `streaming` (all streaming) and `duo` (a pattern).
#pragma once
#include <cstdint>
#include <vector>

#include "duo/duo_policy.h"
#include "duo/kv_type.h"

namespace duo {

// HeadKind and StreamingWindow (the rule itself) are duo/duo_policy.h's.

struct HeadPlan {
  StreamingWindow window;
  // How the cache stores keys and values (Default: the device's own format, f32 on the CPU and
  // bf16 on CUDA).
  KvType kv_type = KvType::Default;
  std::vector<std::vector<HeadKind>> kinds;  // [layer][kv head]

  static HeadPlan uniform(int n_layers, int n_kv_heads, HeadKind kind, StreamingWindow w = {}) {
    HeadPlan p;
    p.window = w;
    p.kinds.assign(n_layers, std::vector<HeadKind>(n_kv_heads, kind));
    return p;
  }
  // Is key position j visible to a query at position i for a head of this kind?
  bool visible(HeadKind kind, int64_t i, int64_t j) const { return duo::visible(kind, window, i, j); }
};

}  // namespace duo
