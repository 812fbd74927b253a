#include "serve/http_server.h"

#include <httplib.h>

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>

#include "core/error.h"
#include "serve/api_error.h"
#include "serve/connection_watch.h"
#include "serve/http_front.h"
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

// cpp-httplib's Server with its request processing callable on a stream we provide (its own
// listener is not used: see http_front.h).
class Router : public httplib::Server {
 public:
  Router() : placeholder_(::open("/dev/null", O_RDONLY | O_CLOEXEC)) {
    DUO_CHECK(placeholder_ >= 0, "cannot open /dev/null");
    set_serving(true);
  }
  ~Router() override {
    set_serving(false);
    ::close(placeholder_);
  }
  using httplib::Server::process_request;
  // cpp-httplib stops writing a streamed answer once its listening socket is gone
  // (is_shutting_down(): svr_sock_ == INVALID_SOCKET). Its listener is not used here, so the
  // slot holds a descriptor of our own while serving (nothing of cpp-httplib's closes it).
  void set_serving(bool on) { svr_sock_ = on ? placeholder_ : INVALID_SOCKET; }

 private:
  int placeholder_;
};

// One complete request (already read by the front end) to cpp-httplib, the answer straight to
// the socket. Reads end with the request: cpp-httplib never waits on the client.
class FrontStream : public httplib::Stream {
 public:
  FrontStream(const FrontRequest& r, int write_timeout_ms) : r_(r), timeout_ms_(write_timeout_ms) {}
  bool is_readable() const override { return pos_ < r_.bytes.size(); }
  bool is_writable() const override {
    pollfd p{r_.fd, POLLOUT, 0};
    return !failed_ && poll(&p, 1, timeout_ms_) > 0 && !(p.revents & (POLLERR | POLLHUP | POLLNVAL));
  }
  ssize_t read(char* ptr, size_t size) override {
    const size_t n = std::min(size, r_.bytes.size() - pos_);
    std::memcpy(ptr, r_.bytes.data() + pos_, n);
    pos_ += n;
    return (ssize_t)n;
  }
  // Waits at most the write timeout for the client to take more (a client that stops
  // reading cannot hold the thread longer than that per write).
  ssize_t write(const char* ptr, size_t size) override {
    if (failed_) return -1;
    for (;;) {
      const ssize_t n = ::send(r_.fd, ptr, size, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n >= 0) return n;
      if (errno == EINTR) continue;
      pollfd p{r_.fd, POLLOUT, 0};
      if ((errno != EAGAIN && errno != EWOULDBLOCK) || poll(&p, 1, timeout_ms_) <= 0) {
        failed_ = true;
        return -1;
      }
    }
  }
  void get_remote_ip_and_port(std::string& ip, int& port) const override {
    ip = r_.remote_addr;
    port = r_.remote_port;
  }
  void get_local_ip_and_port(std::string& ip, int& port) const override {
    ip = r_.local_addr;
    port = r_.local_port;
  }
  socket_t socket() const override { return r_.fd; }
  bool failed() const { return failed_; }

 private:
  const FrontRequest& r_;
  int timeout_ms_;
  size_t pos_ = 0;
  bool failed_ = false;
};

// The request a worker thread is handling (its handlers run on that thread).
thread_local const FrontRequest* t_request = nullptr;

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
  Router svr;
  std::unique_ptr<HttpFront> front;

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
  svr.set_payload_max_length(opts.max_body_bytes);
  FrontOptions fo;
  fo.host = opts.host;
  fo.port = opts.port;
  fo.threads = threads;
  fo.max_pending = threads;
  fo.max_connections = opts.max_connections;
  fo.limits.max_body_bytes = opts.max_body_bytes;
  fo.limits.max_head_bytes = opts.max_header_bytes;
  fo.head_timeout = opts.head_timeout;
  fo.request_timeout = opts.request_timeout;
  fo.idle_timeout = opts.idle_timeout;
  // Buffered request data: room for a few largest bodies, and for every connection's head.
  fo.max_buffered_bytes = std::max<size_t>(size_t(64) << 20, 4 * opts.max_body_bytes) +
                          size_t(opts.max_connections) * opts.max_header_bytes;
  const int write_timeout_ms = (int)opts.write_timeout.count();
  front = std::make_unique<HttpFront>(
      fo,
      [this, write_timeout_ms](FrontRequest& r) {
        FrontStream strm(r, write_timeout_ms);
        bool closed = false;
        t_request = &r;
        const bool ok = svr.process_request(strm, /*close_connection=*/r.peer_eof, closed, nullptr);
        t_request = nullptr;
        return ok && !closed && !strm.failed();
      },
      [this](int status) { metrics.count_request("other", status); });

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
  auto watch = std::make_shared<ConnectionWatch>(t_request ? t_request->fd : -1, t_request && t_request->http11);

  // Wait for the first text (or the end) before answering, so that a failure before any
  // output still gets its own status code; give up if the client leaves meanwhile.
  std::string text;
  bool done = false;
  while (!(done = gen->wait_for(text, kPoll)) && (gr.stream ? text.empty() : true)) {
    if (watch->peer_gone(/*may_probe=*/true)) {
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
          if (watch->peer_gone(/*may_probe=*/false)) return client_left();
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

int HttpServer::bind() { return impl_->front->bind(); }

void HttpServer::listen() { impl_->front->run(); }

void HttpServer::stop() {
  impl_->front->stop();
  impl_->svr.set_serving(false);  // streamed answers end
}

}  // namespace duo::serve
