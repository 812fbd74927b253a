// The connection side of `duo serve`: one event-loop thread accepts connections and reads
// requests without blocking (RequestFramer decides where each ends and enforces the size
// limits), and a fixed pool of worker threads handles only complete requests. A slow or
// idle client therefore costs a socket and its buffered bytes, never a thread.
//
// Why not cpp-httplib's own listener (Debian's 0.11.4): it gives every accepted connection
// to a thread-pool task that reads the request itself, with only a per-recv() timeout (a
// byte every 2 s holds a thread for ever), an unbounded task queue (no refusal beyond the
// pool), no limit on the number or total size of header lines, and no limit on chunked
// bodies (read_content_chunked). So cpp-httplib keeps the parsing, routing and response
// writing (Server::process_request on a stream the handler provides), and this class owns
// the sockets.
//
// Limits (FrontOptions): at most max_connections open connections, more are answered 503
// at once; a request head must arrive within head_timeout and the whole request within
// request_timeout of its first byte (408), an idle keep-alive connection is closed after
// idle_timeout; at most max_buffered_bytes of request data are held by the loop (more: 503);
// complete requests wait for a worker in a queue of at most max_pending (more: 503). Every
// refusal is a JSON body in the OpenAI error format with Connection: close, and the socket is
// closed gracefully (its input drained for up to a second) so the client reads the answer.
#pragma once
#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>

#include "serve/http_framing.h"

namespace duo::serve {

struct FrontOptions {
  std::string host = "127.0.0.1";
  int port = 8080;  // 0: any free port
  int threads = 16;  // workers (each handles one request at a time)
  int max_connections = 512;
  int max_pending = 64;  // complete requests waiting for a worker
  size_t max_buffered_bytes = size_t(256) << 20;
  FramingLimits limits;
  std::chrono::milliseconds idle_timeout{5000};
  std::chrono::milliseconds head_timeout{10000};
  std::chrono::milliseconds request_timeout{60000};
};

// One complete request, handed to a worker.
struct FrontRequest {
  int fd = -1;                // the connection; the handler writes the response to it
  std::string bytes;          // the request as the router reads it (RequestFramer::forwarded)
  bool http11 = true;
  bool peer_eof = false;      // the client had already shut down its sending side
  std::string remote_addr, local_addr;
  int remote_port = -1, local_port = -1;
};

class HttpFront {
 public:
  // Handles one request on a worker thread; returns whether the connection may carry
  // another request (keep-alive).
  using Handler = std::function<bool(FrontRequest&)>;
  // Told about every request the front end answers itself (status 408, 413, 503, ...).
  using RefusalObserver = std::function<void(int status)>;

  HttpFront(FrontOptions opts, Handler handler, RefusalObserver refused = nullptr);
  ~HttpFront();
  // Binds the listening socket; returns the port. Throws duo::Error when it cannot.
  int bind();
  // Runs the event loop and the workers until stop() (from another thread or a signal
  // thread); the requests being handled finish first.
  void run();
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The bytes of a complete HTTP/1.1 response with a JSON error body and Connection: close.
std::string error_response(int status, const std::string& message, const std::string& code = "");

}  // namespace duo::serve
