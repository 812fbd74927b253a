// The scheduler's promises over a fake backend (scheduler_fake_backend.h), in seeded random
// scenarios and a few pinned ones: the caches admitted never exceed the KV budget and all is
// given back; every request accepted finishes exactly once, with the output it gets alone
// unless cancelled or failed; admission is first come first served; refusals have the right
// status; a failing step ends exactly its sequences; pre-fill keeps to its per-step token
// budget without freezing decoders; the latency and batch histograms count what happened.
#include <gtest/gtest.h>

#include <atomic>

#include "serve/scheduler_fake_backend.h"

namespace duo::serve {
namespace {

using namespace std::chrono_literals;
using test::FakeBackend;

constexpr int64_t kMaxContext = 128;

double sample(const std::string& page, const std::string& series) {
  const size_t at = page.find("\n" + series + " ");
  return at == std::string::npos ? -1 : std::stod(page.substr(at + series.size() + 2));
}

// A job of tag `tag` (see the fake): prompt tokens from the rng, a plan of the given kind.
Job make_job(std::mt19937_64& rng, int tag, int64_t prompt, int64_t max_tokens, int kind) {
  Job j;
  for (int64_t i = 0; i < prompt; ++i) j.prompt.push_back(3 + (int32_t)(rng() % (test::kVocab - 3)));
  j.max_tokens = max_tokens;
  const int recent = 4 + (int)(rng() % 13);
  j.plan = HeadPlan::uniform(2, 2, kind == 1 ? HeadKind::Streaming : HeadKind::Retrieval, {tag, recent});
  if (kind == 2)  // duo: a random mix
    for (auto& layer : j.plan.kinds)
      for (auto& k : layer) k = rng() % 2 ? HeadKind::Streaming : HeadKind::Retrieval;
  return j;
}

struct Outcome {
  Job job;
  bool accepted = false, cancelled = false;
  ApiError refusal{0, "", ""};
  std::string text;
  FinishReason reason = FinishReason::None;
  int64_t tokens = 0;
  std::optional<ApiError> error;
};

// Waits for the end (text and all), at most `limit`.
bool drain(Generation& g, std::string& text, std::chrono::milliseconds limit = 20000ms) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (!g.wait_for(text, 2ms))
    if (std::chrono::steady_clock::now() > end) return false;
  return true;
}

void take(Outcome& o, Generation& g) {
  o.reason = g.finish_reason();
  o.tokens = g.completion_tokens();
  o.error = g.error();
}

class SchedulerProperty : public ::testing::TestWithParam<int> {};

TEST_P(SchedulerProperty, RandomTrafficKeepsEveryPromise) {
  const uint64_t seed = 1000 + GetParam();
  std::mt19937_64 rng(seed);
  auto tok = test::tiny_tokenizer();
  const int64_t chunk = std::vector<int64_t>{3, 8, 16}[rng() % 3];
  SchedulerOptions so;
  so.kv_budget_bytes = 1500 + rng() % 10000;
  so.max_batch = 1 + (int)(rng() % 6);
  so.max_queue = 2 + (int)(rng() % 11);
  so.prefill_tokens_per_step = std::vector<int64_t>{0, 1, chunk, 2 * chunk + 3, 50}[rng() % 5];
  test::Faults faults;
  faults.step_throw = 0.01, faults.alloc_throw = 0.03, faults.max_sleep_us = 150;
  FakeBackend fake(chunk, so.prefill_tokens_per_step, so.kv_budget_bytes, seed, faults);
  Metrics metrics;
  auto sched = std::make_unique<Scheduler>(SchedulerModel{&fake, tok.get(), chunk, kMaxContext}, so, metrics);
  const bool shut_early = rng() % 3 == 0;
  SCOPED_TRACE(fmt::format("seed {} chunk {} budget {} batch {} queue {} prefill {} shutdown {}", seed, chunk,
                           so.kv_budget_bytes, so.max_batch, so.max_queue, so.prefill_tokens_per_step, shut_early));

  // Tags are handed out under one lock around submit, so tag order is queue order.
  constexpr int kThreads = 3, kPerThread = 12;
  std::vector<Outcome> out(kThreads * kPerThread);
  std::mutex submit_mu;
  int next_tag = 0;
  std::atomic<bool> stop_watch{false}, shutting{false};
  std::vector<std::string> gauge_faults;
  std::thread watch([&] {  // the published gauges, all along
    while (!stop_watch) {
      const SchedulerGauges g = metrics.gauges();
      if (g.kv_reserved > so.kv_budget_bytes || g.active > so.max_batch || g.queued > so.max_queue ||
          g.kv_retrieval + g.kv_streaming > g.kv_reserved)
        gauge_faults.push_back(fmt::format("reserved {} active {} queued {} kv {}", g.kv_reserved, g.active,
                                           g.queued, g.kv_retrieval + g.kv_streaming));
      std::this_thread::sleep_for(100us);
    }
  });
  // Each client submits its requests with random gaps (or in bursts) and watches them all
  // without blocking, cancelling some at once and some once their text has started.
  std::vector<std::thread> clients;
  for (int t = 0; t < kThreads; ++t)
    clients.emplace_back([&, t] {
      std::mt19937_64 r(seed * 31 + t);
      struct Mine {
        Outcome* o;
        std::shared_ptr<Generation> g;
        bool cancel_late;
      };
      std::vector<Mine> mine;
      auto poll = [&] {
        std::erase_if(mine, [](Mine& m) {
          if (m.g->wait_for(m.o->text, 0ms)) return take(*m.o, *m.g), true;
          if (m.cancel_late && !m.o->text.empty() && !m.o->cancelled) m.g->cancel(), m.o->cancelled = true;
          return false;
        });
      };
      for (int i = 0; i < kPerThread; ++i) {
        if (r() % 2) std::this_thread::sleep_for(std::chrono::microseconds(r() % 3000));  // else a burst
        poll();
        const int64_t P = r() % 10 < 7 ? 1 + r() % 20 : 21 + r() % 80;
        const int64_t max_tokens = r() % 20 == 0 ? kMaxContext : 1 + r() % 30;
        const int mode = r() % 100 < 70 ? 0 : r() % 2 ? 1 : 2;  // cancel: never, at once, once text came
        std::lock_guard lk(submit_mu);
        Outcome& o = out[next_tag];
        o.job = make_job(r, next_tag, P, max_tokens, (int)(r() % 3));
        fake.expect(next_tag++, o.job);
        try {
          mine.push_back({&o, sched->submit(o.job), mode == 2});
          o.accepted = true;
        } catch (const ApiError& e) {
          o.refusal = e;
          continue;
        }
        if (mode == 1) mine.back().g->cancel(), o.cancelled = true;
      }
      const auto give_up = std::chrono::steady_clock::now() + 20s;  // (then reported as unfinished)
      while (!mine.empty() && std::chrono::steady_clock::now() < give_up) {
        poll();
        std::this_thread::sleep_for(1ms);
      }
    });
  std::thread stopper;
  if (shut_early)
    stopper = std::thread([&] {
      std::this_thread::sleep_for(std::chrono::microseconds(2000 + rng() % 20000));
      shutting = true;
      sched->shutdown();
    });
  for (auto& c : clients) c.join();
  if (stopper.joinable()) stopper.join();
  const test::FakeBackend::Record rec = fake.record();
  // Every request answered: its sequence is gone, and idle gauges say so (they are published
  // after the step that finished the last one; also after a shutdown).
  EXPECT_EQ(rec.live, 0);
  for (int i = 0; i < 500; ++i) {
    const SchedulerGauges g = metrics.gauges();
    if (g.kv_reserved == 0 && g.active == 0 && g.queued == 0) break;
    std::this_thread::sleep_for(2ms);
  }
  sched.reset();
  stop_watch = true;
  watch.join();
  const SchedulerGauges g = metrics.gauges();
  EXPECT_EQ(g.kv_reserved, 0u);
  EXPECT_EQ(g.active, 0);
  EXPECT_EQ(g.queued, 0);
  EXPECT_EQ(g.kv_retrieval + g.kv_streaming, 0u);
  EXPECT_LE(metrics.kv_peak(), so.kv_budget_bytes);
  EXPECT_TRUE(gauge_faults.empty()) << gauge_faults.front();
  for (size_t i = 0; i < rec.violations.size() && i < 5; ++i) ADD_FAILURE() << rec.violations[i];

  // First come, first served: tags (queue order) are admitted in increasing order.
  for (size_t i = 1; i < rec.admitted.size(); ++i) EXPECT_LT(rec.admitted[i - 1], rec.admitted[i]);

  std::map<std::string, int> finished, refused;
  int with_token = 0, alloc_errors = 0;
  int64_t gaps = 0, tokens = 0;
  for (int tag = 0; tag < (int)out.size(); ++tag) {
    const Outcome& o = out[tag];
    SCOPED_TRACE(fmt::format("request {}: prompt {} max_tokens {}", tag, o.job.prompt.size(), o.job.max_tokens));
    const bool never_fits = (int64_t)o.job.prompt.size() + o.job.max_tokens > kMaxContext ||
                            test::fake_sequence_bytes(o.job.plan, Scheduler::capacity(o.job)) > so.kv_budget_bytes;
    if (!o.accepted) {
      if (never_fits) {
        EXPECT_EQ(o.refusal.status, 400);
        EXPECT_TRUE(o.refusal.code == "context_length_exceeded" || o.refusal.code == "kv_budget_exceeded");
        refused[o.refusal.code == "kv_budget_exceeded" ? "kv_budget" : "context"]++;
      } else {
        EXPECT_EQ(o.refusal.status, 503);
        EXPECT_TRUE(o.refusal.code == "server_overloaded" || (shutting && o.refusal.code == "shutting_down"))
            << o.refusal.code;
        refused[o.refusal.code == "server_overloaded" ? "queue_full" : "shutting_down"]++;
      }
      continue;
    }
    EXPECT_FALSE(never_fits);
    const test::Expected want = test::expected_output(o.job);
    // What was streamed is what was counted, and a prefix of what the request gets alone.
    EXPECT_EQ(std::count(o.text.begin(), o.text.end(), '['), o.tokens);
    EXPECT_EQ(want.text.compare(0, o.text.size(), o.text), 0) << o.text << " vs " << want.text;
    EXPECT_EQ(rec.failed.count(tag) > 0, o.reason == FinishReason::Error && o.error && o.error->status == 500);
    switch (o.reason) {
      case FinishReason::Stop:
      case FinishReason::Length:
        EXPECT_EQ(o.text, want.text);
        EXPECT_EQ(o.reason, want.reason);
        if (o.reason == FinishReason::Length) {
          EXPECT_EQ(o.tokens, o.job.max_tokens);
        }
        EXPECT_FALSE(o.error);
        break;
      case FinishReason::Cancelled: EXPECT_TRUE(o.cancelled); break;
      case FinishReason::Error:
        ASSERT_TRUE(o.error);
        if (o.error->code == "out_of_memory") {
          ++alloc_errors;
          EXPECT_EQ(o.tokens, 0);
        } else if (o.error->code == "shutting_down") {
          EXPECT_TRUE(shutting);
        } else {
          EXPECT_EQ(o.error->status, 500);
        }
        break;
      default: ADD_FAILURE() << "unfinished";
    }
    finished[to_string(o.reason)]++;
    with_token += o.tokens > 0;
    gaps += std::max<int64_t>(0, o.tokens - 1);
    tokens += o.tokens;
  }
  EXPECT_EQ(alloc_errors, rec.alloc_failures);
  // The metrics count the same: each finish once, each refusal, tokens, steps and latencies.
  const std::string page = metrics.render();
  for (const char* r : {"stop", "length", "cancelled", "error"})
    EXPECT_EQ(std::max(0.0, sample(page, fmt::format("duo_requests_finished_total{{reason=\"{}\"}}", r))), finished[r]) << r;
  for (const char* r : {"kv_budget", "queue_full", "shutting_down"})
    EXPECT_EQ(std::max(0.0, sample(page, fmt::format("duo_requests_rejected_total{{reason=\"{}\"}}", r))), refused[r]) << r;
  EXPECT_EQ(sample(page, "duo_generated_tokens_total"), tokens);
  EXPECT_EQ(sample(page, "duo_time_to_first_token_seconds_count"), with_token);
  EXPECT_EQ(sample(page, "duo_inter_token_latency_seconds_count"), gaps);
  EXPECT_EQ(sample(page, "duo_batch_steps_total"), rec.steps_ok);
  EXPECT_EQ(sample(page, "duo_batch_step_sequences_count"), rec.steps_ok);
  EXPECT_EQ(sample(page, "duo_batch_step_sequences_sum"), rec.items_ok);
  EXPECT_EQ(sample(page, "duo_prompt_tokens_total"), rec.prefill_ok);
}

INSTANTIATE_TEST_SUITE_P(SchedulerSeeds, SchedulerProperty, ::testing::Range(0, 24));

// --- Pinned scenarios ----------------------------------------------------------------------

struct Rig {
  explicit Rig(SchedulerOptions so, int64_t chunk = 8, test::Faults f = {})
      : fake(chunk, so.prefill_tokens_per_step, so.kv_budget_bytes, 7, std::move(f)),
        sched(std::make_unique<Scheduler>(SchedulerModel{&fake, tok.get(), chunk, kMaxContext}, so, metrics)) {}
  std::shared_ptr<Generation> submit(int64_t prompt, int64_t max_tokens, int kind = 0) {
    Job j = make_job(rng, tag, prompt, max_tokens, kind);
    jobs.push_back(j);
    fake.expect(tag++, j);
    return sched->submit(j);
  }
  // Its output alone, once finished.
  void expect_alone(Generation& g, int tag_of) {
    std::string text;
    ASSERT_TRUE(drain(g, text));
    const test::Expected want = test::expected_output(jobs[tag_of]);
    EXPECT_EQ(text, want.text);
    EXPECT_EQ(g.finish_reason(), want.reason);
  }
  std::mt19937_64 rng{5};
  std::unique_ptr<Tokenizer> tok = test::tiny_tokenizer();
  FakeBackend fake;
  Metrics metrics;
  std::unique_ptr<Scheduler> sched;
  std::vector<Job> jobs;
  int tag = 0;
};

ApiError refusal(const std::function<void()>& f) {
  try {
    f();
  } catch (const ApiError& e) {
    return e;
  }
  return ApiError(0, "", "accepted");
}

TEST(SchedulerPinned, FullQueueIs503AndWhatCanNeverFitIs400) {
  Rig rig({.kv_budget_bytes = 4000, .max_batch = 1, .max_queue = 2});
  rig.fake.set_gate(false);
  auto a = rig.submit(10, 20);
  rig.fake.wait_for_steps(1);  // a is in a step: the queue is empty
  // Streaming heads are constant: a long request in streaming attention fits (and waits).
  auto b = rig.submit(5, 5), c = rig.submit(100, 28, 1);
  const ApiError full = refusal([&] { rig.submit(5, 5); });
  EXPECT_EQ(full.status, 503);
  EXPECT_EQ(full.code, "server_overloaded");
  // The same in full attention: 4 heads x 16 x 128 bytes > 4000.
  const ApiError big = refusal([&] { rig.submit(100, 28); });
  EXPECT_EQ(big.status, 400);
  EXPECT_EQ(big.code, "kv_budget_exceeded");
  EXPECT_EQ(refusal([&] { rig.submit(100, 29, 1); }).code, "context_length_exceeded");
  rig.fake.set_gate(true);
  rig.expect_alone(*a, 0);
  rig.expect_alone(*b, 1);
  rig.expect_alone(*c, 2);
  const std::string page = rig.metrics.render();
  EXPECT_EQ(sample(page, R"(duo_requests_rejected_total{reason="queue_full"})"), 1);
  EXPECT_EQ(sample(page, R"(duo_requests_rejected_total{reason="kv_budget"})"), 1);
}

TEST(SchedulerPinned, BigRequestIsNotStarvedByAStreamOfSmallOnes) {
  // Room for one big request or three small ones.
  const size_t big_cost = test::fake_sequence_bytes(HeadPlan::uniform(2, 2, HeadKind::Retrieval), 63);
  Rig rig({.kv_budget_bytes = big_cost, .max_batch = 8, .max_queue = 64});
  std::vector<std::shared_ptr<Generation>> small;
  for (int i = 0; i < 3; ++i) small.push_back(rig.submit(4, 8));
  auto big = rig.submit(32, 32);
  const int big_tag = 3;
  // Small ones keep coming while the big one waits: without FIFO they would always fit first.
  for (int i = 0; i < 30; ++i) {
    small.push_back(rig.submit(4, 8));
    std::this_thread::sleep_for(200us);
  }
  rig.expect_alone(*big, big_tag);
  for (auto& g : small) {
    std::string text;
    ASSERT_TRUE(drain(*g, text));
  }
  const auto rec = rig.fake.record();
  EXPECT_TRUE(rec.violations.empty()) << rec.violations.front();
  const auto at = std::find(rec.admitted.begin(), rec.admitted.end(), big_tag);
  ASSERT_NE(at, rec.admitted.end());
  EXPECT_TRUE(std::is_sorted(rec.admitted.begin(), rec.admitted.end()));
}

TEST(SchedulerPinned, AFailingStepEndsItsSequencesOnlyAndServingGoesOn) {
  // a decodes; b pre-fills 40 tokens, one 8-token chunk a step (the budget); c waits behind b
  // for pre-fill budget. The step where b reaches position 16 fails: a and b end with a 500,
  // c (in no failed step) gets its whole output, and so does d, submitted afterwards.
  test::Faults f;
  f.fail_if = [](const std::vector<std::pair<int, int64_t>>& items) {
    for (auto [tag, at] : items)
      if (tag == 1 && at == 16) return true;
    return false;
  };
  Rig rig({.max_batch = 4, .prefill_tokens_per_step = 8}, 8, f);
  rig.fake.set_gate(false);
  auto a = rig.submit(3, 60);
  rig.fake.wait_for_steps(1);  // a's pre-fill; then a decodes next to b's chunks at 0, 8, 16
  ASSERT_GT(test::expected_output(rig.jobs[0]).tokens, 3) << "a must still be running when the step fails";
  auto b = rig.submit(40, 5), c = rig.submit(20, 5);
  rig.fake.set_gate(true);
  std::string text;
  for (auto* g : {a.get(), b.get()}) {
    ASSERT_TRUE(drain(*g, text));
    EXPECT_EQ(g->finish_reason(), FinishReason::Error);
    ASSERT_TRUE(g->error());
    EXPECT_EQ(g->error()->status, 500);
    EXPECT_NE(std::string(g->error()->what()).find("fake device fault"), std::string::npos);
  }
  rig.expect_alone(*c, 2);
  rig.expect_alone(*rig.submit(6, 6), 3);
  const auto rec = rig.fake.record();
  EXPECT_EQ(rec.failed, (std::set<int>{0, 1}));
  EXPECT_TRUE(rec.violations.empty()) << rec.violations.front();
  EXPECT_EQ(rec.max_prefill, 8);
}

TEST(SchedulerPinned, ATokenOutsideTheVocabularyEndsItsSequenceOnlyWith500) {
  // The backend picks an id the tokenizer has no text for (a model whose embedding has more
  // rows than its vocabulary) for request 0's third token. That used to throw on the scheduler
  // thread and end the server; now request 0 ends with a 500 in the OpenAI format, after the
  // text it already had, and the request beside it and the ones after are served.
  test::Faults f;
  f.repick = [n = 0](int tag, int32_t id) mutable { return tag == 0 && ++n == 3 ? test::kVocab + 7 : id; };
  Rig rig({.max_batch = 4}, 8, f);
  rig.fake.set_gate(false);
  auto a = rig.submit(3, 20), b = rig.submit(5, 10);
  ASSERT_GE(test::expected_output(rig.jobs[0]).tokens, 3) << "request 0 must reach its third token";
  rig.fake.set_gate(true);
  std::string text;
  ASSERT_TRUE(drain(*a, text));
  EXPECT_EQ(a->finish_reason(), FinishReason::Error);
  ASSERT_TRUE(a->error());
  EXPECT_EQ(a->error()->status, 500);
  EXPECT_EQ(a->error()->type, "server_error");
  EXPECT_NE(std::string(a->error()->what()).find("token id 47, outside the vocabulary of 40 tokens"),
            std::string::npos)
      << a->error()->what();
  EXPECT_EQ(a->completion_tokens(), 2);
  EXPECT_EQ(text, test::expected_output(rig.jobs[0]).text.substr(0, text.size()));
  rig.expect_alone(*b, 1);
  rig.expect_alone(*rig.submit(6, 6), 2);
  const auto rec = rig.fake.record();
  EXPECT_TRUE(rec.violations.empty()) << rec.violations.front();
  EXPECT_EQ(rec.live, 0);
  // Idle again: the gauges are published after the finished sequences are gone.
  const auto until = std::chrono::steady_clock::now() + 5s;
  while (rig.metrics.gauges().active != 0 && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(1ms);
  EXPECT_EQ(rig.metrics.gauges().active, 0);
  EXPECT_EQ(rig.metrics.gauges().kv_reserved, 0u);
  EXPECT_EQ(sample(rig.metrics.render(), R"(duo_requests_finished_total{reason="error"})"), 1);
}

TEST(SchedulerPinned, PrefillKeepsToItsTokenBudgetAndDecodersKeepGoing) {
  // Chunks of 8, 12 pre-fill tokens a step: b's first chunk leaves 4, too few for c's (a chunk is
  // never cut); then b's last 4 and c's first 8 make 12. a decodes in every step (the fake checks).
  Rig rig({.max_batch = 4, .prefill_tokens_per_step = 12}, 8);
  rig.fake.set_gate(false);
  auto a = rig.submit(2, 30);
  rig.fake.wait_for_steps(1);
  ASSERT_GT(test::expected_output(rig.jobs[0]).tokens, 4) << "a must still be decoding";
  auto b = rig.submit(12, 3), c = rig.submit(12, 3);
  rig.fake.set_gate(true);
  for (int i = 0; i < 3; ++i) rig.expect_alone(*std::vector{a, b, c}[i], i);
  const auto rec = rig.fake.record();
  EXPECT_TRUE(rec.violations.empty()) << rec.violations.front();
  EXPECT_EQ(rec.max_prefill, 12);
}

TEST(SchedulerPinned, ShutdownAnswersQueuedAndRunningWith503) {
  Rig rig({.max_batch = 1});
  rig.fake.set_gate(false);
  auto a = rig.submit(5, 50), b = rig.submit(5, 50);
  rig.fake.wait_for_steps(1);
  std::thread stop([&] { rig.sched->shutdown(); });
  // Shutdown waits for the step in flight; once it refuses new jobs, let that step end.
  while (refusal([&] { rig.submit(5, 5); }).code != "shutting_down") std::this_thread::sleep_for(100us);
  rig.fake.set_gate(true);
  stop.join();
  for (auto* g : {a.get(), b.get()}) {
    std::string text;
    ASSERT_TRUE(drain(*g, text, 0ms));
    EXPECT_EQ(g->finish_reason(), FinishReason::Error);
    ASSERT_TRUE(g->error());
    EXPECT_EQ(g->error()->status, 503);
    EXPECT_EQ(g->error()->code, "shutting_down");
  }
  EXPECT_EQ(refusal([&] { rig.submit(5, 5); }).code, "shutting_down");
  EXPECT_EQ(rig.fake.record().live, 0);
  EXPECT_EQ(rig.metrics.gauges().kv_reserved, 0u);
  EXPECT_EQ(rig.metrics.gauges().active, 0);
}

}  // namespace
}  // namespace duo::serve
