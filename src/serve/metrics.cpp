#include "serve/metrics.h"

#include <fmt/format.h>

namespace duo::serve {

namespace {
std::string escape_label(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"')
      out += '\\', out += c;
    else if (c == '\n')
      out += "\\n";
    else
      out += c;
  }
  return out;
}

void header(std::string& out, const char* name, const char* type, const char* help) {
  out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
}
}  // namespace

Histogram::Histogram(std::vector<double> b) : bounds(std::move(b)), counts(bounds.size() + 1, 0) {}

void Histogram::observe(double v) {
  size_t i = 0;
  while (i < bounds.size() && v > bounds[i]) ++i;  // buckets are "le": v <= bound
  ++counts[i];
  sum += v;
  ++count;
}

void Histogram::render(std::string& out, const char* name, const char* help) const {
  header(out, name, "histogram", help);
  uint64_t cumulative = 0;
  for (size_t i = 0; i < bounds.size(); ++i) {
    cumulative += counts[i];
    out += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", name, bounds[i], cumulative);
  }
  out += fmt::format("{}_bucket{{le=\"+Inf\"}} {}\n", name, count);
  out += fmt::format("{}_sum {:.6f}\n{}_count {}\n", name, sum, name, count);
}

void Metrics::count_request(const std::string& endpoint, int status) {
  std::lock_guard lk(mu_);
  ++requests_[{endpoint, status}];
}

void Metrics::count_rejected(const std::string& reason) {
  std::lock_guard lk(mu_);
  ++rejected_[reason];
}

void Metrics::count_finished(const std::string& reason) {
  std::lock_guard lk(mu_);
  ++finished_[reason];
}

void Metrics::record_step(int sequences, int64_t prefill_tokens, int64_t generated, double seconds) {
  std::lock_guard lk(mu_);
  ++steps_;
  batch_.observe(sequences);
  step_seconds_ += seconds;
  prompt_tokens_ += (uint64_t)prefill_tokens;
  generated_tokens_ += (uint64_t)generated;
  const auto now = clock::now();
  window_.push_back({now, prefill_tokens, generated});
  while (!window_.empty() && std::chrono::duration<double>(now - window_.front().t).count() > kRateWindowSeconds)
    window_.pop_front();
}

void Metrics::observe_first_token(double seconds) {
  std::lock_guard lk(mu_);
  ttft_.observe(seconds);
}

void Metrics::observe_inter_token(double seconds) {
  std::lock_guard lk(mu_);
  itl_.observe(seconds);
}

void Metrics::set_gauges(const SchedulerGauges& g) {
  std::lock_guard lk(mu_);
  g_ = g;
  kv_peak_ = std::max(kv_peak_, g.kv_retrieval + g.kv_streaming);
}

void Metrics::observe_kv(size_t bytes) {
  std::lock_guard lk(mu_);
  kv_peak_ = std::max(kv_peak_, bytes);
}

SchedulerGauges Metrics::gauges() const {
  std::lock_guard lk(mu_);
  return g_;
}

size_t Metrics::kv_peak() const {
  std::lock_guard lk(mu_);
  return kv_peak_;
}

std::string Metrics::render() const {
  std::lock_guard lk(mu_);
  std::string out;
  header(out, "duo_requests_total", "counter", "HTTP requests answered, by endpoint and status code.");
  for (const auto& [key, n] : requests_)
    out += fmt::format("duo_requests_total{{endpoint=\"{}\",status=\"{}\"}} {}\n", escape_label(key.first), key.second, n);
  header(out, "duo_requests_rejected_total", "counter", "Generation requests refused before admission, by reason.");
  for (const auto& [reason, n] : rejected_)
    out += fmt::format("duo_requests_rejected_total{{reason=\"{}\"}} {}\n", escape_label(reason), n);
  header(out, "duo_requests_finished_total", "counter", "Admitted generation requests that ended, by finish reason.");
  for (const auto& [reason, n] : finished_)
    out += fmt::format("duo_requests_finished_total{{reason=\"{}\"}} {}\n", escape_label(reason), n);
  header(out, "duo_prompt_tokens_total", "counter", "Prompt tokens pre-filled.");
  out += fmt::format("duo_prompt_tokens_total {}\n", prompt_tokens_);
  header(out, "duo_generated_tokens_total", "counter", "Tokens generated.");
  out += fmt::format("duo_generated_tokens_total {}\n", generated_tokens_);
  // Rates over the last window of steps (0 when idle for longer than the window).
  double span = 0.0;
  int64_t prompt = 0, generated = 0;
  const auto now = clock::now();
  for (const auto& w : window_) {
    if (std::chrono::duration<double>(now - w.t).count() > kRateWindowSeconds) continue;
    prompt += w.prompt;
    generated += w.generated;
  }
  if (!window_.empty()) span = std::max(1.0, std::min(kRateWindowSeconds, std::chrono::duration<double>(now - start_).count()));
  header(out, "duo_generation_tokens_per_second", "gauge", "Tokens generated per second over the last 10 s.");
  out += fmt::format("duo_generation_tokens_per_second {:.3f}\n", span > 0 ? generated / span : 0.0);
  header(out, "duo_prompt_tokens_per_second", "gauge", "Prompt tokens pre-filled per second over the last 10 s.");
  out += fmt::format("duo_prompt_tokens_per_second {:.3f}\n", span > 0 ? prompt / span : 0.0);
  header(out, "duo_batch_steps_total", "counter", "Batched forward steps run by the scheduler.");
  out += fmt::format("duo_batch_steps_total {}\n", steps_);
  header(out, "duo_batch_step_seconds_total", "counter", "Time spent in batched forward steps.");
  out += fmt::format("duo_batch_step_seconds_total {:.6f}\n", step_seconds_);
  batch_.render(out, "duo_batch_step_sequences", "Sequences in each batched forward step.");
  ttft_.render(out, "duo_time_to_first_token_seconds",
               "Time from a request's submission to its first generated token.");
  itl_.render(out, "duo_inter_token_latency_seconds", "Time between consecutive generated tokens of a request.");
  header(out, "duo_batch_sequences", "gauge", "Sequences in the last batched step.");
  out += fmt::format("duo_batch_sequences {}\n", g_.last_batch);
  header(out, "duo_active_sequences", "gauge", "Sequences admitted and running (pre-fill or decode).");
  out += fmt::format("duo_active_sequences {}\n", g_.active);
  header(out, "duo_queue_depth", "gauge", "Requests waiting for admission.");
  out += fmt::format("duo_queue_depth {}\n", g_.queued);
  header(out, "duo_kv_bytes", "gauge", "KV cache bytes held by running sequences, by head kind.");
  out += fmt::format("duo_kv_bytes{{kind=\"retrieval\"}} {}\n", g_.kv_retrieval);
  out += fmt::format("duo_kv_bytes{{kind=\"streaming\"}} {}\n", g_.kv_streaming);
  header(out, "duo_kv_bytes_peak", "gauge", "Largest total KV cache bytes held at once since the start.");
  out += fmt::format("duo_kv_bytes_peak {}\n", kv_peak_);
  header(out, "duo_kv_reserved_bytes", "gauge", "KV bytes reserved by admitted sequences (their size at max_tokens).");
  out += fmt::format("duo_kv_reserved_bytes {}\n", g_.kv_reserved);
  header(out, "duo_kv_pool_bytes", "gauge",
         "GPU page pool of the retrieval heads: bytes of pages held by sequences, and mapped but free.");
  out += fmt::format("duo_kv_pool_bytes{{state=\"used\"}} {}\n", g_.pool_used);
  out += fmt::format("duo_kv_pool_bytes{{state=\"free\"}} {}\n", g_.pool_idle);
  header(out, "duo_kv_budget_bytes", "gauge", "KV cache memory budget that admission respects.");
  out += fmt::format("duo_kv_budget_bytes {}\n", g_.kv_budget);
  return out;
}

}  // namespace duo::serve
