// The two attention masks of DuoAttention as policy types for blockwise kernels, shared by the
// CPU calibration kernels and (through DUO_HD) CUDA device code:
//   CausalMask  key j visible to query i iff j <= i                               (retrieval heads)
//   LambdaMask  iff j <= i and (j < sink or j > i - recent)   (streaming heads: sinks + recent window)
// any()/all(): some / every (i, j) with i in [i0, i1), j in [j0, j1) visible (non-empty ranges),
// so a kernel skips invisible blocks and drops the per-element test in fully visible ones.
#pragma once
#include <cstdint>

#include "core/host_device.h"

namespace duo {

struct CausalMask {
  DUO_HD bool visible(int64_t i, int64_t j) const { return j <= i; }
  DUO_HD bool any(int64_t, int64_t i1, int64_t j0, int64_t) const { return j0 <= i1 - 1; }
  DUO_HD bool all(int64_t i0, int64_t, int64_t, int64_t j1) const { return j1 - 1 <= i0; }
};

struct LambdaMask {
  int64_t sink = 128, recent = 256;
  DUO_HD bool visible(int64_t i, int64_t j) const { return j <= i && (j < sink || j > i - recent); }
  DUO_HD bool any(int64_t i0, int64_t i1, int64_t j0, int64_t j1) const {
    return j0 <= i1 - 1 && (j0 < sink || j1 - 1 > i0 - recent);
  }
  // Causal everywhere, and the invisible gap [sink, i - recent] of the last row (the widest
  // gap) misses the key range.
  DUO_HD bool all(int64_t i0, int64_t i1, int64_t j0, int64_t j1) const {
    const int64_t gap0 = sink, gap1 = i1 - 1 - recent;
    return j1 - 1 <= i0 && (gap0 > gap1 || j1 - 1 < gap0 || j0 > gap1);
  }
};

// A mask chosen at run time.
struct AttentionMask {
  enum class Kind { Causal, Lambda } kind = Kind::Causal;
  int64_t sink = 0, recent = 0;
  static AttentionMask causal() { return {}; }
  static AttentionMask lambda(int64_t sink, int64_t recent) { return {Kind::Lambda, sink, recent}; }
};

}  // namespace duo
