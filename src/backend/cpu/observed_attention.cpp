#include "backend/cpu/observed_attention.h"

#include <algorithm>
#include <vector>

#include "backend/cpu/kv_segment.h"

namespace duo {

CpuObservedAttention::CpuObservedAttention(int layer_index, const AttentionArgs& args) : args_(args) {
  layer = layer_index;
  n_heads = args.n_heads;
  n_kv_heads = args.n_kv_heads;
  head_dim = args.head_dim;
  pos0 = args.pos0;
  n = args.n;
  q = args.q;
}

void CpuObservedAttention::keys(int kv_head, int64_t last, const KeyRun& visit) const {
  const int d = args_.head_dim;
  std::vector<float> krow, vrow;
  for (const KvSegment& seg : (*args_.segments)[kv_head]) {
    const int64_t m = std::min(seg.n, last - seg.pos0 + 1);  // rows at positions <= last
    if (m <= 0) continue;
    if (seg.k) {
      visit(seg.pos0, m, seg.k, seg.stride);
      continue;
    }
    krow.resize(d);
    vrow.resize(d);
    for (int64_t r = 0; r < m; ++r) {  // 16-bit or quantized rows
      segment_rows(seg, r, 1, d, krow.data(), vrow.data());
      visit(seg.pos0 + r, 1, krow.data(), d);
    }
  }
}

}  // namespace duo
