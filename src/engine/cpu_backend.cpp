#include "engine/cpu_backend.h"

#include <fmt/core.h>

#include <vector>

#include "core/error.h"
#include "core/thread_pool.h"
#include "kv/kv_cache.h"
#include "model/model.h"
#include "sample/sampler.h"

namespace duo {

namespace {

class CpuSequence final : public SequenceState {
 public:
  explicit CpuSequence(std::unique_ptr<KvCache> cache) : cache_(std::move(cache)) {}
  int64_t n_past() const override { return cache_->n_past(); }
  const HeadPlan& plan() const override { return cache_->plan(); }
  size_t kv_bytes() const override { return cache_->bytes(); }
  size_t kv_bytes(HeadKind kind) const override { return cache_->bytes(kind); }
  void clear() override { cache_->clear(); }
  KvCache& cache() { return *cache_; }

 private:
  std::unique_ptr<KvCache> cache_;
};

CpuSequence& as_cpu(SequenceState& s) {
  auto* c = dynamic_cast<CpuSequence*>(&s);
  DUO_CHECK(c != nullptr, "this sequence does not live on the CPU");
  return *c;
}

class CpuBackend final : public ModelBackend {
 public:
  CpuBackend(Model& model, ThreadPool& pool) : model_(model), pool_(pool) {}
  Device device() const override { return Device::Cpu; }
  std::string description() const override { return fmt::format("cpu, {} threads", pool_.size()); }
  const ModelConfig& config() const override { return model_.config(); }

  std::unique_ptr<SequenceState> new_sequence(const HeadPlan& plan, int64_t) override {
    return std::make_unique<CpuSequence>(model_.new_cache(plan));
  }

  void forward(SequenceState& state, const int32_t* tokens, int64_t n, float* logits, int64_t chunk,
               bool all_logits) override {
    model_.forward(as_cpu(state).cache(), tokens, n, logits, pool_, all_logits, chunk);
  }

  int32_t forward_pick(SequenceState& state, const int32_t* tokens, int64_t n, int64_t chunk,
                       Sampler& sampler) override {
    logits_.resize(model_.config().n_vocab);
    forward(state, tokens, n, logits_.data(), chunk, false);
    return sampler.sample(logits_.data(), model_.config().n_vocab);
  }

 private:
  Model& model_;
  ThreadPool& pool_;
  std::vector<float> logits_;
};

}  // namespace

KvCache* cpu_cache(SequenceState& state) {
  auto* c = dynamic_cast<CpuSequence*>(&state);
  return c ? &c->cache() : nullptr;
}

std::unique_ptr<ModelBackend> make_cpu_backend(Model& model, ThreadPool& pool) {
  return std::make_unique<CpuBackend>(model, pool);
}

}  // namespace duo
