// The CPU backend's KV cache of one sequence, per layer and per KV head, following a HeadPlan:
//  - retrieval heads: a growing cache in pages of kPageTokens positions (duo/duo_policy.h);
//  - streaming heads: `sink` first positions plus a ring buffer of the last `recent` ones,
//    so their memory is constant however long the sequence gets.
// Rows are stored as the plan's KvType says (kv_type.h): f32 (default), bf16 or f16 rows, or
// KIVI-quantized pages (q8 / q4, kv_quant.h) for retrieval heads, whose first sink16 positions
// and last incomplete group of 64 stay in bf16 rows (a group is quantized when it completes).
// The cache exposes what a head can attend to as KvSegments: runs of consecutive positions.
// What is not the CPU's own lives in src/kv/ (shared with the CUDA cache): the byte accounting
// (kv_bytes.h, which bytes() follows), the row and group codecs (kv_codec.h), the quantized
// page arithmetic (kv_quant.h). Callers above the backend seam see it only as a SequenceState.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "duo/head_plan.h"
#include "backend/cpu/kv_segment.h"
#include "duo/kv_type.h"

namespace duo {

class HeadCache {
 public:
  // type: F32, BF16, F16, Q8 or Q4 (Default means F32). Quantized types need head_dim % 64 == 0.
  HeadCache(HeadKind kind, int head_dim, StreamingWindow w, KvType type = KvType::F32);

  HeadKind kind() const { return kind_; }
  KvType type() const { return type_; }
  // Appends positions [n_past, n_past + n) (rows at k/v with `stride` floats between rows).
  // Streaming heads keep only what a later query can still see.
  void append(const float* k, const float* v, int64_t n, int64_t stride, int64_t n_past);
  // Segments currently held (positions < n_past), in increasing position order.
  void segments(int64_t n_past, std::vector<KvSegment>& out) const;
  // Bytes allocated for keys and values.
  size_t bytes() const;
  // Bytes a head of this kind holds once its sequence has n_past positions (kv/kv_bytes.h, the
  // type's Default as the CPU resolves it); bytes() follows this formula.
  static size_t bytes_for(HeadKind kind, int head_dim, StreamingWindow w, int64_t n_past, KvType type = KvType::F32);

 private:
  using Buffer = std::unique_ptr<uint8_t[]>;
  HeadKind kind_;
  int d_;
  StreamingWindow w_;
  KvType type_;
  bool quantized_;    // a retrieval head with q8 / q4 pages
  int sink16_ = 0;    // quantized: positions [0, sink16_) kept in bf16 rows
  size_t page_bytes_;  // one K (or V) page
  // Retrieval: pages of kPageTokens positions each for K and for V.
  std::vector<Buffer> k_pages_, v_pages_;
  // Streaming: sink rows then ring rows, one buffer each for K and V.
  Buffer k_ring_, v_ring_;
  // Quantized retrieval heads: the sink rows and the incomplete last group (slot = pos % 64).
  Buffer k_sink_, v_sink_, k_resid_, v_resid_;
};

class KvCache {
 public:
  // The plan's kv_type picks the storage (Default: f32). layer_window (empty, or one entry per
  // layer): 0 for a layer whose heads follow the plan, w > 0 for a layer with its own sliding
  // window (gemma3's local layers): all its heads keep the last w positions and no sink,
  // whatever the plan says (CpuForward::new_cache decides this).
  KvCache(int n_layers, int n_kv_heads, int head_dim, HeadPlan plan, std::vector<int> layer_window = {});

  const HeadPlan& plan() const { return plan_; }
  // The sliding window of a layer's heads (0: the plan's kinds and window apply).
  int layer_window(int layer) const { return layer_window_.empty() ? 0 : layer_window_[(size_t)layer]; }
  KvType type() const { return type_; }
  int64_t n_past() const { return n_past_; }
  void advance(int64_t n) { n_past_ += n; }
  HeadCache& head(int layer, int kv_head) { return heads_[(size_t)layer * n_kv_ + kv_head]; }
  const HeadCache& head(int layer, int kv_head) const { return heads_[(size_t)layer * n_kv_ + kv_head]; }
  int n_kv_heads() const { return n_kv_; }
  // Total bytes of K and V held, and split by head kind.
  size_t bytes() const;
  size_t bytes(HeadKind kind) const;
  // What bytes(kind) will be for a cache with this plan (and these layer windows, as the
  // constructor takes them: a windowed layer's heads count as streaming heads of that window)
  // once it holds n_past positions.
  static size_t bytes_for(const HeadPlan& plan, int head_dim, int64_t n_past, HeadKind kind,
                          const std::vector<int>& layer_window = {});
  static size_t bytes_for(const HeadPlan& plan, int head_dim, int64_t n_past,
                          const std::vector<int>& layer_window = {});
  void clear();
  // Fills an empty cache with n positions of seeded random keys and values, as if n tokens had
  // run (ModelBackend::fill_kv_random: decode speed depends on how much a head reads).
  void fill_random(int64_t n, uint64_t seed);

 private:
  void make_heads();
  int n_layers_, n_kv_, d_;
  HeadPlan plan_;
  std::vector<int> layer_window_;
  KvType type_;  // plan_.kv_type with Default resolved
  std::vector<HeadCache> heads_;
  int64_t n_past_ = 0;
};

// The CPU cache's type for a plan's kv_type (Default -> F32).
inline KvType cpu_kv_type(KvType t) { return t == KvType::Default ? KvType::F32 : t; }

}  // namespace duo
