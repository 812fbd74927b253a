// Server counters and gauges, rendered in the Prometheus text exposition format (version
// 0.0.4) for GET /metrics. Thread-safe: HTTP threads count requests, the scheduler thread
// records steps and its state.
#pragma once
#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace duo::serve {

// A Prometheus histogram: counts of observations at or below fixed bounds (rendered
// cumulatively, with +Inf), their sum and their number.
struct Histogram {
  explicit Histogram(std::vector<double> bounds);
  void observe(double v);
  void render(std::string& out, const char* name, const char* help) const;
  std::vector<double> bounds;
  std::vector<uint64_t> counts;  // per bucket (not cumulative); the last one is +Inf
  double sum = 0.0;
  uint64_t count = 0;
};

// What the scheduler holds right now.
struct SchedulerGauges {
  int active = 0;           // sequences admitted (pre-filling or decoding)
  int queued = 0;           // requests waiting for admission
  size_t kv_retrieval = 0;  // KV bytes held by retrieval heads of active sequences
  size_t kv_streaming = 0;  // ... and by streaming heads
  size_t kv_reserved = 0;   // bytes reserved for admitted sequences (their final size)
  size_t kv_budget = 0;
  int last_batch = 0;       // sequences in the last step
  // The device's shared retrieval-head page pools (ModelBackend::page_pool_use; 0 on the CPU):
  // pages held by sequences, and mapped pages free for the next ones.
  size_t pool_used = 0, pool_idle = 0;
};

class Metrics {
 public:
  using clock = std::chrono::steady_clock;
  static constexpr double kRateWindowSeconds = 10.0;

  // endpoint: a route of this server ("other" for anything else, so that clients cannot
  // create unbounded label sets).
  void count_request(const std::string& endpoint, int status);
  void count_rejected(const std::string& reason);  // kv_budget, queue_full, shutting_down, ...
  void count_finished(const std::string& reason);  // stop, length, cancelled, error
  // One scheduler step: sequences in it, prompt tokens pre-filled, tokens generated, time taken.
  void record_step(int sequences, int64_t prefill_tokens, int64_t generated, double seconds);
  // Latencies seen by clients: a request's first token after its submission, and the gap
  // between consecutive tokens of one sequence (seconds).
  void observe_first_token(double seconds);
  void observe_inter_token(double seconds);
  void set_gauges(const SchedulerGauges& g);
  // Total KV bytes held at some moment (for the peak).
  void observe_kv(size_t bytes);
  SchedulerGauges gauges() const;
  size_t kv_peak() const;

  std::string render() const;

 private:
  struct Window {
    clock::time_point t;
    int64_t prompt, generated;
  };
  mutable std::mutex mu_;
  std::map<std::pair<std::string, int>, uint64_t> requests_;
  std::map<std::string, uint64_t> rejected_, finished_;
  uint64_t prompt_tokens_ = 0, generated_tokens_ = 0, steps_ = 0;
  double step_seconds_ = 0.0;
  std::deque<Window> window_;
  SchedulerGauges g_;
  size_t kv_peak_ = 0;
  Histogram ttft_{{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}};
  Histogram itl_{{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}};
  Histogram batch_{{1, 2, 4, 8, 16, 32, 64, 128, 256}};
  clock::time_point start_ = clock::now();
};

}  // namespace duo::serve
