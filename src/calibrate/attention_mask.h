// The mask of a calibration attention call, chosen at run time: causal (retrieval heads) or the
// streaming window (streaming heads). The mask policies the kernels are instantiated with, and
// the rule itself, are duo/duo_policy.h's (CausalMask / StreamingMask over int64_t positions).
#pragma once
#include <cstdint>

#include "duo/duo_policy.h"

namespace duo {

struct AttentionMask {
  enum class Kind { Causal, Streaming } kind = Kind::Causal;
  int sink = 0, recent = 0;
  static AttentionMask causal() { return {}; }
  static AttentionMask streaming(int sink, int recent) { return {Kind::Streaming, sink, recent}; }
  StreamingWindow window() const { return {sink, recent}; }
};

}  // namespace duo
