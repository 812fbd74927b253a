#include "serve/http_server.h"

#include <httplib.h>

#include <algorithm>
#include <chrono>
#include <cstdio>

#include "core/error.h"
#include "serve/api_error.h"
#include "serve/connection_watch.h"
#include "serve/openai_json.h"

namespace duo::serve {

using nlohmann::json;

namespace {

constexpr auto kPoll = std::chrono::milliseconds(50);  // how often a waiting request checks its client
constexpr int kClientClosed = 499;                      // status recorded when the client left (nginx's)

const char* const kRoutes[] = {"/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics"};

// The metrics label of a path: a route of this server or "other" (bounded label values).
std::string route_label(const std::string& path) {
  for (const char* r : kRoutes)
    if (path == r) return r;
  if (path.rfind("/v1/models/", 0) == 0) return "/v1/models/{id}";
  return "other";
}

void send_json(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(dump(body), "application/json");
}

void send_error(httplib::Response& res, const ApiError& e) { send_json(res, e.status, error_json(e)); }

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

struct HttpServer::Impl {
  Impl(const ServeContext& c, Scheduler& s, Metrics& m, HttpOptions o)
      : ctx(c), scheduler(s), metrics(m), opts(std::move(o)), created(unix_now()) {}

  const ServeContext& ctx;
  Scheduler& scheduler;
  Metrics& metrics;
  HttpOptions opts;
  int64_t created;
  httplib::Server svr;

  void setup();
  void generate(Endpoint ep, const httplib::Request& req, httplib::Response& res);
};

void HttpServer::Impl::setup() {
  // One thread a running or queued request (each waits for its generation), plus some for
  // /health, /metrics and requests refused at once. The scheduler caps max_batch and max_queue,
  // and an explicit count is capped the same way: asking for more threads than the system
  // gives aborts the server at start.
  const int threads = std::min(opts.threads > 0 ? opts.threads
                                                : scheduler.options().max_batch + scheduler.options().max_queue + 16,
                               kMaxBatchLimit + kMaxQueueLimit + 16);
  svr.new_task_queue = [threads] { return new httplib::ThreadPool((size_t)threads); };
  svr.set_payload_max_length(opts.max_body_bytes);

  svr.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    const SchedulerGauges g = metrics.gauges();
    send_json(res, 200, {{"status", "ok"}, {"model", ctx.model_id}, {"active", g.active}, {"queued", g.queued}});
  });
  svr.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics.render(), "text/plain; version=0.0.4; charset=utf-8");
  });
  svr.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
    send_json(res, 200, models_body(ctx.model_id, created));
  });
  svr.Get(R"(/v1/models/(.+))", [this](const httplib::Request& req, httplib::Response& res) {
    const std::string id = req.matches[1];
    if (id == ctx.model_id) return send_json(res, 200, model_object(ctx.model_id, created));
    send_error(res, ApiError(404, "invalid_request_error", fmt::format("the model '{}' does not exist", id), "model",
                             "model_not_found"));
  });
  svr.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
    generate(Endpoint::Completions, req, res);
  });
  svr.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) {
    generate(Endpoint::ChatCompletions, req, res);
  });

  // Errors httplib raises itself (no route, body too large, unreadable request) get an
  // OpenAI error body too; responses that already have one pass through.
  svr.set_error_handler(httplib::Server::HandlerWithResponse([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
    int status = res.status;
    std::string type = "invalid_request_error", code, msg;
    switch (status) {
      case 404:
        if (route_label(req.path) != "other" && req.path.rfind("/v1/models/", 0) != 0) {
          status = 405;
          code = "method_not_allowed";
          msg = fmt::format("method {} is not allowed on {}", req.method, req.path);
        } else {
          code = "not_found";
          msg = fmt::format("no such endpoint: {} {}", req.method, req.path);
        }
        break;
      case 413:
        code = "payload_too_large";
        msg = "the request body is larger than this server accepts";
        break;
      case 400: msg = "malformed HTTP request"; break;
      case 414: msg = "the request URI is too long"; break;
      case kClientClosed: msg = "the client closed the connection"; break;
      default:
        if (status >= 500) type = "server_error";
        msg = fmt::format("HTTP error {}", status);
    }
    res.status = status;
    res.set_content(dump(error_json(type, msg, "", code)), "application/json");
    return httplib::Server::HandlerResponse::Handled;
  }));
  svr.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    std::string what = "unknown exception";
    int status = 500;
    try {
      std::rethrow_exception(ep);
    } catch (const ApiError& e) {
      return send_error(res, e);
    } catch (const std::bad_alloc&) {
      status = 503;
      what = "out of memory";
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    send_json(res, status, error_json("server_error", fmt::format("internal error: {}", what)));
  });
  svr.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
    metrics.count_request(route_label(req.path), res.status);
    if (opts.log_requests)
      std::fprintf(stderr, "duo serve: %s %s %s -> %d\n", req.remote_addr.c_str(), req.method.c_str(),
                   req.path.c_str(), res.status);
  });
}

void HttpServer::Impl::generate(Endpoint ep, const httplib::Request& req, httplib::Response& res) {
  GenerationRequest gr;
  std::shared_ptr<Generation> gen;
  try {
    gr = parse_request(ep, req.body);
    gen = scheduler.submit(prepare_job(gr, ctx));
  } catch (const ApiError& e) {
    return send_error(res, e);
  }
  const ResponseMeta meta = new_response_meta(ep, ctx.model_id);
  auto watch = std::make_shared<ConnectionWatch>(req.remote_addr, req.remote_port, req.local_addr, req.local_port);

  // Wait for the first text (or the end) before answering, so that a failure before any
  // output still gets its own status code; give up if the client leaves meanwhile.
  std::string text;
  bool done = false;
  while (!(done = gen->wait_for(text, kPoll)) && (gr.stream ? text.empty() : true)) {
    if (watch->peer_gone()) {
      gen->cancel();
      return send_json(res, kClientClosed, error_json("invalid_request_error", "the client closed the connection"));
    }
  }
  if (done)
    if (auto err = gen->error()) return send_error(res, *err);
  if (!gr.stream)
    return send_json(res, 200,
                     completion_body(ep, meta, text, gen->finish_reason(), gen->prompt_tokens(), gen->completion_tokens()));

  res.set_header("Cache-Control", "no-cache");
  const bool include_usage = gr.include_usage;
  res.set_chunked_content_provider(
      "text/event-stream",
      [gen, watch, meta, ep, include_usage, first = std::move(text)](size_t, httplib::DataSink& sink) {
        auto send = [&](const json& j) {
          const std::string ev = sse_event(j);
          return sink.write(ev.data(), ev.size());
        };
        auto client_left = [&] {
          gen->cancel();
          return false;
        };
        if (ep == Endpoint::ChatCompletions && !send(role_chunk(meta))) return client_left();
        std::string text = first;
        for (;;) {
          const bool finished = gen->wait_for(text, kPoll);
          if (!text.empty()) {
            if (!send(stream_chunk(ep, meta, text, FinishReason::None))) return client_left();
            text.clear();
          }
          if (finished) break;
          if (watch->peer_gone()) return client_left();
        }
        if (auto err = gen->error()) {
          send(error_json(*err));
        } else {
          send(stream_chunk(ep, meta, "", gen->finish_reason()));
          if (include_usage) send(usage_chunk(ep, meta, gen->prompt_tokens(), gen->completion_tokens()));
        }
        static const char kDone[] = "data: [DONE]\n\n";
        sink.write(kDone, sizeof(kDone) - 1);
        sink.done();
        return true;
      },
      [gen](bool success) {
        if (!success) gen->cancel();  // the connection failed before the stream ended
      });
}

HttpServer::HttpServer(const ServeContext& ctx, Scheduler& scheduler, Metrics& metrics, HttpOptions opts)
    : impl_(std::make_unique<Impl>(ctx, scheduler, metrics, std::move(opts))) {
  impl_->setup();
}

HttpServer::~HttpServer() = default;

int HttpServer::bind() {
  const HttpOptions& o = impl_->opts;
  if (o.port == 0) {
    const int port = impl_->svr.bind_to_any_port(o.host);
    DUO_CHECK(port > 0, "cannot listen on {} (any port)", o.host);
    return port;
  }
  DUO_CHECK(impl_->svr.bind_to_port(o.host, o.port), "cannot listen on {}:{} (in use, or not an address of this host?)",
            o.host, o.port);
  return o.port;
}

void HttpServer::listen() { impl_->svr.listen_after_bind(); }

void HttpServer::stop() { impl_->svr.stop(); }

}  // namespace duo::serve
