// The CUDA implementation of the device seam (engine/backend.h), and what benchmarks need
// beyond it: the GPU model and cache behind a sequence, and a description of the device.
#pragma once
#include <map>
#include <memory>
#include <string>

#include "backend/cuda/gpu_kv_cache.h"
#include "backend/cuda/gpu_model.h"
#include "engine/backend.h"

namespace duo::cuda {

using DeviceInfo = DeviceFacts;  // engine/backend.h
// The current device; fails with a clear message when there is no usable CUDA device.
DeviceInfo device_info();

class CudaBackend final : public ModelBackend {
 public:
  explicit CudaBackend(std::unique_ptr<GpuWeights> weights);
  Device device() const override { return Device::Cuda; }
  std::string description() const override;
  const ModelConfig& config() const override { return model_->config(); }
  std::unique_ptr<SequenceState> new_sequence(const HeadPlan& plan, int64_t max_tokens) override;
  void forward(SequenceState& state, const int32_t* tokens, int64_t n, float* logits, int64_t chunk,
               bool all_logits) override;
  int32_t forward_pick(SequenceState& state, const int32_t* tokens, int64_t n, int64_t chunk,
                       Sampler& sampler) override;
  void step(const std::vector<StepItem>& items, int32_t* picked, float* logits) override;
  size_t kv_bytes_for(const HeadPlan& plan, int64_t n) const override;
  size_t sequence_bytes(const HeadPlan& plan, int64_t capacity) const override;
  // Releases the shared pools no sequence holds pages of, then counts free device memory (less
  // a margin) plus the pages the remaining pools have mapped and not handed out.
  size_t free_kv_memory() override;
  PagePoolUse page_pool_use() const override;

  KvType kv_type(KvType requested) const override { return GpuKvCache::resolve_type(requested); }
  size_t sequence_bytes_at(const HeadPlan& plan, int64_t capacity, int64_t n) const override {
    return GpuKvCache::device_bytes_for(config(), plan, capacity, n);
  }
  size_t activation_bytes(int64_t n) const override;
  void fill_kv_random(SequenceState& state, int64_t n, uint64_t seed) override { cache_of(state).fill_random(n, seed); }
  DeviceFacts device_facts() const override;
  DeviceMemory device_memory() const override;
  void reset_peak_memory() override;
  size_t weight_bytes() const override { return model_->weights().bytes(); }
  WeightFormat weight_format() const override { return model_->weights().format(); }
  void set_attention_timing(bool on) override { model_->set_attention_timing(on); }
  void reset_attention_timing() override { model_->reset_attention_timing(); }
  double attention_ms() const override { return model_->attention_ms(); }
  double decode_attention_graph_ms(SequenceState& state, int reps) override {
    return model_->decode_attention_graph_ms(cache_of(state), reps);
  }
  void release_scratch() override { model_->release_scratch(); }
  bool decode_graphs() const override { return model_->decode_graphs(); }
  double copy_gbs() override;

  GpuModel& gpu() { return *model_; }
  // The shared page pool of a KV type's retrieval heads (nullptr before the first sequence of
  // that type, or where the device cannot grow pools and every cache keeps its own).
  const KvPagePool* page_pool(KvType type) const;
  // The GPU cache of a sequence made by this backend.
  static GpuKvCache& cache_of(SequenceState& state);

 private:
  std::shared_ptr<KvPagePool> pool_for(KvType type);
  void release_idle_pools();

  std::unique_ptr<GpuModel> model_;
  std::map<KvType, std::shared_ptr<KvPagePool>> pools_;  // by resolved KV type
};

}  // namespace duo::cuda
