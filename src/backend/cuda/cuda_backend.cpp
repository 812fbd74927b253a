#include "backend/cuda/cuda_backend.h"

#include <fmt/core.h>

#include <algorithm>
#include <limits>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device_memory.h"
#include "core/error.h"
#include "model/model.h"
#include "duo/sampler.h"

namespace duo::cuda {

namespace {

class CudaSequence final : public SequenceState {
 public:
  explicit CudaSequence(std::unique_ptr<GpuKvCache> kv) : kv_(std::move(kv)) {}
  int64_t n_past() const override { return kv_->n_past(); }
  const HeadPlan& plan() const override { return kv_->plan(); }
  size_t kv_bytes() const override { return kv_->bytes(); }
  size_t kv_bytes(HeadKind kind) const override { return kv_->bytes(kind); }
  size_t device_bytes() const override { return kv_->device_bytes(); }
  void clear() override { kv_->clear(); }
  GpuKvCache& kv() { return *kv_; }

 private:
  std::unique_ptr<GpuKvCache> kv_;
};

// Picks the first device; errors say why there is none.
void select_device() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n == 0) {
    (void)cudaGetLastError();
    fail("no usable CUDA device ({}): run on a machine with an NVIDIA GPU and driver, or use --device cpu",
         e != cudaSuccess ? cudaGetErrorString(e) : "none found");
  }
  DUO_CUDA_TRY(cudaSetDevice(0));
}

}  // namespace

DeviceInfo device_info() {
  select_device();
  DeviceInfo d;
  int dev = 0;
  DUO_CUDA_TRY(cudaGetDevice(&dev));
  cudaDeviceProp p{};
  DUO_CUDA_TRY(cudaGetDeviceProperties(&p, dev));
  d.name = p.name;
  d.sm_count = p.multiProcessorCount;
  d.cc_major = p.major, d.cc_minor = p.minor;
  d.total_memory = p.totalGlobalMem;
  DUO_CUDA_TRY(cudaDriverGetVersion(&d.driver_version));
  DUO_CUDA_TRY(cudaRuntimeGetVersion(&d.runtime_version));
  return d;
}

CudaBackend::CudaBackend(std::unique_ptr<GpuWeights> weights) {
  model_ = std::make_unique<GpuModel>(std::move(weights));
}

std::string CudaBackend::description() const {
  const DeviceInfo d = device_info();
  return fmt::format("cuda: {} ({} SMs, {:.1f} GiB), weights {:.2f} GiB {}", d.name, d.sm_count,
                     d.total_memory / 1073741824.0, model_->weights().bytes() / 1073741824.0,
                     to_string(model_->weights().format()));
}

// One pool per page format for every sequence: pages of finished sequences serve new ones,
// and no sequence maps memory beyond its pages (a pool of its own grows a slab at a time).
// Its address range covers the whole device; memory is mapped only as pages are used.
std::shared_ptr<KvPagePool> CudaBackend::pool_for(KvType type) {
  if (PagePool::slab_bytes() == 0) return nullptr;  // no growable pools: each cache allocates its own
  auto it = pools_.find(type);
  if (it != pools_.end()) return it->second;
  const size_t page = GpuKvCache::page_bytes(type, config().head_dim);
  const int64_t capacity =
      std::min<int64_t>((int64_t)(device_info().total_memory / (2 * page)), std::numeric_limits<int32_t>::max());
  return pools_[type] = std::make_shared<KvPagePool>(page, capacity);
}

const KvPagePool* CudaBackend::page_pool(KvType type) const {
  auto it = pools_.find(GpuKvCache::resolve_type(type));
  return it == pools_.end() ? nullptr : it->second.get();
}

std::unique_ptr<SequenceState> CudaBackend::new_sequence(const HeadPlan& plan, int64_t max_tokens) {
  auto pool = pool_for(GpuKvCache::resolve_type(plan.kv_type));
  return std::make_unique<CudaSequence>(model_->new_cache(plan, max_tokens, std::move(pool)));
}

GpuKvCache& CudaBackend::cache_of(SequenceState& state) {
  auto* s = dynamic_cast<CudaSequence*>(&state);
  DUO_CHECK(s != nullptr, "this sequence does not live on the CUDA device");
  return s->kv();
}

void CudaBackend::forward(SequenceState& state, const int32_t* tokens, int64_t n, float* logits, int64_t chunk,
                          bool all_logits) {
  GpuKvCache& kv = cache_of(state);
  model_->forward(kv, tokens, n, chunk, logits, all_logits);
}

int32_t CudaBackend::forward_pick(SequenceState& state, const int32_t* tokens, int64_t n, int64_t chunk,
                                  Sampler& sampler) {
  GpuKvCache& kv = cache_of(state);
  const SamplerConfig& cfg = sampler.config();
  DUO_CHECK(!cfg.host_only(), "min-p, penalties and logit bias are sampled on the host, not by the CUDA backend");
  const double u = cfg.temperature > 0.0f ? sampler.uniform01() : 0.0;
  return model_->forward_pick(kv, tokens, n, chunk, cfg, u);
}

void CudaBackend::step(const std::vector<StepItem>& items, int32_t* picked, float* logits) {
  std::vector<GpuModel::StepItem> gi;
  gi.reserve(items.size());
  for (const StepItem& it : items) {
    DUO_CHECK(it.seq != nullptr, "a batched step item has no sequence");
    DUO_CHECK(it.n <= std::numeric_limits<int>::max(), "a step item of {} tokens is too long for one pass", it.n);
    GpuModel::StepItem g;
    g.kv = &cache_of(*it.seq);
    g.tokens = it.tokens;
    g.n = (int)it.n;
    if (it.sampler) {
      g.pick = true;
      g.sampling = it.sampler->config();
      DUO_CHECK(!g.sampling.host_only(), "min-p, penalties and logit bias are sampled on the host (logits), not on the device");
      // The sampler's own stream of uniform numbers, drawn as forward_pick draws it.
      g.u = g.sampling.temperature > 0.0f ? it.sampler->uniform01() : 0.0;
    }
    gi.push_back(g);
  }
  model_->step(gi, picked, logits);
}

// The activation buffers of a chunk of n tokens (GpuModel::run_chunk's): fp32 residual, bf16
// normalised rows, fp32 QKV, bf16 Q / K / V and attention output, fp32 output projection, fp32
// gate/up and bf16 SwiGLU rows, plus the last row's logits and the decode workspace and picks.
size_t CudaBackend::activation_bytes(int64_t n) const {
  const ModelConfig& c = config();
  const double E = c.n_embd, D = c.head_dim, Q = (double)c.n_heads * D, KV = (double)c.n_kv_heads * D, F = c.n_ff;
  const double per_token = E * 4 + E * 2 + (Q + 2 * KV) * 4 + Q * 2 + 2 * KV * 2 + Q * 2 + E * 4 + 2 * F * 4 + F * 2;
  return (size_t)(per_token * (double)n + 4.0 * c.n_vocab + 64e6);
}

DeviceFacts CudaBackend::device_facts() const { return device_info(); }

double CudaBackend::copy_gbs() {
  // Device-to-device copies of 1 GiB (far beyond the L2), timed with events after a warm-up.
  constexpr size_t kBytes = size_t{1} << 30;
  constexpr int kReps = 10;
  void *a = nullptr, *b = nullptr;
  DUO_CUDA_TRY(cudaMalloc(&a, kBytes));
  const cudaError_t eb = cudaMalloc(&b, kBytes);
  if (eb != cudaSuccess) {
    cudaFree(a);
    DUO_CUDA_TRY(eb);
  }
  cudaEvent_t e0, e1;
  DUO_CUDA_TRY(cudaEventCreate(&e0));
  DUO_CUDA_TRY(cudaEventCreate(&e1));
  DUO_CUDA_TRY(cudaMemcpy(b, a, kBytes, cudaMemcpyDeviceToDevice));
  DUO_CUDA_TRY(cudaEventRecord(e0));
  for (int i = 0; i < kReps; ++i) DUO_CUDA_TRY(cudaMemcpyAsync(i % 2 ? a : b, i % 2 ? b : a, kBytes, cudaMemcpyDeviceToDevice));
  DUO_CUDA_TRY(cudaEventRecord(e1));
  DUO_CUDA_TRY(cudaEventSynchronize(e1));
  float ms = 0;
  DUO_CUDA_TRY(cudaEventElapsedTime(&ms, e0, e1));
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaFree(a);
  cudaFree(b);
  return 2.0 * (double)kBytes * kReps / (ms * 1e-3) / 1e9;
}

DeviceMemory CudaBackend::device_memory() const {
  DeviceMemory m;
  device_memory_info(m.free_bytes, m.total_bytes);
  m.peak_bytes = peak_bytes();
  return m;
}

void CudaBackend::reset_peak_memory() { reset_peak_bytes(); }

size_t CudaBackend::kv_bytes_for(const HeadPlan& plan, int64_t n) const {
  return GpuKvCache::bytes_for(config(), plan, n);
}

size_t CudaBackend::sequence_bytes(const HeadPlan& plan, int64_t capacity) const {
  // The cache's pages, tables and buffers at its largest. Its pages come from the shared pool,
  // which maps at most one slab beyond the pages in use (free_kv_memory's margin covers it);
  // without growable pools each cache allocates exactly its own capacity.
  return GpuKvCache::device_bytes_for(config(), plan, capacity, capacity);
}

size_t CudaBackend::free_kv_memory() {
  release_idle_pools();
  size_t free_b = 0, total_b = 0;
  DUO_CUDA_TRY(cudaMemGetInfo(&free_b, &total_b));
  // Left for what grows after start-up: activations of the largest step, the LM head's logits
  // of a full batch, cuBLAS workspaces and captured graphs.
  const size_t margin = std::max<size_t>(size_t(3) << 29, total_b / 32);
  // Pages a shared pool has mapped but no sequence holds serve new sequences of its type first.
  size_t idle = 0;
  for (const auto& [type, pool] : pools_)
    idle += (size_t)(pool->pages().high_water() - pool->pages().used()) * 2 * pool->page_bytes();
  return free_b > margin ? free_b - margin + idle : idle;
}

ModelBackend::PagePoolUse CudaBackend::page_pool_use() const {
  PagePoolUse u;
  for (const auto& [type, pool] : pools_) {
    const size_t page = 2 * pool->page_bytes();  // a K page and a V page
    u.used_bytes += (size_t)pool->pages().used() * page;
    u.idle_bytes += (size_t)(pool->pages().high_water() - pool->pages().used()) * page;
  }
  return u;
}

void CudaBackend::release_idle_pools() {
  // A pool no page of which is in use gives its memory back (a sequence that still refers to
  // it keeps it alive; the next sequence of that type starts a new pool).
  std::erase_if(pools_, [](const auto& kv) { return kv.second->pages().used() == 0; });
}

}  // namespace duo::cuda

namespace duo {

std::unique_ptr<ModelBackend> make_cuda_backend(const Model& model, WeightFormat weights) {
  cuda::select_device();
  auto w = cuda::GpuWeights::upload(model, weights);
  return std::make_unique<cuda::CudaBackend>(std::move(w));
}

std::unique_ptr<ModelBackend> make_cuda_synthetic_backend(const ModelConfig& cfg, uint64_t seed, WeightFormat weights) {
  cuda::select_device();
  auto w = cuda::GpuWeights::synthetic(cfg, seed, weights);
  return std::make_unique<cuda::CudaBackend>(std::move(w));
}

}  // namespace duo
