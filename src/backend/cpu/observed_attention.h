// The CPU attention's inputs (AttentionArgs: queries and KvSegments) shown to an observer
// through the seam's backend-neutral view (engine/attention_observer.h).
#pragma once
#include "backend/cpu/attention.h"
#include "engine/attention_observer.h"

namespace duo {

class CpuObservedAttention final : public ObservedAttention {
 public:
  // `args` must outlive this view.
  CpuObservedAttention(int layer, const AttentionArgs& args);
  // The head's segments in order, each cut at `last`; f32 segments are shown in place, the
  // others one row at a time, converted to floats (segment_rows).
  void keys(int kv_head, int64_t last, const KeyRun& visit) const override;

 private:
  const AttentionArgs& args_;
};

}  // namespace duo
