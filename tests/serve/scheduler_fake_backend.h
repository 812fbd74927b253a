// A fake ModelBackend for scheduler tests: no model, just bookkeeping that checks every call
// against the ModelBackend contract and the scheduler's promises, recording what it saw.
//  - A sequence's "KV" is the hash of the tokens fed to it; the token it picks is a function of
//    that hash (now and then the end-of-generation token), so a test can predict each request's
//    exact output from its prompt alone (expected_output).
//  - The request a sequence belongs to is its plan's window.sink (the fake has no use for
//    windows' sinks): tests register each tag's job first, so the fake can check chunks, tokens
//    and samplers against the job, and record the order of admissions.
//  - Faults: random step throws / allocation failures / delays, a predicate that fails chosen
//    steps, picks replaced (ids outside the vocabulary), and a gate that holds steps back.
#pragma once
#include <fmt/format.h>

#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "engine/backend.h"
#include "serve/scheduler.h"
#include "tokenizer/tokenizer.h"

namespace duo::serve::test {

constexpr int kVocab = 40;
constexpr int32_t kEog = 2;  // "</s>"

// <unk>, <s>, </s>, then "[3]" ... "[39]": the text of a generation spells its token ids.
inline std::unique_ptr<Tokenizer> tiny_tokenizer() {
  Vocab v;
  v.model = Vocab::Model::SPM;
  auto add = [&](std::string t, TokenType type) {
    v.tokens.push_back(std::move(t));
    v.types.push_back(type);
    v.scores.push_back(0);
  };
  add("<unk>", TokenType::Unknown);
  add("<s>", TokenType::Control);
  add("</s>", TokenType::Control);
  v.unk = 0, v.bos = 1, v.eos = kEog;
  for (int i = 3; i < kVocab; ++i) add(fmt::format("[{}]", i), TokenType::Normal);
  return std::make_unique<Tokenizer>(std::move(v));
}

constexpr uint64_t kHashStart = 0xcbf29ce484222325ull;
inline uint64_t mix(uint64_t h, int32_t t) { return (h ^ (uint64_t)(t + 1)) * 0x100000001b3ull; }
// The token picked after a history hashing to h: the end of generation once in 24 or so.
inline int32_t pick_for(uint64_t h) {
  uint64_t x = (h ^ (h >> 31)) * 0xbf58476d1ce4e5b9ull;
  x ^= x >> 29;
  return x % 24 == 0 ? kEog : 3 + (int32_t)(x % (kVocab - 3));
}

struct Expected {
  std::string text;
  int64_t tokens = 0;
  FinishReason reason = FinishReason::None;
};
// What a request alone generates on the fake (the order of Session::generate).
inline Expected expected_output(const Job& j) {
  Expected e;
  uint64_t h = kHashStart;
  for (int32_t t : j.prompt) h = mix(h, t);
  for (;;) {
    const int32_t id = pick_for(h);
    if (id == kEog) return e.reason = FinishReason::Stop, e;
    e.text += fmt::format("[{}]", id);
    if (++e.tokens == j.max_tokens) return e.reason = FinishReason::Length, e;
    h = mix(h, id);
  }
}

// Costs: a retrieval head holds 16 bytes a position in pages of 8 positions, a streaming head
// 16 bytes for each of its `recent` positions (constant); a sequence also has 40 bytes of tables a head.
inline size_t fake_kv_bytes(const HeadPlan& p, int64_t n, HeadKind only, bool all) {
  size_t b = 0;
  for (const auto& layer : p.kinds)
    for (HeadKind k : layer) {
      if (!all && k != only) continue;
      b += k == HeadKind::Retrieval ? 16 * (size_t)((n + 7) / 8 * 8) : 16 * (size_t)std::min<int64_t>(n, p.window.recent);
    }
  return b;
}
inline size_t fake_sequence_bytes(const HeadPlan& p, int64_t capacity) {
  return fake_kv_bytes(p, capacity, HeadKind::Retrieval, true) + 40 * p.kinds.size() * p.kinds[0].size();
}

struct Faults {
  double step_throw = 0, alloc_throw = 0;  // probabilities
  int max_sleep_us = 0;                     // random delay of each step
  // Fails the step (throws) when it returns true for the step's (tag, n_past) items.
  std::function<bool(const std::vector<std::pair<int, int64_t>>&)> fail_if;
  // Replaces the token a request (by tag) picks: a backend answering with an id the vocabulary
  // does not have, say.
  std::function<int32_t(int tag, int32_t picked)> repick;
};

class FakeBackend final : public ModelBackend {
 public:
  FakeBackend(int64_t chunk, int64_t prefill_budget, size_t kv_budget, uint64_t seed, Faults f = {})
      : chunk_(chunk), prefill_max_(std::max(prefill_budget > 0 ? prefill_budget : chunk, chunk)),
        budget_(kv_budget), rng_(seed), faults_(std::move(f)) {
    cfg_.n_layers = 2;
    cfg_.n_kv_heads = 2;
    cfg_.n_heads = 2;
    cfg_.head_dim = 4;
    cfg_.n_vocab = kVocab;
  }

  // --- test side
  void expect(int tag, const Job& j) {
    std::lock_guard lk(mu_);
    jobs_[tag] = j;
  }
  void set_gate(bool open) {
    {
      std::lock_guard lk(mu_);
      gate_open_ = open;
    }
    cv_.notify_all();
  }
  void wait_for_steps(int n) {
    std::unique_lock lk(mu_);
    cv_.wait(lk, [&] { return steps_entered_ >= n; });
  }
  struct Record {
    std::vector<std::string> violations;
    std::vector<int> admitted;  // tags in the order new_sequence saw them
    std::set<int> failed;       // tags of the sequences in failed steps
    int alloc_failures = 0, steps_ok = 0, live = 0;
    int64_t items_ok = 0, prefill_ok = 0, max_prefill = 0;
  };
  Record record() const {
    std::lock_guard lk(mu_);
    Record r = rec_;
    r.live = (int)live_.size();
    return r;
  }

  // --- ModelBackend
  Device device() const override { return Device::Cpu; }
  std::string description() const override { return "fake"; }
  const ModelConfig& config() const override { return cfg_; }
  size_t kv_bytes_for(const HeadPlan& p, int64_t n) const override { return fake_kv_bytes(p, n, {}, true); }
  size_t sequence_bytes(const HeadPlan& p, int64_t capacity) const override { return fake_sequence_bytes(p, capacity); }
  void forward(SequenceState&, const int32_t*, int64_t, float*, int64_t, bool) override { fail("not for the scheduler"); }
  int32_t forward_pick(SequenceState&, const int32_t*, int64_t, int64_t, Sampler&) override { fail("not for the scheduler"); }

  std::unique_ptr<SequenceState> new_sequence(const HeadPlan& plan, int64_t capacity) override {
    std::lock_guard lk(mu_);
    const int tag = plan.window.sink;
    rec_.admitted.push_back(tag);
    if (!jobs_.count(tag)) violation("admitted an unknown request {}", tag);
    const Job& j = jobs_[tag];
    if (capacity != (int64_t)j.prompt.size() + j.max_tokens - 1) violation("request {}: capacity {}", tag, capacity);
    if (std::uniform_real_distribution<>(0, 1)(rng_) < faults_.alloc_throw) {
      ++rec_.alloc_failures;
      throw std::bad_alloc();
    }
    auto s = std::make_unique<Seq>(*this, plan, capacity);
    live_.insert(s.get());
    check_budget("admission");
    return s;
  }

  void step(const std::vector<StepItem>& items, int32_t* picked, float*) override {
    std::unique_lock lk(mu_);
    ++steps_entered_;
    cv_.notify_all();
    cv_.wait(lk, [&] { return gate_open_; });
    if (items.empty()) violation("an empty step");
    std::set<Seq*> seen;
    std::vector<std::pair<int, int64_t>> tags;
    int64_t prefill = 0;
    for (const StepItem& it : items) {
      auto* s = dynamic_cast<Seq*>(it.seq);
      if (!s || !live_.count(s)) fail("{}", violation("an item of no live sequence"));
      if (!seen.insert(s).second) violation("request {} twice in one step", s->tag());
      const Job& j = jobs_[s->tag()];
      const int64_t P = (int64_t)j.prompt.size();
      tags.push_back({s->tag(), s->n});
      if (it.n <= 0 || s->n + it.n > s->capacity) fail("{}", violation("request {}: {} tokens at {}", s->tag(), it.n, s->n));
      if (s->n < P) {  // pre-fill: the single-sequence chunking, the prompt's tokens
        prefill += it.n;
        if (it.n != std::min(chunk_, P - s->n)) violation("request {}: a chunk of {} at {}", s->tag(), it.n, s->n);
        if (!std::equal(it.tokens, it.tokens + it.n, j.prompt.begin() + s->n)) violation("request {}: wrong prompt", s->tag());
        if ((it.sampler != nullptr) != (s->n + it.n == P)) violation("request {}: sampler at {}", s->tag(), s->n);
      } else if (it.n != 1 || it.tokens[0] != s->last || !it.sampler) {
        violation("request {}: decode of {} tokens, {} after {}", s->tag(), it.n, it.tokens[0], s->last);
      }
    }
    if (prefill > prefill_max_) violation("{} pre-fill tokens in one step (at most {})", prefill, prefill_max_);
    rec_.max_prefill = std::max(rec_.max_prefill, prefill);
    for (Seq* s : live_)  // a decoding sequence is in every step: long prompts do not freeze it
      if (s->n >= (int64_t)jobs_[s->tag()].prompt.size() && !seen.count(s)) violation("request {} left out", s->tag());
    check_budget("step");
    if (std::uniform_real_distribution<>(0, 1)(rng_) < faults_.step_throw || (faults_.fail_if && faults_.fail_if(tags))) {
      for (auto& t : tags) rec_.failed.insert(t.first);
      throw std::runtime_error("fake device fault");
    }
    for (size_t i = 0; i < items.size(); ++i) {
      auto* s = static_cast<Seq*>(items[i].seq);
      for (int64_t k = 0; k < items[i].n; ++k) s->h = mix(s->h, items[i].tokens[k]);
      s->n += items[i].n;
      picked[i] = s->last = items[i].sampler ? pick_for(s->h) : -1;
      if (items[i].sampler && faults_.repick) picked[i] = s->last = faults_.repick(s->tag(), picked[i]);
    }
    ++rec_.steps_ok;
    rec_.items_ok += (int64_t)items.size();
    rec_.prefill_ok += prefill;
    const int sleep_us = faults_.max_sleep_us ? std::uniform_int_distribution<>(0, faults_.max_sleep_us)(rng_) : 0;
    lk.unlock();
    if (sleep_us) std::this_thread::sleep_for(std::chrono::microseconds(sleep_us));
  }

 private:
  struct Seq final : SequenceState {
    Seq(FakeBackend& b, const HeadPlan& p, int64_t cap) : owner(b), plan_(p), capacity(cap) {}
    ~Seq() override {
      std::lock_guard lk(owner.mu_);
      owner.live_.erase(this);
    }
    int64_t n_past() const override { return n; }
    const HeadPlan& plan() const override { return plan_; }
    size_t kv_bytes() const override { return fake_kv_bytes(plan_, n, {}, true); }
    size_t kv_bytes(HeadKind k) const override { return fake_kv_bytes(plan_, n, k, false); }
    void clear() override { n = 0, h = kHashStart; }
    int tag() const { return plan_.window.sink; }
    FakeBackend& owner;
    HeadPlan plan_;
    int64_t capacity, n = 0;
    uint64_t h = kHashStart;
    int32_t last = -1;
  };

  template <typename... A>
  std::string violation(fmt::format_string<A...> f, A&&... a) {
    std::string m = fmt::format(f, std::forward<A>(a)...);
    rec_.violations.push_back(m);
    return m;
  }
  // The caches that exist together never exceed the budget, at their largest.
  void check_budget(const char* where) {
    size_t sum = 0;
    for (Seq* s : live_) sum += fake_sequence_bytes(s->plan_, s->capacity);
    if (sum > budget_) violation("{}: {} bytes reserved by live sequences, budget {}", where, sum, budget_);
  }

  ModelConfig cfg_;
  const int64_t chunk_, prefill_max_;
  const size_t budget_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::mt19937_64 rng_;
  Faults faults_;
  std::map<int, Job> jobs_;
  std::set<Seq*> live_;
  bool gate_open_ = true;
  int steps_entered_ = 0;
  Record rec_;
};

}  // namespace duo::serve::test
