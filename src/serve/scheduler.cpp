#include "serve/scheduler.h"

#include <algorithm>

#include "core/error.h"
#include "core/thread_pool.h"
#include "engine/utf8_stream.h"
#include "kv/kv_cache.h"
#include "model/model.h"
#include "serve/stop_matcher.h"
#include "tokenizer/tokenizer.h"

namespace duo::serve {

const char* to_string(FinishReason r) {
  switch (r) {
    case FinishReason::None: return "none";
    case FinishReason::Stop: return "stop";
    case FinishReason::Length: return "length";
    case FinishReason::Cancelled: return "cancelled";
    case FinishReason::Error: return "error";
  }
  return "?";
}

// ---------------------------------------------------------------------------------------------
// Generation

bool Generation::wait_for(std::string& text, std::chrono::milliseconds timeout) {
  std::unique_lock lk(mu_);
  cv_.wait_for(lk, timeout, [&] { return finished_ || !pending_.empty(); });
  text += pending_;
  pending_.clear();
  return finished_;
}

FinishReason Generation::finish_reason() const {
  std::lock_guard lk(mu_);
  return reason_;
}

int64_t Generation::completion_tokens() const {
  std::lock_guard lk(mu_);
  return completion_tokens_;
}

std::optional<ApiError> Generation::error() const {
  std::lock_guard lk(mu_);
  return error_;
}

void Generation::emit(const std::string& text) {
  if (text.empty()) return;
  {
    std::lock_guard lk(mu_);
    pending_ += text;
  }
  cv_.notify_all();
}

void Generation::finish(FinishReason reason, int64_t completion_tokens, std::optional<ApiError> error) {
  {
    std::lock_guard lk(mu_);
    finished_ = true;
    reason_ = reason;
    completion_tokens_ = completion_tokens;
    error_ = std::move(error);
  }
  cv_.notify_all();
}

// ---------------------------------------------------------------------------------------------
// Scheduler

struct Scheduler::Sequence {
  Sequence(Job j, size_t cost, std::shared_ptr<Generation> g)
      : out(std::move(g)), job(std::move(j)), cost(cost), sampler(job.sampling), stop(job.stop) {}
  std::shared_ptr<Generation> out;
  Job job;
  size_t cost;
  std::unique_ptr<KvCache> cache;
  int64_t fed = 0;      // prompt tokens in the cache
  int32_t next = -1;    // sampled token the next step feeds
  int64_t generated = 0;
  bool done = false;
  Sampler sampler;
  Utf8Stream utf8;
  StopMatcher stop;
};

Scheduler::Scheduler(Engine& engine, SchedulerOptions opts, Metrics& metrics)
    : engine_(engine), opts_(opts), metrics_(metrics) {
  DUO_CHECK(opts_.max_batch >= 1, "max batch must be at least 1 (got {})", opts_.max_batch);
  DUO_CHECK(opts_.max_queue >= 0, "max queue must be >= 0 (got {})", opts_.max_queue);
  DUO_CHECK(opts_.kv_budget_bytes > 0, "the KV budget must be positive");
  if (opts_.prefill_tokens_per_step <= 0) opts_.prefill_tokens_per_step = engine_.options().chunk;
  publish_gauges(0);
  thread_ = std::thread([this] { run(); });
}

Scheduler::~Scheduler() { shutdown(); }

void Scheduler::shutdown() {
  {
    std::lock_guard lk(mu_);
    if (stopping_ && !thread_.joinable()) return;
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

size_t Scheduler::kv_cost(const Job& job) const {
  const int64_t positions = (int64_t)job.prompt.size() + job.max_tokens - 1;
  return KvCache::bytes_for(job.plan, engine_.model().config().head_dim, positions);
}

std::shared_ptr<Generation> Scheduler::submit(Job job) {
  const ModelConfig& c = engine_.model().config();
  if (job.prompt.empty()) throw ApiError(400, "invalid_request_error", "the prompt is empty", "prompt");
  for (int32_t t : job.prompt)
    if (t < 0 || t >= c.n_vocab)
      throw ApiError(400, "invalid_request_error",
                     fmt::format("token id {} is outside the vocabulary (0..{})", t, c.n_vocab - 1), "prompt");
  if (job.max_tokens < 1) throw ApiError(400, "invalid_request_error", "max_tokens must be at least 1", "max_tokens");
  const int64_t limit = engine_.max_context();
  if ((int64_t)job.prompt.size() + job.max_tokens > limit)
    throw ApiError(400, "invalid_request_error",
                   fmt::format("this model's context limit is {} tokens, but {} prompt tokens + max_tokens {} "
                               "ask for {}",
                               limit, job.prompt.size(), job.max_tokens, (int64_t)job.prompt.size() + job.max_tokens),
                   "max_tokens", "context_length_exceeded");
  if ((int)job.plan.kinds.size() != c.n_layers)
    throw ApiError(400, "invalid_request_error", "the head plan does not fit the model", "pattern");
  const size_t cost = kv_cost(job);
  if (cost > opts_.kv_budget_bytes) {
    metrics_.count_rejected("kv_budget");
    throw ApiError(400, "invalid_request_error",
                   fmt::format("this request needs {:.1f} MiB of KV cache ({} prompt tokens + max_tokens {}), "
                               "more than the server's whole budget of {:.1f} MiB; ask for fewer tokens, or use "
                               "streaming or duo attention (streaming heads keep a constant cache)",
                               cost / 1048576.0, job.prompt.size(), job.max_tokens, opts_.kv_budget_bytes / 1048576.0),
                   "max_tokens", "kv_budget_exceeded");
  }
  auto gen = std::make_shared<Generation>((int64_t)job.prompt.size());
  std::unique_ptr<Sequence> seq;
  try {
    seq = std::make_unique<Sequence>(std::move(job), cost, gen);
  } catch (const Error& e) {  // sampler settings
    throw ApiError(400, "invalid_request_error", e.what());
  }
  {
    std::lock_guard lk(mu_);
    if (stopping_) {
      metrics_.count_rejected("shutting_down");
      throw ApiError(503, "server_error", "the server is shutting down", "", "shutting_down");
    }
    if ((int)pending_.size() >= opts_.max_queue) {
      metrics_.count_rejected("queue_full");
      throw ApiError(503, "server_error",
                     fmt::format("the server is overloaded: {} requests are already waiting; retry later",
                                 pending_.size()),
                     "", "server_overloaded");
    }
    pending_.push_back(std::move(seq));
  }
  cv_.notify_all();
  return gen;
}

void Scheduler::admit_locked() {
  // Queued jobs whose client left are dropped wherever they are in the queue.
  for (auto it = pending_.begin(); it != pending_.end();) {
    if ((*it)->out->cancelled()) {
      (*it)->out->finish(FinishReason::Cancelled, 0);
      metrics_.count_finished(to_string(FinishReason::Cancelled));
      it = pending_.erase(it);
    } else {
      ++it;
    }
  }
  // First come, first served: a job that does not fit yet blocks the ones behind it, so a
  // large request is not starved by a stream of small ones.
  while (!pending_.empty() && (int)active_.size() < opts_.max_batch &&
         reserved_ + pending_.front()->cost <= opts_.kv_budget_bytes) {
    std::unique_ptr<Sequence> s = std::move(pending_.front());
    pending_.pop_front();
    try {
      s->cache = engine_.model().new_cache(s->job.plan);
    } catch (const std::bad_alloc&) {
      s->out->finish(FinishReason::Error, 0,
                     ApiError(503, "server_error", "out of memory allocating the KV cache", "", "out_of_memory"));
      metrics_.count_finished(to_string(FinishReason::Error));
      continue;
    }
    reserved_ += s->cost;
    active_.push_back(std::move(s));
  }
}

void Scheduler::run() {
  for (;;) {
    {
      std::unique_lock lk(mu_);
      cv_.wait(lk, [&] { return stopping_ || !pending_.empty() || !active_.empty(); });
      if (stopping_) break;
      admit_locked();
    }
    for (auto& s : active_)
      if (s->out->cancelled()) finish(*s, FinishReason::Cancelled);
    std::erase_if(active_, [](const auto& s) { return s->done; });
    int batch = 0;
    if (!active_.empty()) {
      batch = (int)active_.size();
      step();
      std::erase_if(active_, [](const auto& s) { return s->done; });
    }
    publish_gauges(batch);
  }
  // Shutting down: nothing queued or running gets an answer other than this.
  const ApiError bye(503, "server_error", "the server is shutting down", "", "shutting_down");
  for (auto& s : active_) finish(*s, FinishReason::Error, bye);
  active_.clear();
  std::lock_guard lk(mu_);
  for (auto& s : pending_) {
    s->out->finish(FinishReason::Error, 0, bye);
    metrics_.count_finished(to_string(FinishReason::Error));
  }
  pending_.clear();
}

void Scheduler::step() {
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  Model& model = engine_.model();
  const int V = model.config().n_vocab;
  const int64_t chunk = engine_.options().chunk;
  // One item per sequence: its last token (decoders first, side by side, so they share the
  // matmuls), or a pre-fill chunk with the chunk boundaries of Model::forward. forward_batch
  // gives chunks matmuls of their own, so what a sequence computes does not depend on what
  // else is in the step while at most 4 sequences decode (beyond that the shared matmuls
  // take the many-token kernel: equal within rounding, see forward_batch_test).
  std::vector<BatchItem> items;
  std::vector<Sequence*> owners;
  for (auto& s : active_)
    if (s->fed == (int64_t)s->job.prompt.size()) {
      items.push_back({s->cache.get(), &s->next, 1});
      owners.push_back(s.get());
    }
  int64_t prefill_left = opts_.prefill_tokens_per_step, prefilled = 0;
  for (auto& s : active_) {
    const int64_t P = (int64_t)s->job.prompt.size();
    if (s->fed == P || prefill_left <= 0) continue;
    const int64_t m = std::min(chunk, P - s->fed);
    prefill_left -= m;
    prefilled += m;
    items.push_back({s->cache.get(), s->job.prompt.data() + s->fed, m});
    owners.push_back(s.get());
  }
  static thread_local std::vector<float> logits;
  logits.resize(items.size() * (size_t)V);
  try {
    model.forward_batch(items, logits.data(), engine_.pool());
  } catch (const std::exception& e) {
    // The caches of this batch are in an unknown state: end these sequences, keep serving.
    const bool oom = dynamic_cast<const std::bad_alloc*>(&e) != nullptr;
    const ApiError err = oom ? ApiError(503, "server_error", "out of memory during generation", "", "out_of_memory")
                             : ApiError(500, "server_error", fmt::format("generation failed: {}", e.what()));
    for (Sequence* s : owners) finish(*s, FinishReason::Error, err);
    return;
  }
  // The caches are at their largest now, before finished sequences let theirs go.
  size_t kv = 0;
  for (const auto& s : active_) kv += s->cache->bytes();
  metrics_.observe_kv(kv);
  // Sequences whose next token is due sample it in parallel (each from its own logits with
  // its own sampler: the same tokens in any order); taking the tokens stays in batch order.
  std::vector<size_t> due;
  for (size_t i = 0; i < owners.size(); ++i) {
    Sequence& s = *owners[i];
    if (s.fed < (int64_t)s.job.prompt.size()) {
      s.fed += items[i].n;
      if (s.fed < (int64_t)s.job.prompt.size()) continue;  // more prompt to read
    }
    due.push_back(i);
  }
  std::vector<int32_t> ids(due.size());
  const float* lg = logits.data();  // (a thread_local: the workers must not name it)
  auto sample = [&](int64_t j0, int64_t j1, int) {
    for (int64_t j = j0; j < j1; ++j) ids[j] = owners[due[j]]->sampler.sample(lg + due[j] * V, V);
  };
  if (due.size() >= 4)
    engine_.pool().parallel_for((int64_t)due.size(), sample);
  else
    sample(0, (int64_t)due.size(), 0);
  int64_t generated = 0;
  for (size_t j = 0; j < due.size(); ++j) {
    if (!engine_.tokenizer().is_eog(ids[j])) ++generated;
    take_token(*owners[due[j]], ids[j]);
  }
  metrics_.record_step(prefilled, generated, std::chrono::duration<double>(clock::now() - t0).count());
}

bool Scheduler::take_token(Sequence& s, int32_t id) {
  const Tokenizer& tok = engine_.tokenizer();
  // The order of Session::generate: an end-of-generation token ends it unseen; any other is
  // counted and shown, then the sequence stops at max_tokens or goes on with it.
  if (tok.is_eog(id)) {
    finish(s, FinishReason::Stop);
    return true;
  }
  ++s.generated;
  s.out->emit(s.stop.push(s.utf8.push(tok.token_to_piece(id))));
  if (s.stop.matched()) {
    finish(s, FinishReason::Stop);
    return true;
  }
  if (s.generated >= s.job.max_tokens) {
    finish(s, FinishReason::Length);
    return true;
  }
  s.next = id;
  return false;
}

void Scheduler::finish(Sequence& s, FinishReason reason, std::optional<ApiError> error) {
  if (s.done) return;
  if (reason == FinishReason::Stop || reason == FinishReason::Length) {
    // An incomplete UTF-8 tail is shown as it is (as `duo generate` prints it), unless a stop
    // string turns up in it.
    s.out->emit(s.stop.push(s.utf8.flush()));
    if (s.stop.matched()) reason = FinishReason::Stop;
    s.out->emit(s.stop.flush());
  }
  s.done = true;
  s.cache.reset();
  {
    std::lock_guard lk(mu_);
    reserved_ -= s.cost;
  }
  cv_.notify_all();
  metrics_.count_finished(to_string(reason));
  s.out->finish(reason, s.generated, std::move(error));
}

void Scheduler::publish_gauges(int last_batch) {
  SchedulerGauges g;
  g.active = (int)active_.size();
  for (const auto& s : active_) {
    if (!s->cache) continue;
    g.kv_retrieval += s->cache->bytes(HeadKind::Retrieval);
    g.kv_streaming += s->cache->bytes(HeadKind::Streaming);
  }
  g.kv_budget = opts_.kv_budget_bytes;
  g.last_batch = last_batch;
  {
    std::lock_guard lk(mu_);
    g.queued = (int)pending_.size();
    g.kv_reserved = reserved_;
  }
  metrics_.set_gauges(g);
}

}  // namespace duo::serve
