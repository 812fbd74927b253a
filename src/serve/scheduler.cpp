#include "serve/scheduler.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/thread_pool.h"
#include "engine/utf8_stream.h"
#include "sample/logprobs.h"
#include "serve/json_matcher.h"
#include "serve/stop_matcher.h"
#include "serve/token_mask.h"
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

void Generation::take_logprobs(std::vector<TokenLogprobEntry>& out) {
  std::lock_guard lk(mu_);
  for (auto& e : logprobs_) out.push_back(std::move(e));
  logprobs_.clear();
}

void Generation::add_logprobs(TokenLogprobEntry e) {
  std::lock_guard lk(mu_);
  logprobs_.push_back(std::move(e));
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

namespace {
// What a request gets when serving it failed inside the server (the OpenAI error format's 500).
ApiError internal_error(const std::string& what) {
  return ApiError(500, "server_error", fmt::format("generation failed: {}", what));
}
// Inside a catch (...): the message of the exception being handled.
std::string current_exception_message() {
  try {
    throw;
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "unknown exception";
  }
}
}  // namespace

struct Scheduler::Sequence {
  Sequence(Job j, size_t cost, std::shared_ptr<Generation> g)
      : out(std::move(g)), job(std::move(j)), cost(cost), sampler(job.sampling), stop(job.stop),
        submitted(std::chrono::steady_clock::now()) {
    sampler.add_prompt(job.prompt.data(), (int64_t)job.prompt.size());
    if (job.json) json.emplace(*job.json, false);  // nothing after the value, not even blanks
  }
  std::shared_ptr<Generation> out;
  Job job;
  size_t cost;
  std::unique_ptr<SequenceState> state;  // its KV cache on the engine's device
  int64_t fed = 0;      // prompt tokens in the cache
  int32_t next = -1;    // sampled token the next step feeds
  int64_t generated = 0;
  bool done = false;
  Sampler sampler;
  std::optional<JsonMatcher> json;  // JSON mode: what has been generated so far
  Utf8Stream utf8;
  StopMatcher stop;
  std::chrono::steady_clock::time_point submitted, last_token;  // for the latency histograms
};

SchedulerModel SchedulerModel::of(Engine& engine) {
  return {&engine.backend(), &engine.tokenizer(), engine.options().chunk, engine.max_context()};
}

Scheduler::Scheduler(Engine& engine, SchedulerOptions opts, Metrics& metrics)
    : Scheduler(SchedulerModel::of(engine), opts, metrics) {}

Scheduler::Scheduler(SchedulerModel on, SchedulerOptions opts, Metrics& metrics)
    : on_(on), backend_(*on.backend), tok_(*on.tokenizer), opts_(opts), metrics_(metrics) {
  DUO_CHECK(on_.chunk > 0 && on_.max_context > 0, "the scheduler needs a positive chunk and context limit");
  DUO_CHECK(opts_.max_batch >= 1 && opts_.max_batch <= kMaxBatchLimit, "max batch must be 1 to {} (got {})",
            kMaxBatchLimit, opts_.max_batch);
  DUO_CHECK(opts_.max_queue >= 0 && opts_.max_queue <= kMaxQueueLimit, "max queue must be 0 to {} (got {})",
            kMaxQueueLimit, opts_.max_queue);
  DUO_CHECK(opts_.kv_budget_bytes > 0, "the KV budget must be positive");
  if (opts_.prefill_tokens_per_step <= 0) opts_.prefill_tokens_per_step = on_.chunk;
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

// The positions a request's cache reaches: its prompt and every generated token but the last,
// which is emitted and never fed back.
int64_t Scheduler::capacity(const Job& job) { return (int64_t)job.prompt.size() + job.max_tokens - 1; }

size_t Scheduler::kv_cost(const Job& job) const {
  return backend_.sequence_bytes(job.plan, capacity(job));
}

std::shared_ptr<Generation> Scheduler::submit(Job job) {
  const ModelConfig& c = backend_.config();
  if (job.prompt.empty()) throw ApiError(400, "invalid_request_error", "the prompt is empty", "prompt");
  for (int32_t t : job.prompt)
    if (t < 0 || t >= c.n_vocab)
      throw ApiError(400, "invalid_request_error",
                     fmt::format("token id {} is outside the vocabulary (0..{})", t, c.n_vocab - 1), "prompt");
  if (job.max_tokens < 1) throw ApiError(400, "invalid_request_error", "max_tokens must be at least 1", "max_tokens");
  const int64_t limit = on_.max_context;
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
      s->state = backend_.new_sequence(s->job.plan, capacity(s->job));
    } catch (const std::exception& e) {
      // Admission counted this cache within the budget, so this is the device refusing memory
      // the budget said was there (a budget larger than the device, or another process).
      s->out->finish(FinishReason::Error, 0,
                     ApiError(503, "server_error", fmt::format("out of memory allocating the KV cache: {}", e.what()),
                              "", "out_of_memory"));
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
    try {
      if (!active_.empty()) batch = step();
    } catch (...) {
      // step() handles the backend's and each sequence's failures itself; anything else leaves
      // the running sequences in an unknown state: end them (500) and keep serving the queue.
      const ApiError err = internal_error(current_exception_message());
      for (auto& s : active_) finish(*s, FinishReason::Error, err);
    }
    std::erase_if(active_, [](const auto& s) { return s->done; });
    try {
      publish_gauges(batch);
    } catch (...) {
      // The gauges only inform /metrics: failing to publish them must not end the serving.
    }
  }
  // Shutting down: nothing queued or running gets an answer other than this.
  const ApiError bye(503, "server_error", "the server is shutting down", "", "shutting_down");
  for (auto& s : active_) finish(*s, FinishReason::Error, bye);
  active_.clear();
  {
    std::lock_guard lk(mu_);
    for (auto& s : pending_) {
      s->out->finish(FinishReason::Error, 0, bye);
      metrics_.count_finished(to_string(FinishReason::Error));
    }
    pending_.clear();
  }
  publish_gauges(0);  // /metrics shows the server empty, not its last step
}

int Scheduler::step() {
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  const int64_t chunk = on_.chunk;
  // One item per sequence: its last token (decoders first, side by side, so they share the
  // matmuls), or a pre-fill chunk with the chunk boundaries of a single-sequence forward, so
  // what a sequence computes does not depend on what else is in the step (within rounding:
  // see the backends' step()). The last chunk of a prompt picks the first token.
  std::vector<StepItem> items;
  std::vector<Sequence*> owners;
  // Sequences sampled on the host give the backend no sampler: it returns -1 for them and
  // their logits row, and the pick is made below (see Job::host_sampling).
  auto device_sampler = [](Sequence& s) { return s.job.host_sampling() ? nullptr : &s.sampler; };
  for (auto& s : active_)
    if (s->fed == (int64_t)s->job.prompt.size()) {
      items.push_back({s->state.get(), &s->next, 1, device_sampler(*s)});
      owners.push_back(s.get());
    }
  // Pre-fill chunks while they fit the step's token budget; the first is taken whatever its
  // size (a chunk is never cut), so the oldest prompt always moves on. Later, smaller chunks
  // may still fill what is left.
  int64_t prefill_left = opts_.prefill_tokens_per_step, prefilled = 0;
  for (auto& s : active_) {
    const int64_t P = (int64_t)s->job.prompt.size();
    if (s->fed == P) continue;
    const int64_t m = std::min(chunk, P - s->fed);
    if (prefilled > 0 && m > prefill_left) continue;
    prefill_left -= m;
    prefilled += m;
    items.push_back({s->state.get(), s->job.prompt.data() + s->fed, m, s->fed + m == P ? device_sampler(*s) : nullptr});
    owners.push_back(s.get());
  }
  std::vector<int32_t> ids(items.size(), -1);
  bool any_host = false;
  for (Sequence* s : owners) any_host = any_host || s->job.host_sampling();
  const int V = backend_.config().n_vocab;
  if (any_host) logits_.resize(items.size() * (size_t)V);
  try {
    backend_.step(items, ids.data(), any_host ? logits_.data() : nullptr);
  } catch (const std::exception& e) {
    // The caches of this batch are in an unknown state: end these sequences, keep serving.
    const bool oom = dynamic_cast<const std::bad_alloc*>(&e) != nullptr;
    const ApiError err = oom ? ApiError(503, "server_error", "out of memory during generation", "", "out_of_memory")
                             : internal_error(e.what());
    for (Sequence* s : owners) finish(*s, FinishReason::Error, err);
    return (int)items.size();
  }
  const auto t1 = clock::now();
  // The caches are at their largest now, before finished sequences let theirs go.
  size_t kv = 0;
  for (const auto& s : active_) kv += s->state->kv_bytes();
  metrics_.observe_kv(kv);
  int64_t generated = 0;
  for (size_t i = 0; i < owners.size(); ++i) {
    Sequence& s = *owners[i];
    if (s.fed < (int64_t)s.job.prompt.size()) {
      s.fed += items[i].n;
      if (s.fed < (int64_t)s.job.prompt.size()) continue;  // more prompt to read
    }
    try {
      if (s.job.host_sampling()) ids[i] = pick_on_host(s, logits_.data() + i * (size_t)V, V);
      if (s.job.ignore_eos || !tok_.is_eog(ids[i])) ++generated;
      take_token(s, ids[i], t1);
    } catch (...) {
      // A failure with one sequence's token (an id the tokenizer cannot render, ...) ends that
      // sequence alone; an exception escaping this thread would end the whole server.
      finish(s, FinishReason::Error, internal_error(current_exception_message()));
    }
  }
  metrics_.record_step((int)items.size(), prefilled, generated, std::chrono::duration<double>(t1 - t0).count());
  return (int)items.size();
}

int32_t Scheduler::pick_on_host(Sequence& s, const float* row, int n_vocab) {
  const float* pick_from = row;
  if (s.json) {
    if (!token_mask_) {
      pieces_.resize(tok_.n_vocab());
      std::vector<bool> include(tok_.n_vocab());
      for (int32_t t = 0; t < tok_.n_vocab(); ++t) {
        pieces_[t] = tok_.token_to_piece(t);
        include[t] = !tok_.is_eog(t);
        if (tok_.is_eog(t)) eog_tokens_.push_back(t);
      }
      token_mask_ = std::make_unique<TokenMask>(pieces_, include);
    }
    // A token is allowed when its bytes continue the document; end-of-generation once it is
    // complete; byte-less (control) tokens never. Nothing can follow a complete object (the
    // matcher takes no trailing blanks), but a number at the top may still grow.
    allowed_.clear();
    token_mask_->allowed(*s.json, allowed_);
    if (s.json->done() || allowed_.empty()) allowed_.insert(allowed_.end(), eog_tokens_.begin(), eog_tokens_.end());
    masked_.assign(n_vocab, -INFINITY);
    for (int32_t t : allowed_)
      if (t < n_vocab) masked_[t] = row[t];
    pick_from = masked_.data();
  }
  const int32_t id = s.sampler.sample(pick_from, n_vocab);
  if (s.json && id >= 0 && id < tok_.n_vocab() && !tok_.is_eog(id)) s.json->feed(std::string_view(pieces_[id]));
  // An end-of-generation token is not shown, so it gets no entry either.
  if (s.job.top_logprobs >= 0 && id >= 0 && id < tok_.n_vocab() && !tok_.is_eog(id)) {
    const TokenLogprobs lp = token_logprobs(row, n_vocab, id, s.job.top_logprobs);
    TokenLogprobEntry e;
    e.id = id;
    e.piece = tok_.token_to_piece(id);
    e.logprob = lp.logprob;
    for (const auto& [t, l] : lp.top)
      if (t < tok_.n_vocab()) e.top.push_back({tok_.token_to_piece(t), l});
    s.out->add_logprobs(std::move(e));
  }
  return id;
}

bool Scheduler::take_token(Sequence& s, int32_t id, std::chrono::steady_clock::time_point now) {
  const Tokenizer& tok = tok_;
  // The backend picks among the model's rows; one the vocabulary has no text for cannot be shown
  // (model loading refuses such a model, but a backend fault must not take the server down).
  if (id < 0 || id >= tok.n_vocab())
    fail("the model picked token id {}, outside the vocabulary of {} tokens", id, tok.n_vocab());
  // The order of Session::generate: an end-of-generation token ends it unseen; any other is
  // counted and shown, then the sequence stops at max_tokens or goes on with it.
  const bool eog = tok.is_eog(id);
  if (eog && !s.job.ignore_eos) {
    finish(s, FinishReason::Stop);
    return true;
  }
  ++s.generated;
  const double since = std::chrono::duration<double>(now - (s.generated == 1 ? s.submitted : s.last_token)).count();
  if (s.generated == 1)
    metrics_.observe_first_token(since);
  else
    metrics_.observe_inter_token(since);
  s.last_token = now;
  if (!eog) s.out->emit(s.stop.push(s.utf8.push(tok.token_to_piece(id))));
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
  s.state.reset();
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
    if (!s->state) continue;
    g.kv_retrieval += s->state->kv_bytes(HeadKind::Retrieval);
    g.kv_streaming += s->state->kv_bytes(HeadKind::Streaming);
  }
  const ModelBackend::PagePoolUse pool = backend_.page_pool_use();
  g.pool_used = pool.used_bytes, g.pool_idle = pool.idle_bytes;
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
