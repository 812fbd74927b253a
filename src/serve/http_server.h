// The HTTP face of `duo serve` (cpp-httplib): OpenAI-compatible /v1/completions and
// /v1/chat/completions (JSON or server-sent events), /v1/models, /health, /metrics, and
// llama.cpp's /tokenize and /detokenize. Every error a client can get is a JSON body in the
// OpenAI error format; a 503 says when to retry (Retry-After). Answers carry CORS headers
// (any origin) and OPTIONS preflights are answered, so a browser page can call the server.
#pragma once
#include <cstddef>
#include <memory>
#include <string>

#include "serve/metrics.h"
#include "serve/prepare.h"
#include "serve/scheduler.h"

namespace duo::serve {

struct HttpOptions {
  std::string host = "127.0.0.1";
  int port = 8080;                        // 0: any free port (bind() says which)
  size_t max_body_bytes = size_t(8) << 20;  // larger bodies get 413 (any transfer encoding)
  size_t max_header_bytes = size_t(64) << 10;  // request line + headers; more gets 431
  int threads = 0;                        // worker threads (0: enough for max_batch + max_queue)
  int max_connections = 512;              // open connections; more get 503 at once
  std::chrono::milliseconds idle_timeout{5000};      // keep-alive connection without a request
  std::chrono::milliseconds head_timeout{10000};     // request line + headers, from their first byte (408)
  std::chrono::milliseconds request_timeout{60000};  // the whole request, from its first byte (408)
  std::chrono::milliseconds write_timeout{10000};    // a client that takes no bytes of the answer for this long is dropped
  bool log_requests = false;              // one line per request on stderr
  std::string api_key;                    // non-empty: every route but /health and CORS preflights needs "Bearer <key>"
};

class HttpServer {
 public:
  HttpServer(const ServeContext& ctx, Scheduler& scheduler, Metrics& metrics, HttpOptions opts);
  ~HttpServer();
  // Binds the listening socket; returns the port. Throws duo::Error when it cannot.
  int bind();
  // Serves until stop() (from another thread).
  void listen();
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace duo::serve
