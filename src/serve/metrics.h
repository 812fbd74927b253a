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

namespace duo::serve {

// What the scheduler holds right now.
struct SchedulerGauges {
  int active = 0;           // sequences admitted (pre-filling or decoding)
  int queued = 0;           // requests waiting for admission
  size_t kv_retrieval = 0;  // KV bytes held by retrieval heads of active sequences
  size_t kv_streaming = 0;  // ... and by streaming heads
  size_t kv_reserved = 0;   // bytes reserved for admitted sequences (their final size)
  size_t kv_budget = 0;
  int last_batch = 0;       // sequences in the last step
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
  // One scheduler step: prompt tokens pre-filled, tokens generated, time taken.
  void record_step(int64_t prefill_tokens, int64_t generated, double seconds);
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
  clock::time_point start_ = clock::now();
};

}  // namespace duo::serve
