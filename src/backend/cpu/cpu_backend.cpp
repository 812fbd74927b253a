#include "backend/cpu/cpu_backend.h"

#include <fmt/core.h>

#include <vector>

#include "core/error.h"
#include "core/thread_pool.h"
#include "backend/cpu/kv_cache.h"
#include "backend/cpu/cpu_forward.h"
#include "backend/cpu/simd_level.h"
#include "model/model.h"
#include "duo/sampler.h"

namespace duo {

namespace {

class CpuSequence final : public SequenceState {
 public:
  CpuSequence(std::unique_ptr<KvCache> cache, int64_t capacity) : cache_(std::move(cache)), capacity_(capacity) {}
  // The positions the sequence was created for (the cache itself could grow past them; a
  // caller that goes beyond broke its own admission arithmetic, so it is an error here too).
  int64_t capacity() const { return capacity_; }
  int64_t n_past() const override { return cache_->n_past(); }
  const HeadPlan& plan() const override { return cache_->plan(); }
  size_t kv_bytes() const override { return cache_->bytes(); }
  size_t kv_bytes(HeadKind kind) const override { return cache_->bytes(kind); }
  void clear() override { cache_->clear(); }
  KvCache& cache() { return *cache_; }

 private:
  std::unique_ptr<KvCache> cache_;
  int64_t capacity_;
};

CpuSequence& as_cpu(SequenceState& s) {
  auto* c = dynamic_cast<CpuSequence*>(&s);
  DUO_CHECK(c != nullptr, "this sequence does not live on the CPU");
  return *c;
}

class CpuBackend final : public ModelBackend {
 public:
  CpuBackend(CpuForward& forward, ThreadPool& pool) : forward_(forward), pool_(pool) {}
  CpuBackend(std::unique_ptr<CpuForward> own, ThreadPool& pool) : own_(std::move(own)), forward_(*own_), pool_(pool) {}
  Device device() const override { return Device::Cpu; }
  std::string description() const override { return fmt::format("cpu, {} threads", pool_.size()); }
  const ModelConfig& config() const override { return forward_.model().config(); }

  std::unique_ptr<SequenceState> new_sequence(const HeadPlan& plan, int64_t max_tokens) override {
    DUO_CHECK(max_tokens > 0, "a sequence needs a positive capacity (got {})", max_tokens);
    return std::make_unique<CpuSequence>(forward_.new_cache(plan), max_tokens);
  }

  void forward(SequenceState& state, const int32_t* tokens, int64_t n, float* logits, int64_t chunk,
               bool all_logits) override {
    CpuSequence& s = as_cpu(state);
    DUO_CHECK(s.n_past() + n <= s.capacity(), "sequence of {} tokens exceeds the {} tokens it was created for",
              s.n_past() + n, s.capacity());
    forward_.forward(s.cache(), tokens, n, logits, pool_, all_logits, chunk);
  }

  int32_t forward_pick(SequenceState& state, const int32_t* tokens, int64_t n, int64_t chunk,
                       Sampler& sampler) override {
    logits_.resize(forward_.model().config().n_vocab);
    forward(state, tokens, n, logits_.data(), chunk, false);
    return sampler.sample(logits_.data(), forward_.model().config().n_vocab);
  }

  // CpuForward::forward_batch: consecutive one-token items share each matmul, a pre-fill chunk gets
  // matmuls of its own. Decoders are best placed first and side by side (the scheduler does).
  void step(const std::vector<StepItem>& items, int32_t* picked, float* logits) override {
    DUO_CHECK(!items.empty(), "a batched step needs at least one item");
    const int64_t V = forward_.model().config().n_vocab;
    std::vector<BatchItem> batch;
    batch.reserve(items.size());
    for (const StepItem& it : items) {
      DUO_CHECK(it.seq != nullptr, "a batched step item has no sequence");
      CpuSequence& s = as_cpu(*it.seq);
      DUO_CHECK(s.n_past() + it.n <= s.capacity(), "sequence of {} tokens exceeds the {} tokens it was created for",
                s.n_past() + it.n, s.capacity());
      batch.push_back({&s.cache(), it.tokens, it.n});
    }
    float* rows = logits;
    if (!rows) {
      logits_.resize(items.size() * (size_t)V);
      rows = logits_.data();
    }
    forward_.forward_batch(batch, rows, pool_);
    // Each item samples from its own row with its own sampler: the same tokens in any order.
    auto sample = [&](int64_t i0, int64_t i1, int) {
      for (int64_t i = i0; i < i1; ++i)
        picked[i] = items[i].sampler ? items[i].sampler->sample(rows + i * V, (int)V) : -1;
    };
    const int64_t n = (int64_t)items.size();
    if (n >= 4)
      pool_.parallel_for(n, sample);
    else
      sample(0, n, 0);
  }

  size_t kv_bytes_for(const HeadPlan& plan, int64_t n) const override {
    return KvCache::bytes_for(plan, forward_.model().config().head_dim, n, forward_.layer_windows());
  }
  // The CPU cache grows row by row and holds nothing beyond its rows worth counting.
  size_t sequence_bytes(const HeadPlan& plan, int64_t capacity) const override {
    return kv_bytes_for(plan, capacity);
  }
  KvType kv_type(KvType requested) const override { return cpu_kv_type(requested); }
  std::string kernels() const override { return simd_name(simd_level()); }
  size_t prepare_batched_weights() override { return forward_.pack_weights(pool_); }
  bool observes_attention() const override { return true; }
  void set_attention_observer(AttentionObserver* observer) override { forward_.set_observer(observer); }
  void fill_kv_random(SequenceState& state, int64_t n, uint64_t seed) override {
    CpuSequence& s = as_cpu(state);
    DUO_CHECK(n <= s.capacity(), "filling {} positions of a sequence created for {}", n, s.capacity());
    s.cache().fill_random(n, seed);
  }

 private:
  std::unique_ptr<CpuForward> own_;  // when made from a Model: its own forward
  CpuForward& forward_;
  ThreadPool& pool_;
  std::vector<float> logits_;
};

}  // namespace

std::string backends_summary() { return simd_summary(); }

KvCache* cpu_cache(SequenceState& state) {
  auto* c = dynamic_cast<CpuSequence*>(&state);
  return c ? &c->cache() : nullptr;
}

std::unique_ptr<ModelBackend> make_cpu_backend(CpuForward& forward, ThreadPool& pool) {
  return std::make_unique<CpuBackend>(forward, pool);
}

std::unique_ptr<ModelBackend> make_cpu_backend(const Model& model, ThreadPool& pool, int act_bits) {
  auto forward = std::make_unique<CpuForward>(model);
  forward->set_act_bits(act_bits);
  return std::make_unique<CpuBackend>(std::move(forward), pool);
}

}  // namespace duo
