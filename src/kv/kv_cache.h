// KV cache of one sequence, per layer and per KV head, following a HeadPlan:
//  - retrieval heads: a growing cache in pages of kPageTokens positions;
//  - streaming heads: `sink` first positions plus a ring buffer of the last `recent` ones,
//    so their memory is constant however long the sequence gets.
// The cache exposes what a head can attend to as KvSegments: runs of consecutive positions.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "kv/head_policy.h"

namespace duo {

// Keys and values of positions [pos0, pos0 + n) of one head; row r is at k + r * stride.
struct KvSegment {
  const float* k = nullptr;
  const float* v = nullptr;
  int64_t pos0 = 0;
  int64_t n = 0;
  int64_t stride = 0;  // floats between consecutive rows
};

class HeadCache {
 public:
  static constexpr int64_t kPageTokens = 256;
  HeadCache(HeadKind kind, int head_dim, StreamingWindow w);

  HeadKind kind() const { return kind_; }
  // Appends positions [n_past, n_past + n) (rows at k/v with `stride` floats between rows).
  // Streaming heads keep only what a later query can still see.
  void append(const float* k, const float* v, int64_t n, int64_t stride, int64_t n_past);
  // Segments currently held (positions < n_past), in increasing position order.
  void segments(int64_t n_past, std::vector<KvSegment>& out) const;
  // Bytes allocated for keys and values.
  size_t bytes() const;
  // Bytes a head of this kind holds once its sequence has n_past positions: retrieval heads
  // grow a page at a time, streaming heads are constant. bytes() follows this formula, so
  // admission control can price a sequence exactly before running it.
  static size_t bytes_for(HeadKind kind, int head_dim, StreamingWindow w, int64_t n_past);

 private:
  HeadKind kind_;
  int d_;
  StreamingWindow w_;
  // Retrieval: pages of kPageTokens rows each for K and for V.
  std::vector<std::unique_ptr<float[]>> k_pages_, v_pages_;
  // Streaming: sink rows then ring rows, one buffer each for K and V.
  std::unique_ptr<float[]> k_ring_, v_ring_;
};

class KvCache {
 public:
  KvCache(int n_layers, int n_kv_heads, int head_dim, HeadPlan plan);

  const HeadPlan& plan() const { return plan_; }
  int64_t n_past() const { return n_past_; }
  void advance(int64_t n) { n_past_ += n; }
  HeadCache& head(int layer, int kv_head) { return heads_[(size_t)layer * n_kv_ + kv_head]; }
  const HeadCache& head(int layer, int kv_head) const { return heads_[(size_t)layer * n_kv_ + kv_head]; }
  int n_kv_heads() const { return n_kv_; }
  // Total bytes of K and V held, and split by head kind.
  size_t bytes() const;
  size_t bytes(HeadKind kind) const;
  // What bytes(kind) will be for a cache with this plan once it holds n_past positions.
  static size_t bytes_for(const HeadPlan& plan, int head_dim, int64_t n_past, HeadKind kind);
  static size_t bytes_for(const HeadPlan& plan, int head_dim, int64_t n_past);
  void clear();

 private:
  int n_layers_, n_kv_, d_;
  HeadPlan plan_;
  std::vector<HeadCache> heads_;
  int64_t n_past_ = 0;
};

}  // namespace duo
