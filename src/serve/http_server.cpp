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
#include <ctime>
#include <optional>

#include "core/error.h"
#include "serve/api_error.h"
#include "serve/connection_watch.h"
#include "serve/http_front.h"
#include "serve/openai_json.h"
#include "serve/tool_calls.h"
#include "serve/tool_stream.h"

namespace duo::serve {

using nlohmann::json;

namespace {

constexpr auto kPoll = std::chrono::milliseconds(50);  // how often a waiting request checks its client
constexpr int kClientClosed = 499;                      // status recorded when the client left (nginx's)

const char* const kRoutes[] = {"/v1/completions", "/v1/chat/completions", "/v1/models", "/health",
                               "/metrics",        "/tokenize",            "/detokenize"};
// How long a client refused with 503 (queue full, shutting down, out of memory) should wait.
constexpr int kRetryAfterSeconds = 1;

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

void send_error(httplib::Response& res, const ApiError& e) {
  if (e.status == 503) res.set_header("Retry-After", std::to_string(kRetryAfterSeconds));
  send_json(res, e.status, error_json(e));
}

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

// What the request log line says about a generation request, filled in by its handler (the
// logger runs after the whole answer, streamed ones included, on the same thread).
struct RequestLog {
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
  std::vector<std::shared_ptr<Generation>> gens;
  std::string outcome;  // an error's code, or empty: the generations' finish reasons
  std::string ignored;  // unknown request fields, comma-separated
};
thread_local RequestLog* t_log = nullptr;

std::string join(const std::vector<std::string>& v, const char* sep) {
  std::string out;
  for (const auto& x : v) out += (out.empty() ? "" : sep) + x;
  return out;
}

// Equal keys, in time that does not depend on where they differ.
bool same_key(const std::string& a, const std::string& b) {
  unsigned diff = a.size() != b.size();
  for (size_t i = 0; i < a.size(); ++i) diff |= (unsigned char)a[i] ^ (unsigned char)(i < b.size() ? b[i] : 0);
  return diff == 0;
}

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// A chat choice of a request with tools: its text parsed into tool calls when it holds any
// well-formed ones; anything else (a malformed call included) stays plain content.
void shape_choice(const GenerationRequest& r, ChoiceOut& c) {
  const ToolAnswer a = shape_tool_answer(r, c.text, c.reason == FinishReason::Stop);
  if (!a.is_call) return;
  c.text = a.content;
  c.content_null = a.content_null;
  c.tool_calls = a.tool_calls;
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
  void log_request(const httplib::Request& req, const httplib::Response& res) const;
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
        RequestLog log;
        t_log = &log;
        const bool ok = svr.process_request(strm, /*close_connection=*/r.peer_eof, closed, nullptr);
        t_log = nullptr;
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
  // llama.cpp's shapes: {"content", "add_special", "parse_special", "with_pieces"} -> {"tokens"},
  // {"tokens"} -> {"content"}.
  svr.Post("/tokenize", [this](const httplib::Request& req, httplib::Response& res) {
    const TokenizeRequest t = parse_tokenize(req.body);
    const Tokenizer& tok = ctx.engine->tokenizer();
    const std::vector<int32_t> ids = tok.encode(t.content, t.add_special, t.parse_special);
    json tokens = json::array();
    for (int32_t id : ids) {
      if (t.with_pieces)
        tokens.push_back({{"id", id}, {"piece", tok.token_to_piece(id)}});
      else
        tokens.push_back(id);
    }
    send_json(res, 200, {{"tokens", tokens}});
  });
  svr.Post("/detokenize", [this](const httplib::Request& req, httplib::Response& res) {
    const std::vector<int32_t> ids = parse_detokenize(req.body, ctx.engine->tokenizer().n_vocab());
    send_json(res, 200, {{"content", ctx.engine->tokenizer().decode(ids)}});
  });
  // CORS preflight: any origin may call, with the headers it asks for.
  svr.Options(".*", [](const httplib::Request& req, httplib::Response& res) {
    res.status = 204;
    res.set_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS");
    res.set_header("Access-Control-Allow-Headers", req.has_header("Access-Control-Request-Headers")
                                                       ? req.get_header_value("Access-Control-Request-Headers")
                                                       : std::string("Authorization, Content-Type"));
    res.set_header("Access-Control-Max-Age", "86400");
  });
  // Before routing: CORS headers on every answer, and the API key (health checks and
  // preflights, which browsers send without credentials, need none).
  svr.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    res.set_header("Access-Control-Allow-Origin", "*");
    res.set_header("Access-Control-Expose-Headers", "x-duo-ignored-fields, Retry-After");
    if (opts.api_key.empty() || req.method == "OPTIONS" || req.path == "/health")
      return httplib::Server::HandlerResponse::Unhandled;
    const std::string auth = req.get_header_value("Authorization");
    const std::string prefix = "Bearer ";
    if (auth.rfind(prefix, 0) == 0 && same_key(auth.substr(prefix.size()), opts.api_key))
      return httplib::Server::HandlerResponse::Unhandled;
    if (t_log) t_log->outcome = "invalid_api_key";
    res.set_header("WWW-Authenticate", "Bearer");
    send_error(res, ApiError(401, "invalid_request_error",
                             auth.empty() ? "no API key given: send 'Authorization: Bearer <key>'"
                                          : "incorrect API key provided",
                             "", "invalid_api_key"));
    return httplib::Server::HandlerResponse::Handled;
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
    if (opts.log_requests) log_request(req, res);
  });
}

// One line per request: UTC time, client, method, path, status, latency, and for generation
// requests the tokens (prompt, generated over all choices), the outcome and ignored fields.
void HttpServer::Impl::log_request(const httplib::Request& req, const httplib::Response& res) const {
  const auto now = std::chrono::system_clock::now();
  const std::time_t tt = std::chrono::system_clock::to_time_t(now);
  std::tm tm{};
  gmtime_r(&tt, &tm);
  char when[32];
  std::strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
  std::string line = fmt::format("duo serve: {} {} {} {} -> {}", when, req.remote_addr, req.method, req.path, res.status);
  if (t_log) {
    line += fmt::format(" {:.3f}s", std::chrono::duration<double>(std::chrono::steady_clock::now() - t_log->start).count());
    std::string outcome = t_log->outcome;
    if (!t_log->gens.empty()) {
      int64_t generated = 0;
      std::vector<std::string> reasons;
      for (const auto& g : t_log->gens) {
        generated += g->completion_tokens();
        const char* r = g->error() ? "error" : to_string(g->finish_reason());
        if (std::find(reasons.begin(), reasons.end(), r) == reasons.end()) reasons.push_back(r);
      }
      line += fmt::format(" prompt={} generated={}", t_log->gens[0]->prompt_tokens(), generated);
      if (outcome.empty()) outcome = join(reasons, ",");
    }
    if (!outcome.empty()) line += " outcome=" + outcome;
    if (!t_log->ignored.empty()) line += " ignored=" + t_log->ignored;
  }
  line += "\n";
  std::fputs(line.c_str(), stderr);
}

void HttpServer::Impl::generate(Endpoint ep, const httplib::Request& req, httplib::Response& res) {
  GenerationRequest gr;
  std::vector<std::shared_ptr<Generation>> gens;
  RequestLog dummy;
  RequestLog& log = t_log ? *t_log : dummy;
  try {
    gr = parse_request(ep, req.body);
    if (!gr.ignored_fields.empty()) {
      log.ignored = join(gr.ignored_fields, ",");
      res.set_header("x-duo-ignored-fields", log.ignored);
    }
    // n choices: n sequences of the same prompt, seeds seed, seed + 1, ...
    const Job job = prepare_job(gr, ctx);
    for (int i = 0; i < gr.n; ++i) {
      Job j = job;
      j.sampling.seed += (uint64_t)i;
      gens.push_back(scheduler.submit(std::move(j)));
    }
  } catch (const ApiError& e) {
    for (auto& g : gens) g->cancel();
    // The rejection reason: the error's code, else the field at fault, else the status.
    log.outcome = !e.code.empty() ? e.code : !e.param.empty() ? "invalid:" + e.param : fmt::format("error{}", e.status);
    return send_error(res, e);
  }
  log.gens = gens;
  const ResponseMeta meta = new_response_meta(ep, ctx.model_id);
  auto watch = std::make_shared<ConnectionWatch>(t_request ? t_request->fd : -1, t_request && t_request->http11);
  const size_t n = gens.size();
  auto cancel_all = [gens] {
    for (auto& g : gens) g->cancel();
  };
  auto first_error = [gens]() -> std::optional<ApiError> {
    for (auto& g : gens)
      if (auto e = g->error()) return e;
    return std::nullopt;
  };

  // Wait for the first text of the first choice (streaming) or the end of every choice before
  // answering, so that a failure before any output still gets its own status code; give up if
  // the client leaves meanwhile.
  std::vector<std::string> texts(n);
  std::vector<bool> done(n, false);
  for (;;) {
    size_t i = 0;
    while (i < n && done[i]) ++i;
    if (i == n) break;
    done[i] = gens[i]->wait_for(texts[i], kPoll);
    if (gr.stream && (!texts[0].empty() || done[0])) break;
    if (!done[i] && watch->peer_gone(/*may_probe=*/true)) {
      cancel_all();
      log.outcome = "client_closed";
      return send_json(res, kClientClosed, error_json("invalid_request_error", "the client closed the connection"));
    }
  }
  if (!gr.stream || done[0])
    if (auto err = gr.stream ? gens[0]->error() : first_error()) {
      cancel_all();
      return send_error(res, *err);
    }
  const bool want_logprobs = gr.top_logprobs >= 0;
  // With tools, the non-streamed answer is parsed whole (shape_choice); a streamed one goes
  // through ToolCallStream: content at once where it can not be a call, calls as
  // delta.tool_calls pieces (tool_stream.h).
  const bool tools_on = gr.tool_choice != ToolChoice::None;
  if (!gr.stream) {
    std::vector<ChoiceOut> choices(n);
    int64_t generated = 0;
    for (size_t i = 0; i < n; ++i) {
      choices[i].text = texts[i];
      choices[i].reason = gens[i]->finish_reason();
      if (tools_on) shape_choice(gr, choices[i]);
      generated += gens[i]->completion_tokens();
      if (want_logprobs) {
        std::vector<TokenLogprobEntry> lp;
        gens[i]->take_logprobs(lp);
        choices[i].logprobs = logprobs_json(ep, lp);
      }
    }
    return send_json(res, 200, completion_body(ep, meta, choices, gens[0]->prompt_tokens(), generated));
  }

  res.set_header("Cache-Control", "no-cache");
  const bool include_usage = gr.include_usage;
  res.set_chunked_content_provider(
      "text/event-stream",
      [gens, watch, meta, ep, include_usage, want_logprobs, cancel_all, first_error, texts = std::move(texts),
       done = std::move(done), tools_on, gr](size_t, httplib::DataSink& sink) mutable {
        auto send = [&](const json& j) {
          const std::string ev = sse_event(j);
          return sink.write(ev.data(), ev.size());
        };
        auto client_left = [&] {
          cancel_all();
          return false;
        };
        const size_t n = gens.size();
        std::vector<size_t> offsets(n, 0);
        std::vector<bool> ended(n, false);
        if (ep == Endpoint::ChatCompletions)
          for (size_t i = 0; i < n; ++i)
            if (!send(role_chunk(meta, (int)i))) return client_left();
        std::vector<ToolCallStream> tool_streams;
        if (tools_on) tool_streams.assign(n, ToolCallStream(gr));
        // Sends what choice i has now: its text (with tools, what the tool-call parser lets out:
        // all of it once the choice ended) and the log-probabilities of its new tokens.
        auto flush = [&](size_t i) {
          json lp = nullptr;
          if (want_logprobs) {
            std::vector<TokenLogprobEntry> entries;
            gens[i]->take_logprobs(entries);
            if (!entries.empty()) lp = logprobs_json(ep, entries, offsets[i]);
          }
          if (!tools_on) {
            if (texts[i].empty() && lp.is_null()) return true;
            const bool ok = send(stream_chunk(ep, meta, texts[i], FinishReason::None, (int)i, lp));
            offsets[i] += texts[i].size();
            texts[i].clear();
            return ok;
          }
          std::vector<ToolStreamEvent> ev = tool_streams[i].feed(texts[i]);
          texts[i].clear();
          if (done[i] && !gens[i]->error()) {
            std::vector<ToolStreamEvent> rest = tool_streams[i].finish(gens[i]->finish_reason() == FinishReason::Stop);
            ev.insert(ev.end(), rest.begin(), rest.end());
          }
          for (const auto& e : ev) {
            json chunk;
            switch (e.kind) {
              case ToolStreamEvent::Kind::Content:
                chunk = stream_chunk(ep, meta, e.text, FinishReason::None, (int)i, lp);
                lp = nullptr;
                break;
              case ToolStreamEvent::Kind::CallStart:
                chunk = tool_call_start_chunk(meta, (int)i, e.index, e.id, e.text);
                break;
              case ToolStreamEvent::Kind::Arguments:
                chunk = tool_call_arguments_chunk(meta, (int)i, e.index, e.text);
                break;
            }
            if (!send(chunk)) return false;
          }
          return lp.is_null() || send(stream_chunk(ep, meta, "", FinishReason::None, (int)i, lp));
        };
        // A choice that streamed calls ends in "tool_calls", unless max_tokens cut it inside a
        // call (a forced one: anywhere), as its non-streamed answer would end in "length".
        auto ended_in_calls = [&](size_t i) {
          if (!tools_on || tool_streams[i].calls() == 0) return false;
          if (gens[i]->finish_reason() == FinishReason::Stop) return true;
          return gr.tool_choice == ToolChoice::Auto && !tool_streams[i].broken();
        };
        const auto slice = std::max(std::chrono::milliseconds(1), kPoll / (int)n);
        for (;;) {
          bool all = true;
          for (size_t i = 0; i < n; ++i) {
            if (ended[i]) continue;
            if (!done[i]) done[i] = gens[i]->wait_for(texts[i], slice);
            if (!flush(i)) return client_left();
            if (done[i]) {
              ended[i] = true;
              if (!gens[i]->error() &&
                  !send(ended_in_calls(i) ? tool_calls_end_chunk(meta, (int)i)
                                          : stream_chunk(ep, meta, "", gens[i]->finish_reason(), (int)i)))
                return client_left();
            }
            all = all && ended[i];
          }
          if (all) break;
          if (watch->peer_gone(/*may_probe=*/false)) return client_left();
        }
        if (auto err = first_error()) {
          send(error_json(*err));
        } else if (include_usage) {
          int64_t generated = 0;
          for (auto& g : gens) generated += g->completion_tokens();
          send(usage_chunk(ep, meta, gens[0]->prompt_tokens(), generated));
        }
        static const char kDone[] = "data: [DONE]\n\n";
        sink.write(kDone, sizeof(kDone) - 1);
        sink.done();
        return true;
      },
      [gens](bool success) {
        if (!success)  // the connection failed before the stream ended
          for (auto& g : gens) g->cancel();
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
