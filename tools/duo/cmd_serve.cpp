// `duo serve`: an OpenAI-compatible HTTP server with continuous batching (src/serve/).
#include <fmt/core.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include "commands.h"
#include "core/error.h"
#include "engine/backend.h"
#include "io/gguf.h"
#include "io/head_pattern.h"
#include "model/model.h"
#include "serve/metrics.h"
#include "serve/prepare.h"
#include "serve/scheduler.h"
#ifdef DUO_HAVE_HTTPLIB
#include "serve/http_server.h"
#endif

namespace duo::cli {

namespace {
constexpr int64_t kGpuPrefillStep = 2048;  // default pre-fill tokens a step on CUDA (see where it is used)

struct ServeOptions {
  ModelOptions model;
  std::string host = "127.0.0.1";
  int port = 8080;
  std::string model_id;
  std::string chat_template;  // --chat-template FILE
  double kv_budget_mib = 0;  // 0: 2048 MiB on the CPU, what the GPU has free after the weights on CUDA
  int max_batch = 32;
  int max_queue = 64;
  int64_t prefill_step = 0;
  int64_t default_max_tokens = 256;
  double max_body_mib = 8;
  std::vector<std::string> pattern_files;  // NAME=FILE
  bool verbose = false;
  std::string api_key;
  bool no_pack = false;
};

#ifdef DUO_HAVE_HTTPLIB
void run_server(const ServeOptions& o) {
  // SIGINT/SIGTERM are taken by one waiting thread (every thread started from here on
  // inherits the blocked mask); SIGPIPE must not kill the server when a client disconnects.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  Engine engine(engine_options(o.model));
  ModelBackend& backend = engine.backend();
  const ModelConfig& c = backend.config();
  const bool gpu = backend.device() == Device::Cuda;
  DUO_CHECK(!(gpu && o.no_pack), "--no-pack is a CPU option (the CUDA backend packs nothing)");
  // A KV type the device cannot store is refused now, not at the first request.
  (void)backend.kv_bytes_for(engine.plan(), 1);
  if (!o.no_pack) {
    // Batched steps run the many-token matmul kernel every step: the CPU packs its panels once
    // (the CUDA backend prepares nothing: 0 bytes).
    const size_t packed = backend.prepare_batched_weights();
    if (packed) fmt::print(stderr, "duo serve: weights packed for batched matmuls ({:.0f} MiB)\n", packed / 1048576.0);
  }
  serve::ServeContext ctx;
  ctx.engine = &engine;
  ctx.model_id = o.model_id;
  if (ctx.model_id.empty()) ctx.model_id = model_name_of_path(engine.options().model_path);
  try {
    ctx.chat = chat_template_of(engine.model(), engine.tokenizer(), o.chat_template);
  } catch (const Error& e) {
    ctx.chat_error = e.what();
  }
  DUO_CHECK(o.default_max_tokens >= 1, "--max-tokens must be at least 1");
  ctx.default_max_tokens = o.default_max_tokens;
  ctx.default_retrieval_ratio = o.model.retrieval_ratio;
  ctx.ratio_policy = parse_ratio_policy(o.model.ratio_policy);
  ctx.default_threshold = o.model.threshold;
  if (!o.model.pattern.empty()) {
    ctx.patterns["default"] = load_gates_tsv(o.model.pattern);
    ctx.default_pattern = "default";
  }
  for (const std::string& spec : o.pattern_files) {
    const size_t eq = spec.find('=');
    DUO_CHECK(eq != std::string::npos && eq > 0 && eq + 1 < spec.size(), "--pattern-file wants NAME=FILE (got '{}')",
              spec);
    const std::string name = spec.substr(0, eq);
    DUO_CHECK(!ctx.patterns.count(name), "pattern name '{}' given twice", name);
    GateMatrix g = load_gates_tsv(spec.substr(eq + 1));
    DUO_CHECK(g.n_layers == c.n_layers && g.n_kv_heads == c.n_kv_heads,
              "pattern '{}' ({}) is {} layers x {} KV heads; the model has {} x {}", name, spec.substr(eq + 1),
              g.n_layers, g.n_kv_heads, c.n_layers, c.n_kv_heads);
    ctx.patterns[name] = std::move(g);
  }

  DUO_CHECK(o.kv_budget_mib >= 0, "--kv-budget must be positive");
  serve::SchedulerOptions so;
  so.kv_budget_bytes = (size_t)(o.kv_budget_mib * 1048576.0);
  if (gpu) {
    // The budget is device memory: caches beyond what is free would fail mid-generation.
    const size_t free_kv = backend.free_kv_memory();
    DUO_CHECK(free_kv > 0, "the GPU has no memory left for KV caches after the weights ({})", backend.description());
    DUO_CHECK(so.kv_budget_bytes <= free_kv,
              "--kv-budget {:.0f} MiB is more than the {:.0f} MiB this GPU has free for KV caches after the weights "
              "and activations; give at most that, or leave --kv-budget out to use it all",
              o.kv_budget_mib, free_kv / 1048576.0);
    if (so.kv_budget_bytes == 0) so.kv_budget_bytes = free_kv;
  } else if (so.kv_budget_bytes == 0) {
    so.kv_budget_bytes = size_t(2048) << 20;
  }
  so.max_batch = o.max_batch;
  so.max_queue = o.max_queue;
  // On a GPU a step of one 512-token chunk leaves its GEMMs small and long prompts queue
  // (seconds to the first token under a long-context load); 2048 is vLLM's token budget too.
  so.prefill_tokens_per_step = o.prefill_step > 0 ? o.prefill_step : gpu ? kGpuPrefillStep : 0;
  serve::Metrics metrics;
  serve::Scheduler scheduler(engine, so, metrics);

  serve::HttpOptions ho;
  ho.host = o.host;
  ho.port = o.port;
  ho.max_body_bytes = (size_t)(o.max_body_mib * 1048576.0);
  ho.log_requests = o.verbose;
  ho.api_key = o.api_key;
  if (ho.api_key.empty())
    if (const char* k = std::getenv("DUO_API_KEY")) ho.api_key = k;
  serve::HttpServer server(ctx, scheduler, metrics, ho);
  const int port = server.bind();

  std::thread waiter([&] {
    int sig = 0;
    sigwait(&stop_signals, &sig);
    if (sig == SIGINT || sig == SIGTERM) fmt::print(stderr, "duo serve: signal {}, stopping\n", sig);
    // Requests in flight end first (with 503), so that their connections let go, then the
    // listener closes and its threads finish.
    scheduler.shutdown();
    server.stop();
  });
  fmt::print("duo serve: listening on http://{}:{} (model '{}', {} attention, sink {} recent {}, KV budget {:.0f} "
             "MiB, max batch {}, pre-fill {} tokens a step, context {}, {})\n",
             o.host, port, ctx.model_id, to_string(engine.options().attention), engine.options().window.sink,
             engine.options().window.recent, so.kv_budget_bytes / 1048576.0, o.max_batch,
             so.prefill_tokens_per_step > 0 ? so.prefill_tokens_per_step : engine.options().chunk, engine.max_context(),
             backend.description());
  std::fflush(stdout);
  server.listen();
  scheduler.shutdown();
  pthread_kill(waiter.native_handle(), SIGTERM);  // no-op when the waiter already took a signal
  waiter.join();
  fmt::print(stderr, "duo serve: stopped\n");
}
#endif
}  // namespace

void add_serve(CLI::App& app) {
  auto o = std::make_shared<ServeOptions>();
  auto* cmd = app.add_subcommand("serve", "OpenAI-compatible HTTP server (continuous batching, KV budget)");
  add_model_options(*cmd, o->model);
  cmd->add_option("--host", o->host, "address to listen on");
  cmd->add_option("--port", o->port, "port to listen on (0: any free port, printed at start)")->check(CLI::Range(0, 65535));
  cmd->add_option("--model-id", o->model_id,
                  "model name clients ask for (default: the GGUF file name without .gguf, or the directory name)");
  add_chat_template_option(*cmd, o->chat_template);
  // Upper bounds keep the MiB -> bytes conversions below within size_t.
  cmd->add_option("--kv-budget", o->kv_budget_mib,
                  "KV cache memory budget in MiB for all running sequences (default: 2048 on the CPU; on CUDA what "
                  "the GPU has free after the weights)")
      ->check(CLI::Range(1.0 / 1048576, double(1 << 30)))
      ->check(finite_number());
  cmd->add_option("--max-batch", o->max_batch,
                  fmt::format("most sequences decoding together (at most {})", serve::kMaxBatchLimit))
      ->check(CLI::Range(1, serve::kMaxBatchLimit));
  cmd->add_option("--max-queue", o->max_queue,
                  fmt::format("most requests waiting for admission, more get 503 (at most {}: each holds an HTTP "
                              "thread)",
                              serve::kMaxQueueLimit))
      ->check(CLI::Range(0, serve::kMaxQueueLimit));
  cmd->add_option("--prefill-step", o->prefill_step, fmt::format("pre-fill tokens per batched step (0: one --chunk on the CPU, {} on CUDA)", kGpuPrefillStep))
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--max-tokens", o->default_max_tokens, "max_tokens of requests that give none")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--max-body", o->max_body_mib, "largest request body in MiB (more gets 413)")
      ->check(CLI::Range(1.0 / 1048576, 65536.0))
      ->check(finite_number());
  cmd->add_option("--pattern-file", o->pattern_files, "NAME=FILE: a head pattern requests may name (repeatable)");
  cmd->add_flag("-v,--verbose", o->verbose, "log every request on stderr");
  cmd->add_option("--api-key", o->api_key,
                  "require 'Authorization: Bearer KEY' on every route but /health (default: $DUO_API_KEY; none)");
  cmd->add_flag("--no-pack", o->no_pack,
                "do not pack the weights for batched matmuls (saves ~2 bytes a weight, batched steps get slower)");
  cmd->callback([o] {
#ifdef DUO_HAVE_HTTPLIB
    run_server(*o);
#else
    fail("this duo was built without cpp-httplib, so it cannot serve; install libcpp-httplib-dev and rebuild");
#endif
  });
}

}  // namespace duo::cli
