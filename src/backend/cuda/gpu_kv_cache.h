// One sequence's KV cache on the GPU, in the layout of attention.cuh:
//  - retrieval heads: pages of kPageTokens rows in one pool for all layers (K and V pools
//    separately), addressed through a per-layer page table [n_kv_heads][max_pages]. Pages are
//    added as the sequence grows (PagePool maps memory as needed);
//  - streaming heads: per layer a buffer of sink + recent rows per KV head (ring layout), whose
//    size never changes.
// gemma3's local layers (ModelConfig::is_local) hold every head as a no-sink streaming head of
// local_window rows whatever the plan says, as the CPU cache (CpuForward::layer_windows,
// docs/architecture.md "gemma3"): the plan's kinds and window apply to the other layers.
// The plan's kv_type picks the retrieval heads' page format: bf16 (Default) or KIVI q8 / q4
// (kv/kv_quant.h: quantized pages in the same pools and page tables, plus per retrieval head
// bf16 rows for its first sink16 positions and its last, incomplete group; see attention.cuh).
// Byte accounting is the one both backends follow (kv/kv_bytes.h: whole pages for retrieval
// heads, sink + recent rows for streaming heads, the sink and residual rows of quantized heads):
// bytes() equals the CPU cache's bytes() for the same plan, type and length (for bf16: half of
// the CPU's default f32 cache).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "backend/cuda/attention.cuh"
#include "backend/cuda/device_memory.h"
#include "backend/cuda/page_pool.h"
#include "duo/head_plan.h"
#include "model/config.h"

namespace duo::cuda {

class GpuKvCache {
 public:
  // max_tokens: the longest the sequence may get (sizes page tables; memory is only used as
  // pages are reserved). Work is queued on `stream`. pool: the shared page pool its retrieval
  // heads take pages from (its page size must be this plan's page_bytes); nullptr: a pool of
  // its own, sized for max_tokens.
  GpuKvCache(const ModelConfig& cfg, const HeadPlan& plan, int64_t max_tokens, cudaStream_t stream,
             std::shared_ptr<KvPagePool> pool = nullptr);
  ~GpuKvCache();
  GpuKvCache(const GpuKvCache&) = delete;
  GpuKvCache& operator=(const GpuKvCache&) = delete;

  const HeadPlan& plan() const { return plan_; }  // as given (local layers' entries included)
  KvType type() const { return type_; }  // BF16, Q8 or Q4
  // Unique among the caches of this process (a captured decode graph belongs to one cache).
  uint64_t id() const { return id_; }
  int64_t n_past() const { return n_past_; }
  void advance(int64_t n) { n_past_ += n; }
  int64_t max_tokens() const { return max_tokens_; }

  // Gives every retrieval head pages for positions < end and queues the new page-table
  // entries to the device (no host synchronisation). Throws duo::Error when end exceeds
  // max_tokens or the GPU is out of memory (with the bytes needed).
  void reserve(int64_t end);

  // The device view of layer l for the attention kernels.
  const LayerKv& layer(int l) const { return views_[l]; }
  int retrieval_heads(int l) const { return retrieval_[l]; }

  size_t bytes() const { return bytes(HeadKind::Retrieval) + bytes(HeadKind::Streaming); }
  size_t bytes(HeadKind kind) const;
  // Device memory this cache holds (its pages, or its own pool's mapped memory; ring buffers,
  // page tables).
  size_t device_bytes() const;
  // Bytes the K and V of a sequence of n tokens take under `plan` (what bytes() will say).
  static size_t bytes_for(const ModelConfig& cfg, const HeadPlan& plan, int64_t n);
  // One window a layer: local_window for gemma3's local layers, 0 for the others; empty for a
  // model without local layers (CpuForward::layer_windows' rule, kv_plan_bytes' argument).
  static std::vector<int> layer_windows(const ModelConfig& cfg);
  // Device memory a cache created for `capacity` tokens holds once it has n (what
  // device_bytes() will say): the K/V pages as bytes_for, the streaming buffers of every layer
  // with streaming heads (all its heads' rows), page tables and small tables; pool memory is
  // mapped in slabs (PagePool), so the real figure can exceed this by up to a slab a pool.
  static size_t device_bytes_for(const ModelConfig& cfg, const HeadPlan& plan, int64_t capacity, int64_t n);
  // The type a plan's kv_type gives this cache (Default -> BF16); fails for f32 / f16.
  static KvType resolve_type(KvType t);
  // Bytes of one K (or V) page of a retrieval head.
  static size_t page_bytes(KvType type, int head_dim);

  void clear();

  // Benchmarks: the cache holds n positions of seeded random keys and values, as if a prompt
  // of n tokens had been pre-filled (decode speed depends on how much is read, not on values).
  void fill_random(int64_t n, uint64_t seed);

 private:
  ModelConfig cfg_;
  HeadPlan plan_;
  int64_t max_tokens_;
  cudaStream_t stream_;
  KvType type_ = KvType::BF16;
  int n_layers_, n_kv_, d_;
  std::vector<HeadKind> kinds_of_;  // [layer][kv head] as stored: local layers all streaming
  std::vector<StreamingWindow> windows_;  // a layer's streaming window (the plan's, or a local layer's)
  int sink16_ = 0;                  // quantized: bf16 sink rows a retrieval head
  int max_pages_;                   // pages a retrieval head can have
  std::vector<int> retrieval_;      // retrieval heads a layer
  int64_t n_retrieval_ = 0, n_streaming_ = 0;

  std::shared_ptr<KvPagePool> pool_;
  bool own_pool_ = false;
  std::vector<int32_t> pages_;      // the pool pages this cache holds (returned on clear / destruction)
  DeviceBuffer page_table_;         // [layer][kv head][max_pages] int32
  int32_t* host_table_ = nullptr;   // pinned mirror
  DeviceBuffer k_ring_, v_ring_;    // per layer with streaming heads: [kv head][its window's rows][d]
  DeviceBuffer kinds_;              // [layer][kv head] uint8
  // Quantized caches: bf16 sink and residual rows of every retrieval head, and each layer's
  // head -> retrieval slot table ([layer][kv head] int32, -1 for streaming heads).
  DeviceBuffer k_sink_, v_sink_, k_resid_, v_resid_, slots_;
  std::vector<LayerKv> views_;

  uint64_t id_ = 0;
  int64_t pages_per_head_ = 0;  // pages every retrieval head has
  int64_t n_past_ = 0;
};

}  // namespace duo::cuda
