// One sequence's KV cache on the GPU, in the layout of attention.cuh:
//  - retrieval heads: pages of kPageTokens rows in one pool for all layers (K and V pools
//    separately), addressed through a per-layer page table [n_kv_heads][max_pages]. Pages are
//    added as the sequence grows (PagePool maps memory as needed);
//  - streaming heads: per layer a buffer of sink + recent rows per KV head (ring layout), whose
//    size never changes.
// Byte accounting follows the CPU KvCache exactly (whole pages for retrieval heads, sink +
// recent rows for streaming heads), in bf16: bytes() is half of KvCache::bytes() for the same
// plan and length.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "backend/cuda/attention.cuh"
#include "backend/cuda/device_memory.h"
#include "backend/cuda/page_pool.h"
#include "kv/head_policy.h"
#include "model/config.h"

namespace duo::cuda {

class GpuKvCache {
 public:
  // max_tokens: the longest the sequence may get (sizes page tables and the pool's address
  // range; memory is only used as pages are reserved). Work is queued on `stream`.
  GpuKvCache(const ModelConfig& cfg, const HeadPlan& plan, int64_t max_tokens, cudaStream_t stream);
  ~GpuKvCache();
  GpuKvCache(const GpuKvCache&) = delete;
  GpuKvCache& operator=(const GpuKvCache&) = delete;

  const HeadPlan& plan() const { return plan_; }
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
  // Device memory this cache holds (mapped pool memory, ring buffers, page tables).
  size_t device_bytes() const;
  // Bytes the K and V of a sequence of n tokens take under `plan` (what bytes() will say).
  static size_t bytes_for(const ModelConfig& cfg, const HeadPlan& plan, int64_t n);

  void clear();

  // Benchmarks: the cache holds n positions of seeded random keys and values, as if a prompt
  // of n tokens had been pre-filled (decode speed depends on how much is read, not on values).
  void fill_random(int64_t n, uint64_t seed);

 private:
  ModelConfig cfg_;
  HeadPlan plan_;
  int64_t max_tokens_;
  cudaStream_t stream_;
  int n_layers_, n_kv_, d_, rows_;  // rows_ = sink + recent
  int max_pages_;                   // pages a retrieval head can have
  std::vector<int> retrieval_;      // retrieval heads a layer
  int64_t n_retrieval_ = 0, n_streaming_ = 0;

  std::unique_ptr<PagePool> k_pool_, v_pool_;
  DeviceBuffer page_table_;         // [layer][kv head][max_pages] int32
  int32_t* host_table_ = nullptr;   // pinned mirror
  DeviceBuffer k_ring_, v_ring_;    // [layer with streaming heads][kv head][rows][d]
  DeviceBuffer kinds_;              // [layer][kv head] uint8
  std::vector<LayerKv> views_;

  int64_t pages_per_head_ = 0;  // pages every retrieval head has
  int64_t n_past_ = 0;
};

}  // namespace duo::cuda
