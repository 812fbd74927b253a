// Continuous batching on one model backend (CPU or CUDA, through ModelBackend alone). HTTP
// threads submit jobs; one scheduler thread owns the backend and runs steps: each step admits
// queued jobs while the KV budget allows, then runs one ModelBackend::step over every running
// sequence (a pre-fill chunk for sequences still reading their prompt, the last sampled token
// for the others), which picks each sequence's next token; the text streams to the waiting
// HTTP thread.
//
// Admission is against exact cost: a sequence reserves what its cache will hold at its largest
// (prompt + max_tokens - 1 positions; retrieval heads grow with length, streaming heads are
// constant; the formula is the backend's sequence_bytes), so the caches together never exceed
// the budget. A job that could never fit is refused at submit; one that fits later
// waits in a bounded FIFO queue; a full queue is refused (503).
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "duo/engine.h"
#include "engine/backend.h"
#include "serve/api_error.h"
#include "serve/json_schema.h"
#include "serve/metrics.h"

namespace duo::serve {

class TokenMask;

enum class FinishReason { None, Stop, Length, Cancelled, Error };
const char* to_string(FinishReason r);

// What to generate: everything resolved against the model already.
struct Job {
  std::vector<int32_t> prompt;
  HeadPlan plan;  // in the model's cache-slot order (Engine::to_slot_order)
  int64_t max_tokens = 16;
  SamplerConfig sampling;
  std::vector<std::string> stop;
  // Log-probabilities of each generated token and of the `top_logprobs` most likely ones
  // (-1: none). Like host_only() sampling, this takes the step's logits back to the host.
  int top_logprobs = -1;
  // JSON mode and json_schema: tokens that cannot continue a JSON document this schema accepts
  // are masked (host sampling); once it is complete only end-of-generation may follow.
  std::shared_ptr<const CompiledSchema> json;
  // End-of-generation tokens are generated tokens like any other (not shown): the output runs
  // to max_tokens or a stop string.
  bool ignore_eos = false;
  bool host_sampling() const { return sampling.host_only() || top_logprobs >= 0 || json; }
};

// One generated token's log-probabilities (from the model's logits, before any adjustment or
// temperature), with its text and the top alternatives' texts.
struct TokenLogprobEntry {
  std::string piece;
  int32_t id = -1;
  float logprob = 0.0f;
  std::vector<std::pair<std::string, float>> top;
};

// One request's output, written by the scheduler thread and read by the HTTP thread.
class Generation {
 public:
  // Waits until there is new text or the generation has finished, at most `timeout`. Appends
  // the new text to `text`; returns true once finished (all text has then been taken).
  bool wait_for(std::string& text, std::chrono::milliseconds timeout);
  // Moves the log-probability entries recorded since the last call into `out` (appended).
  void take_logprobs(std::vector<TokenLogprobEntry>& out);
  // The client went away: the scheduler drops the sequence (or the queued job) at its next step.
  void cancel() { cancelled_.store(true); }
  bool cancelled() const { return cancelled_.load(); }

  // After wait_for returned true:
  FinishReason finish_reason() const;
  int64_t prompt_tokens() const { return prompt_tokens_; }
  int64_t completion_tokens() const;
  std::optional<ApiError> error() const;

  // Scheduler side.
  explicit Generation(int64_t prompt_tokens) : prompt_tokens_(prompt_tokens) {}
  void emit(const std::string& text);
  void add_logprobs(TokenLogprobEntry e);
  void finish(FinishReason reason, int64_t completion_tokens, std::optional<ApiError> error = std::nullopt);

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::string pending_;
  std::vector<TokenLogprobEntry> logprobs_;
  bool finished_ = false;
  FinishReason reason_ = FinishReason::None;
  const int64_t prompt_tokens_;
  int64_t completion_tokens_ = 0;
  std::optional<ApiError> error_;
  std::atomic<bool> cancelled_{false};
};

// What the scheduler runs on: the backend, the tokenizer of its vocabulary, and the limits of
// the engine it came from (tests give a fake backend).
struct SchedulerModel {
  ModelBackend* backend = nullptr;
  const Tokenizer* tokenizer = nullptr;
  int64_t chunk = 512;        // pre-fill tokens an item
  int64_t max_context = 0;    // prompt + max_tokens at most
  static SchedulerModel of(Engine& engine);
};

// Stated limits, refused beyond at start: every running or queued request holds one HTTP
// thread while it waits (HttpServer sizes its pool as max_batch + max_queue + a few), so these
// bound the threads the server starts.
constexpr int kMaxBatchLimit = 1024;
constexpr int kMaxQueueLimit = 1024;

struct SchedulerOptions {
  size_t kv_budget_bytes = size_t(2) << 30;
  int max_batch = 32;                  // sequences running at once
  int max_queue = 64;                  // jobs waiting for admission
  int64_t prefill_tokens_per_step = 0;  // pre-fill tokens per step (0: the engine's chunk); one chunk at least
};

class Scheduler {
 public:
  Scheduler(Engine& engine, SchedulerOptions opts, Metrics& metrics);
  Scheduler(SchedulerModel on, SchedulerOptions opts, Metrics& metrics);
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Queues a job. Throws ApiError: 400 for a job that is malformed or could never fit the KV
  // budget, 503 when the queue is full or the scheduler is shutting down.
  std::shared_ptr<Generation> submit(Job job);
  // Exact KV bytes a job reserves (its cache at prompt + max_tokens - 1 positions).
  size_t kv_cost(const Job& job) const;
  // Positions a job's cache reaches at its largest (what kv_cost is the cost of).
  static int64_t capacity(const Job& job);
  const SchedulerOptions& options() const { return opts_; }
  // Stops the thread; jobs still queued or running finish with a 503 error.
  void shutdown();

 private:
  struct Sequence;
  void run();
  void admit_locked();
  int step();  // returns the sequences in the step
  // Takes a sequence's picked token (at `now`, the end of its step); true when it finished.
  bool take_token(Sequence& s, int32_t id, std::chrono::steady_clock::time_point now);
  // Picks a host-sampled sequence's token from its logits row and records its log-probabilities.
  int32_t pick_on_host(Sequence& s, const float* row, int n_vocab);
  void finish(Sequence& s, FinishReason reason, std::optional<ApiError> error = std::nullopt);
  void publish_gauges(int last_batch);

  SchedulerModel on_;
  ModelBackend& backend_;
  const Tokenizer& tok_;
  SchedulerOptions opts_;
  Metrics& metrics_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::deque<std::unique_ptr<Sequence>> pending_;  // guarded by mu_
  size_t reserved_ = 0;                            // guarded by mu_
  std::vector<std::unique_ptr<Sequence>> active_;  // scheduler thread only
  std::vector<float> logits_;                      // the step's rows when some sequence samples on the host
  std::vector<float> masked_;                      // a JSON-mode row with its impossible tokens masked
  std::vector<std::string> pieces_;                // every token's bytes, made on the first JSON-mode pick
  std::unique_ptr<TokenMask> token_mask_;            // the vocabulary's trie, made with pieces_
  std::vector<int32_t> eog_tokens_, allowed_;      // end-of-generation tokens; a JSON step's allowed ones
  std::thread thread_;
};

}  // namespace duo::serve
