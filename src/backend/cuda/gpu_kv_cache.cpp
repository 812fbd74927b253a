#include "backend/cuda/gpu_kv_cache.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <limits>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels.h"
#include "backend/cuda/synthetic.h"
#include "core/error.h"
#include "kv/kv_bytes.h"
#include "kv/kv_quant.h"

namespace duo::cuda {

namespace {
int64_t pages_for(int64_t tokens) { return (tokens + kPageTokens - 1) / kPageTokens; }
// bf16 rows a quantized retrieval head keeps beside its pages: sink and residual.
size_t quant_row_bytes(KvType type, int sink, int d) {
  return is_quantized(type) ? 2 * sizeof(bf16) * (size_t)(kvq::sink16(sink) + kvq::kGroup) * d : 0;
}
}  // namespace

KvType GpuKvCache::resolve_type(KvType t) {
  if (t == KvType::Default) return KvType::BF16;
  DUO_CHECK(t == KvType::BF16 || is_quantized(t), "the CUDA KV cache stores bf16, q8 or q4 (got {})", to_string(t));
  return t;
}

size_t GpuKvCache::page_bytes(KvType type, int head_dim) { return kv_page_bytes(resolve_type(type), head_dim); }

std::vector<int> GpuKvCache::layer_windows(const ModelConfig& cfg) {
  std::vector<int> windows;
  if (!cfg.layer_local.empty())
    for (int l = 0; l < cfg.n_layers; ++l) windows.push_back(cfg.is_local(l) ? cfg.local_window : 0);
  return windows;
}

GpuKvCache::GpuKvCache(const ModelConfig& cfg, const HeadPlan& plan, int64_t max_tokens, cudaStream_t stream,
                       std::shared_ptr<KvPagePool> pool)
    : cfg_(cfg), plan_(plan), max_tokens_(max_tokens), stream_(stream), pool_(std::move(pool)) {
  static std::atomic<uint64_t> next_id{1};
  id_ = next_id++;
  type_ = resolve_type(plan.kv_type);
  n_layers_ = cfg.n_layers, n_kv_ = cfg.n_kv_heads, d_ = cfg.head_dim;
  DUO_CHECK((int)plan.kinds.size() == n_layers_, "head plan has {} layers, the model {}", plan.kinds.size(),
            n_layers_);
  const std::vector<int> local = layer_windows(cfg);
  windows_.assign(n_layers_, plan.window);
  for (int l = 0; l < (int)local.size(); ++l)
    if (local[l] > 0) windows_[l] = StreamingWindow{0, local[l]};
  DUO_CHECK(d_ == 64 || d_ == 128, "the CUDA attention kernels support head dimension 64 or 128, not {}", d_);
  // Positions are int in the kernels (and page indices int32): stay well inside.
  DUO_CHECK(max_tokens > 0 && max_tokens <= (int64_t)std::numeric_limits<int32_t>::max() / 2,
            "CUDA KV cache: unsupported sequence capacity {}", max_tokens);
  max_pages_ = (int)pages_for(max_tokens);
  retrieval_.assign(n_layers_, 0);
  std::vector<uint8_t> kinds((size_t)n_layers_ * n_kv_);
  std::vector<bool> has_streaming(n_layers_, false);
  kinds_of_.assign((size_t)n_layers_ * n_kv_, HeadKind::Streaming);
  bool plan_streams = false;  // whether any head outside the local layers streams
  for (int l = 0; l < n_layers_; ++l) {
    DUO_CHECK((int)plan.kinds[l].size() == n_kv_, "head plan layer {} has {} KV heads, the model {}", l,
              plan.kinds[l].size(), n_kv_);
    const bool is_local = !local.empty() && local[l] > 0;
    for (int h = 0; h < n_kv_; ++h) {
      const bool s = is_local || plan.kinds[l][h] == HeadKind::Streaming;
      kinds_of_[(size_t)l * n_kv_ + h] = s ? HeadKind::Streaming : HeadKind::Retrieval;
      plan_streams = plan_streams || (s && !is_local);
      kinds[(size_t)l * n_kv_ + h] = s ? 1 : 0;
      if (s) {
        has_streaming[l] = true;
        ++n_streaming_;
      } else {
        ++retrieval_[l];
        ++n_retrieval_;
      }
    }
  }
  if (plan_streams)
    DUO_CHECK(plan.window.sink >= 0 && plan.window.recent >= 1,
              "streaming window needs sink >= 0 and recent >= 1 (got {}, {})", plan.window.sink, plan.window.recent);
  if (!local.empty())
    DUO_CHECK(cfg.local_window >= 1, "{}: the local layers' sliding window must be >= 1 (got {})", cfg.name,
              cfg.local_window);

  const size_t page_bytes = GpuKvCache::page_bytes(type_, d_);
  const int64_t pool_pages = n_retrieval_ * max_pages_;
  DUO_CHECK(pool_pages <= std::numeric_limits<int32_t>::max(), "CUDA KV cache: {} pages exceed int32 page indices",
            pool_pages);
  if (pool_) {
    DUO_CHECK(pool_->page_bytes() == page_bytes, "a shared KV page pool of {}-byte pages cannot hold {}-byte {} pages",
              pool_->page_bytes(), page_bytes, to_string(type_));
  } else {
    pool_ = std::make_shared<KvPagePool>(page_bytes, pool_pages);
    own_pool_ = true;
  }

  // Quantized: bf16 sink and residual rows of every retrieval head (slot-major, layer by layer)
  // and each layer's head -> slot table.
  std::vector<int32_t> slots((size_t)n_layers_ * n_kv_, -1);
  std::vector<int64_t> first_slot(n_layers_, 0);  // retrieval heads in the layers before l
  if (is_quantized(type_)) {
    DUO_CHECK(plan.window.sink >= 0, "the sink must be >= 0 (got {})", plan.window.sink);
    sink16_ = kvq::sink16(plan.window.sink);
    int64_t next = 0;
    for (int l = 0; l < n_layers_; ++l) {
      first_slot[l] = next;
      int r = 0;
      for (int h = 0; h < n_kv_; ++h)
        if (kinds_of_[(size_t)l * n_kv_ + h] == HeadKind::Retrieval) slots[(size_t)l * n_kv_ + h] = r++;
      next += r;
    }
    if (n_retrieval_ > 0) {
      const size_t resid = sizeof(bf16) * (size_t)n_retrieval_ * kvq::kGroup * d_;
      k_resid_ = DeviceBuffer(resid, "the quantized heads' residual K rows");
      v_resid_ = DeviceBuffer(resid, "the quantized heads' residual V rows");
      DUO_CUDA_TRY(cudaMemset(k_resid_.get(), 0, resid));
      DUO_CUDA_TRY(cudaMemset(v_resid_.get(), 0, resid));
      if (sink16_ > 0) {
        const size_t sink = sizeof(bf16) * (size_t)n_retrieval_ * sink16_ * d_;
        k_sink_ = DeviceBuffer(sink, "the quantized heads' sink K rows");
        v_sink_ = DeviceBuffer(sink, "the quantized heads' sink V rows");
        DUO_CUDA_TRY(cudaMemset(k_sink_.get(), 0, sink));
        DUO_CUDA_TRY(cudaMemset(v_sink_.get(), 0, sink));
      }
    }
    slots_ = DeviceBuffer(sizeof(int32_t) * slots.size(), "the retrieval slot tables");
    DUO_CUDA_TRY(cudaMemcpy(slots_.get(), slots.data(), sizeof(int32_t) * slots.size(), cudaMemcpyHostToDevice));
  }

  const size_t table_entries = (size_t)n_layers_ * n_kv_ * max_pages_;
  page_table_ = DeviceBuffer(sizeof(int32_t) * table_entries, "the KV page tables");
  DUO_CUDA_TRY(cudaMemset(page_table_.get(), 0, page_table_.bytes()));
  DUO_CUDA_TRY(cudaMallocHost(&host_table_, sizeof(int32_t) * table_entries));
  std::memset(host_table_, 0, sizeof(int32_t) * table_entries);

  // Each layer with streaming heads has rows for all its heads, its own window's many (a local
  // layer's differ from the plan's): ring_at[l] elements into the buffers.
  std::vector<size_t> ring_at(n_layers_, 0);
  size_t ring_elems = 0;
  for (int l = 0; l < n_layers_; ++l)
    if (has_streaming[l]) ring_at[l] = ring_elems, ring_elems += (size_t)n_kv_ * windows_[l].rows() * d_;
  if (ring_elems > 0) {
    k_ring_ = DeviceBuffer(sizeof(bf16) * ring_elems, "the streaming-head K buffers");
    v_ring_ = DeviceBuffer(sizeof(bf16) * ring_elems, "the streaming-head V buffers");
    // Zero once: rows not yet written must be finite (attention.cuh).
    DUO_CUDA_TRY(cudaMemset(k_ring_.get(), 0, k_ring_.bytes()));
    DUO_CUDA_TRY(cudaMemset(v_ring_.get(), 0, v_ring_.bytes()));
  }
  kinds_ = DeviceBuffer(kinds.size(), "the head kinds");
  DUO_CUDA_TRY(cudaMemcpy(kinds_.get(), kinds.data(), kinds.size(), cudaMemcpyHostToDevice));

  views_.resize(n_layers_);
  for (int l = 0; l < n_layers_; ++l) {
    LayerKv& v = views_[l];
    v.type = type_;
    if (is_quantized(type_)) {
      v.kq_pages = static_cast<uint8_t*>(pool_->k_base());
      v.vq_pages = static_cast<uint8_t*>(pool_->v_base());
      v.page_bytes = (int64_t)page_bytes;
      v.sink16 = sink16_;
      v.slot_of = slots_.as<int32_t>() + (size_t)l * n_kv_;
      if (k_resid_.get()) {
        v.k_resid = k_resid_.as<bf16>() + first_slot[l] * kvq::kGroup * d_;
        v.v_resid = v_resid_.as<bf16>() + first_slot[l] * kvq::kGroup * d_;
      }
      if (k_sink_.get()) {
        v.k_sink = k_sink_.as<bf16>() + first_slot[l] * sink16_ * d_;
        v.v_sink = v_sink_.as<bf16>() + first_slot[l] * sink16_ * d_;
      }
    } else {
      v.k_pages = static_cast<bf16*>(pool_->k_base());
      v.v_pages = static_cast<bf16*>(pool_->v_base());
    }
    v.page_table = page_table_.as<int32_t>() + (size_t)l * n_kv_ * max_pages_;
    v.max_pages = max_pages_;
    if (has_streaming[l]) {
      v.k_ring = k_ring_.as<bf16>() + ring_at[l];
      v.v_ring = v_ring_.as<bf16>() + ring_at[l];
    }
    v.kinds = kinds_.as<uint8_t>() + (size_t)l * n_kv_;
    v.mode = retrieval_[l] == n_kv_ ? HeadMode::AllRetrieval : retrieval_[l] == 0 ? HeadMode::AllStreaming
                                                                                  : HeadMode::Mixed;
    v.sink = windows_[l].sink;
    v.recent = windows_[l].recent;
  }
}

GpuKvCache::~GpuKvCache() {
  // Pages go back to a shared pool at once: whatever is queued on this (the model's only)
  // stream runs before the work of the next sequence that takes them.
  if (pool_ && !pages_.empty()) pool_->give(pages_);
  if (host_table_) {
    (void)cudaStreamSynchronize(stream_);  // a queued page-table copy may still read the mirror
    cudaFreeHost(host_table_);
  }
}

void GpuKvCache::reserve(int64_t end) {
  DUO_CHECK(end <= max_tokens_, "sequence of {} tokens exceeds the {} tokens this CUDA KV cache was created for", end,
            max_tokens_);
  const int64_t want = pages_for(end);
  if (want <= pages_per_head_ || n_retrieval_ == 0) return;
  std::vector<int32_t> fresh;
  fresh.reserve((size_t)(n_retrieval_ * (want - pages_per_head_)));
  pool_->take(n_retrieval_ * (want - pages_per_head_), fresh, stream_);
  size_t next = 0;
  for (int64_t p = pages_per_head_; p < want; ++p)
    for (int l = 0; l < n_layers_; ++l)
      for (int h = 0; h < n_kv_; ++h)
        if (kinds_of_[(size_t)l * n_kv_ + h] == HeadKind::Retrieval)
          host_table_[((size_t)l * n_kv_ + h) * max_pages_ + p] = fresh[next++];
  pages_.insert(pages_.end(), fresh.begin(), fresh.end());
  // The new columns [pages_per_head_, want) of every (layer, head) row, in one strided copy.
  // Pinned source and entries that never change until clear(): safe to queue asynchronously.
  const size_t pitch = sizeof(int32_t) * max_pages_;
  DUO_CUDA_TRY(cudaMemcpy2DAsync(page_table_.as<int32_t>() + pages_per_head_, pitch, host_table_ + pages_per_head_,
                                 pitch, sizeof(int32_t) * (want - pages_per_head_), (size_t)n_layers_ * n_kv_,
                                 cudaMemcpyHostToDevice, stream_));
  pages_per_head_ = want;
}

size_t GpuKvCache::bytes(HeadKind kind) const {
  if (kind == HeadKind::Retrieval)
    return (size_t)n_retrieval_ *
           ((size_t)pages_per_head_ * 2 * page_bytes(type_, d_) + quant_row_bytes(type_, plan_.window.sink, d_));
  size_t b = 0;
  for (int l = 0; l < n_layers_; ++l)
    for (int h = 0; h < n_kv_; ++h)
      if (kinds_of_[(size_t)l * n_kv_ + h] == HeadKind::Streaming) b += 2 * sizeof(bf16) * windows_[l].rows() * d_;
  return b;
}

// The accounting of both backends' caches (kv/kv_bytes.h), with the CUDA cache's types.
size_t GpuKvCache::bytes_for(const ModelConfig& cfg, const HeadPlan& plan, int64_t n) {
  return kv_plan_bytes(plan, resolve_type(plan.kv_type), cfg.head_dim, n, layer_windows(cfg));
}

size_t GpuKvCache::device_bytes_for(const ModelConfig& cfg, const HeadPlan& plan, int64_t capacity, int64_t n) {
  const KvType type = resolve_type(plan.kv_type);
  const size_t d = cfg.head_dim, n_kv = cfg.n_kv_heads, layers = plan.kinds.size();
  const std::vector<int> local = layer_windows(cfg);
  size_t r = 0, ring_rows = 0;  // retrieval heads; streaming rows of whole layers, a KV head
  for (size_t l = 0; l < layers; ++l) {
    const auto& layer = plan.kinds[l];
    const int w = local.empty() ? 0 : local[l];
    const size_t rl = w > 0 ? 0 : (size_t)std::count(layer.begin(), layer.end(), HeadKind::Retrieval);
    r += rl;
    if (rl < layer.size()) ring_rows += w > 0 ? (size_t)w : (size_t)plan.window.rows();
  }
  size_t b = r * ((size_t)pages_for(n) * 2 * page_bytes(type, (int)d) + quant_row_bytes(type, plan.window.sink, (int)d));
  b += ring_rows * n_kv * d * 2 * sizeof(bf16);                            // streaming rows of whole layers
  b += layers * n_kv * (size_t)pages_for(capacity) * sizeof(int32_t);     // page tables
  b += layers * n_kv;                                                      // head kinds
  if (is_quantized(type)) b += layers * n_kv * sizeof(int32_t);            // slot tables
  return b;
}

size_t GpuKvCache::device_bytes() const {
  const size_t pages = own_pool_ ? pool_->mapped_bytes() : pages_.size() * 2 * pool_->page_bytes();
  return pages + k_ring_.bytes() + v_ring_.bytes() +
         page_table_.bytes() + kinds_.bytes() + k_sink_.bytes() + v_sink_.bytes() + k_resid_.bytes() +
         v_resid_.bytes() + slots_.bytes();
}

void GpuKvCache::clear() {
  DUO_CUDA_TRY(cudaStreamSynchronize(stream_));  // queued copies read the mirror we reset
  std::memset(host_table_, 0, sizeof(int32_t) * (size_t)n_layers_ * n_kv_ * max_pages_);
  for (DeviceBuffer* b : {&k_ring_, &v_ring_, &k_sink_, &v_sink_, &k_resid_, &v_resid_})
    if (b->get()) DUO_CUDA_TRY(cudaMemsetAsync(b->get(), 0, b->bytes(), stream_));
  pool_->give(pages_);  // (a pool of its own keeps them mapped and hands them out again)
  pages_.clear();
  pages_per_head_ = 0;
  n_past_ = 0;
}

void GpuKvCache::fill_random(int64_t n, uint64_t seed) {
  DUO_CHECK(n_past_ == 0, "fill_random needs an empty cache (it holds {} positions)", n_past_);
  reserve(n);
  // The cache's pages in runs of consecutive pool pages (one run in a fresh pool).
  std::vector<int32_t> sorted = pages_;
  std::sort(sorted.begin(), sorted.end());
  std::vector<std::pair<int64_t, int64_t>> runs;  // first page, count
  for (int32_t p : sorted)
    if (!runs.empty() && runs.back().first + runs.back().second == p)
      ++runs.back().second;
    else
      runs.push_back({p, 1});
  if (is_quantized(type_)) {
    // Random codes; every group's params (scale, min) = (1/8, -1) for q4 and (1/128, -1) for q8
    // (halves 0x3000 / 0x2000 and 0xBC00), so values lie in [-1, 1) like the bf16 fill.
    const kvq::QuantLayout L{d_, quant_bits(type_)};
    const uint32_t params = (type_ == KvType::Q4 ? 0x3000u : 0x2000u) | (0xBC00u << 16);
    for (const auto& [first, count] : runs) {
      const int64_t off = first * L.page_bytes();
      fill_quant_pages(static_cast<uint8_t*>(pool_->k_base()) + off, count, L.page_bytes(), L.code_bytes(),
                       mix64(seed + first), params, stream_);
      fill_quant_pages(static_cast<uint8_t*>(pool_->v_base()) + off, count, L.page_bytes(), L.code_bytes(),
                       mix64(seed + 1 + first), params, stream_);
    }
    int64_t salt = 4;
    for (DeviceBuffer* b : {&k_sink_, &v_sink_, &k_resid_, &v_resid_})
      if (b->get()) fill_uniform(b->as<bf16>(), (int64_t)(b->bytes() / sizeof(bf16)), mix64(seed + salt++), 0.0f, 1.0f,
                                 stream_);
  } else {
    const int64_t page_elems = (int64_t)kPageTokens * d_;
    for (const auto& [first, count] : runs) {
      fill_uniform(static_cast<bf16*>(pool_->k_base()) + first * page_elems, count * page_elems, mix64(seed + first),
                   0.0f, 1.0f, stream_);
      fill_uniform(static_cast<bf16*>(pool_->v_base()) + first * page_elems, count * page_elems,
                   mix64(seed + 1 + first), 0.0f, 1.0f, stream_);
    }
  }
  if (k_ring_.get()) {
    const int64_t ring = (int64_t)(k_ring_.bytes() / sizeof(bf16));
    fill_uniform(k_ring_.as<bf16>(), ring, mix64(seed + 2), 0.0f, 1.0f, stream_);
    fill_uniform(v_ring_.as<bf16>(), ring, mix64(seed + 3), 0.0f, 1.0f, stream_);
  }
  n_past_ = n;
}

}  // namespace duo::cuda
