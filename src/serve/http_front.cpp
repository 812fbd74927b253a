#include "serve/http_front.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "core/error.h"
#include "serve/api_error.h"

namespace duo::serve {

namespace {

using Clock = std::chrono::steady_clock;

constexpr size_t kReadChunk = size_t(64) << 10;
constexpr auto kLinger = std::chrono::milliseconds(1000);  // how long a closing socket's input is drained
constexpr size_t kMaxDrain = size_t(1) << 20;              // ... and how much of it
constexpr auto kTick = std::chrono::milliseconds(50);       // deadline resolution
constexpr auto kAcceptPause = std::chrono::milliseconds(100);  // after running out of descriptors

const char* reason_phrase(int status) {
  switch (status) {
    case 400: return "Bad Request";
    case 408: return "Request Timeout";
    case 413: return "Payload Too Large";
    case 414: return "URI Too Long";
    case 431: return "Request Header Fields Too Large";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    default: return status >= 500 ? "Server Error" : "Client Error";
  }
}

void endpoint(int fd, bool peer, std::string& addr, int& port) {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  const int rc = peer ? getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len)
                      : getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
  if (rc != 0) return;
  char buf[INET6_ADDRSTRLEN] = {};
  if (ss.ss_family == AF_INET) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(&ss);
    if (inet_ntop(AF_INET, &a->sin_addr, buf, sizeof(buf))) addr = buf;
    port = ntohs(a->sin_port);
  } else if (ss.ss_family == AF_INET6) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(&ss);
    if (inet_ntop(AF_INET6, &a->sin6_addr, buf, sizeof(buf))) addr = buf;
    port = ntohs(a->sin6_port);
  }
}

}  // namespace

std::string error_response(int status, const std::string& message, const std::string& code) {
  const std::string body =
      error_json(status >= 500 ? "server_error" : "invalid_request_error", message, "", code).dump();
  return fmt::format(
      "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{}\r\n{}",
      status, reason_phrase(status), body.size(), status == 503 ? "Retry-After: 1\r\n" : "", body);
}

struct HttpFront::Impl {
  enum class State { Idle, Reading, Busy, Closing };
  struct Conn {
    int fd = -1;
    State state = State::Idle;
    std::string buf;  // received and not yet handed on (counted in `buffered`)
    std::unique_ptr<RequestFramer> framer;
    Clock::time_point head_deadline, request_deadline, idle_deadline, close_deadline;
    bool eof = false, continue_sent = false, in_epoll = false;
    size_t drained = 0;
    FrontRequest req;  // the complete request while Busy
  };

  Impl(FrontOptions o, Handler h, RefusalObserver r) : opts(std::move(o)), handler(std::move(h)), refused(std::move(r)) {}
  ~Impl() {
    for (auto& [fd, c] : conns) ::close(fd);
    for (int fd : {listen_fd, epoll_fd, wake_fd})
      if (fd >= 0) ::close(fd);
  }

  FrontOptions opts;
  Handler handler;
  RefusalObserver refused;
  int listen_fd = -1, epoll_fd = -1, wake_fd = -1;
  std::atomic<bool> stopping{false};

  // Loop thread only.
  std::unordered_map<int, std::unique_ptr<Conn>> conns;
  int n_open = 0, n_closing = 0;
  size_t buffered = 0;
  bool accept_paused = false;
  Clock::time_point accept_resume, next_expiry;

  // Shared with the workers.
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Conn*> pending;
  std::vector<std::pair<Conn*, bool>> finished;  // (connection, keep alive)
  bool workers_quit = false;

  void wake() {
    const uint64_t one = 1;
    (void)!::write(wake_fd, &one, sizeof(one));
  }
  void watch(Conn& c, bool on) {
    if (on == c.in_epoll) return;
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP;
    ev.data.fd = c.fd;
    epoll_ctl(epoll_fd, on ? EPOLL_CTL_ADD : EPOLL_CTL_DEL, c.fd, &ev);
    c.in_epoll = on;
  }
  void drop_buffer(Conn& c) {
    buffered -= c.buf.size();
    std::string().swap(c.buf);
  }
  void close_now(Conn& c) {
    watch(c, false);
    drop_buffer(c);
    (c.state == State::Closing ? n_closing : n_open)--;
    const int fd = c.fd;
    ::close(fd);
    conns.erase(fd);
  }
  // Ends a connection after its last answer: no more output, and its input is read and
  // thrown away for a while (closing with unread input would reset the connection and could
  // destroy the answer before the client reads it).
  void start_closing(Conn& c) {
    drop_buffer(c);
    ::shutdown(c.fd, SHUT_WR);
    if (c.state != State::Closing) {
      n_open--;
      n_closing++;
      c.state = State::Closing;
    }
    c.close_deadline = Clock::now() + kLinger;
    if (c.eof || n_closing > opts.max_connections) return close_now(c);
    watch(c, true);
  }
  void refuse(Conn& c, int status, const std::string& message, const std::string& code = "") {
    const std::string r = error_response(status, message, code);
    (void)!::send(c.fd, r.data(), r.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (refused) refused(status);
    start_closing(c);
  }
  void reset_request(Conn& c) {
    c.framer = std::make_unique<RequestFramer>(opts.limits);
    c.continue_sent = false;
    c.state = State::Idle;
    c.idle_deadline = Clock::now() + opts.idle_timeout;
  }

  void accept_all();
  void on_input(Conn& c);
  void process(Conn& c);
  void take_finished();
  void expire();
  void worker();
  void loop();
};

void HttpFront::Impl::accept_all() {
  for (;;) {
    const int fd = accept4(listen_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        // Out of descriptors: stop accepting for a moment (the listener would wake us at once).
        epoll_event ev{};
        ev.data.fd = listen_fd;
        epoll_ctl(epoll_fd, EPOLL_CTL_MOD, listen_fd, &ev);
        accept_paused = true;
        accept_resume = Clock::now() + kAcceptPause;
      }
      return;  // EAGAIN, or a connection that failed before we took it
    }
    auto c = std::make_unique<Conn>();
    c->fd = fd;
    Conn& conn = *c;
    conns[fd] = std::move(c);
    n_open++;
    const int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));  // streamed tokens leave at once
    reset_request(conn);
    if (n_open > opts.max_connections) {
      refuse(conn, 503, fmt::format("the server has {} connections open, its limit", opts.max_connections),
             "too_many_connections");
      continue;
    }
    endpoint(fd, true, conn.req.remote_addr, conn.req.remote_port);
    endpoint(fd, false, conn.req.local_addr, conn.req.local_port);
    watch(conn, true);
  }
}

void HttpFront::Impl::on_input(Conn& c) {
  if (c.state == State::Closing) {
    char scratch[16384];
    for (;;) {
      const ssize_t n = ::recv(c.fd, scratch, sizeof(scratch), MSG_DONTWAIT);
      if (n > 0 && (c.drained += size_t(n)) <= kMaxDrain) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
      return close_now(c);  // end of stream, an error, or too much
    }
  }
  if (buffered + kReadChunk > opts.max_buffered_bytes)
    return refuse(c, 503, "the server holds as much request data as it accepts; try again", "server_busy");
  const size_t old = c.buf.size();
  c.buf.resize(old + kReadChunk);
  const ssize_t n = ::recv(c.fd, c.buf.data() + old, kReadChunk, MSG_DONTWAIT);
  c.buf.resize(old + size_t(std::max<ssize_t>(n, 0)));
  buffered += c.buf.size() - old;
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
    return close_now(c);
  }
  if (n == 0) {
    c.eof = true;
    watch(c, false);  // nothing more will come
  } else if (c.state == State::Idle) {
    const auto now = Clock::now();
    c.state = State::Reading;
    c.head_deadline = now + opts.head_timeout;
    c.request_deadline = now + opts.request_timeout;
  }
  process(c);
}

void HttpFront::Impl::process(Conn& c) {
  if (c.buf.empty()) {
    if (c.eof) close_now(c);
    return;
  }
  if (c.state == State::Idle) {  // pipelined bytes after the last request
    const auto now = Clock::now();
    c.state = State::Reading;
    c.head_deadline = now + opts.head_timeout;
    c.request_deadline = now + opts.request_timeout;
  }
  RequestFramer& f = *c.framer;
  switch (f.advance(c.buf)) {
    case RequestFramer::Result::Refused:
      return refuse(c, f.status(), f.reason(), f.status() == 413 ? "payload_too_large" : "");
    case RequestFramer::Result::NeedMore:
      if (c.eof) return close_now(c);  // the client stopped sending before the request was whole
      if (f.head_done() && f.expects_continue() && !c.continue_sent) {
        static const char k100[] = "HTTP/1.1 100 Continue\r\n\r\n";
        (void)!::send(c.fd, k100, sizeof(k100) - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
        c.continue_sent = true;
      }
      return;
    case RequestFramer::Result::Complete: break;
  }
  {
    std::lock_guard<std::mutex> lock(mu);
    if ((int)pending.size() >= opts.max_pending) {
      c.state = State::Reading;
      return refuse(c, 503, "every worker of the server is busy and its queue is full; try again", "server_busy");
    }
    c.req.fd = c.fd;
    c.req.bytes = f.forwarded(c.buf);
    c.req.http11 = f.http11();
    c.req.peer_eof = c.eof;
    buffered -= f.consumed();
    c.buf.erase(0, f.consumed());
    c.state = State::Busy;
    pending.push_back(&c);
  }
  watch(c, false);
  cv.notify_one();
}

void HttpFront::Impl::take_finished() {
  std::vector<std::pair<Conn*, bool>> done;
  {
    std::lock_guard<std::mutex> lock(mu);
    done.swap(finished);
  }
  for (auto [c, keep] : done) {
    std::string().swap(c->req.bytes);
    if (!keep || c->eof || stopping) {
      start_closing(*c);
      continue;
    }
    reset_request(*c);
    watch(*c, true);
    process(*c);
  }
}

void HttpFront::Impl::expire() {
  const auto now = Clock::now();
  if (now < next_expiry) return;
  next_expiry = now + kTick;
  if (accept_paused && now >= accept_resume) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = listen_fd;
    epoll_ctl(epoll_fd, EPOLL_CTL_MOD, listen_fd, &ev);
    accept_paused = false;
  }
  std::vector<Conn*> idle, slow, gone;
  for (auto& [fd, c] : conns) {
    switch (c->state) {
      case State::Idle:
        if (now >= c->idle_deadline) idle.push_back(c.get());
        break;
      case State::Reading:
        if (now >= c->request_deadline || (!c->framer->head_done() && now >= c->head_deadline)) slow.push_back(c.get());
        break;
      case State::Closing:
        if (now >= c->close_deadline) gone.push_back(c.get());
        break;
      case State::Busy: break;
    }
  }
  for (Conn* c : idle) start_closing(*c);
  for (Conn* c : gone) close_now(*c);
  for (Conn* c : slow)
    refuse(*c, 408,
           c->framer->head_done() ? "the request body did not arrive in time" : "the request head did not arrive in time",
           "request_timeout");
}

void HttpFront::Impl::worker() {
  for (;;) {
    Conn* c = nullptr;
    {
      std::unique_lock<std::mutex> lock(mu);
      cv.wait(lock, [&] { return workers_quit || !pending.empty(); });
      if (pending.empty()) return;
      c = pending.front();
      pending.pop_front();
    }
    bool keep = false;
    try {
      keep = handler(c->req);
    } catch (...) {
      keep = false;  // the handler answers its own errors; anything else ends the connection
    }
    {
      std::lock_guard<std::mutex> lock(mu);
      finished.emplace_back(c, keep);
    }
    wake();
  }
}

void HttpFront::Impl::loop() {
  std::vector<epoll_event> events(256);
  while (!stopping) {
    const int n = epoll_wait(epoll_fd, events.data(), (int)events.size(), (int)kTick.count());
    for (int i = 0; i < n; ++i) {
      const int fd = events[i].data.fd;
      if (fd == listen_fd) {
        accept_all();
      } else if (fd == wake_fd) {
        uint64_t v;
        (void)!::read(wake_fd, &v, sizeof(v));
      } else if (auto it = conns.find(fd); it != conns.end() && it->second->state != State::Busy) {
        on_input(*it->second);
      }
    }
    take_finished();
    expire();
  }
}

HttpFront::HttpFront(FrontOptions opts, Handler handler, RefusalObserver refused)
    : impl_(std::make_unique<Impl>(std::move(opts), std::move(handler), std::move(refused))) {}

HttpFront::~HttpFront() = default;

int HttpFront::bind() {
  Impl& m = *impl_;
  DUO_CHECK(m.opts.threads >= 1 && m.opts.max_connections >= 1 && m.opts.max_pending >= 1,
            "the HTTP front end needs at least one thread, connection and pending slot");
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  const std::string port = std::to_string(m.opts.port);
  const int gai = getaddrinfo(m.opts.host.c_str(), port.c_str(), &hints, &res);
  DUO_CHECK(gai == 0, "cannot listen on {}:{}: {}", m.opts.host, m.opts.port, gai_strerror(gai));
  int err = 0;
  for (addrinfo* a = res; a && m.listen_fd < 0; a = a->ai_next) {
    const int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (::bind(fd, a->ai_addr, a->ai_addrlen) == 0 && ::listen(fd, 1024) == 0) {
      m.listen_fd = fd;
    } else {
      err = errno;
      ::close(fd);
    }
  }
  freeaddrinfo(res);
  DUO_CHECK(m.listen_fd >= 0, "cannot listen on {}:{} ({}: in use, or not an address of this host?)", m.opts.host,
            m.opts.port, std::strerror(err));
  std::string addr;
  int bound = -1;
  endpoint(m.listen_fd, false, addr, bound);
  m.epoll_fd = epoll_create1(EPOLL_CLOEXEC);
  m.wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  DUO_CHECK(m.epoll_fd >= 0 && m.wake_fd >= 0, "cannot create the event loop: {}", std::strerror(errno));
  for (int fd : {m.listen_fd, m.wake_fd}) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    epoll_ctl(m.epoll_fd, EPOLL_CTL_ADD, fd, &ev);
  }
  return bound;
}

void HttpFront::run() {
  Impl& m = *impl_;
  DUO_CHECK(m.listen_fd >= 0, "HttpFront::run before bind");
  std::vector<std::thread> workers;
  for (int i = 0; i < m.opts.threads; ++i) workers.emplace_back([&m] { m.worker(); });
  m.loop();
  // Stopping: no new connections; the requests being handled finish, then the workers end.
  ::close(m.listen_fd);
  m.listen_fd = -1;
  {
    std::lock_guard<std::mutex> lock(m.mu);
    m.workers_quit = true;
  }
  m.cv.notify_all();
  for (auto& t : workers) t.join();
  m.take_finished();
}

void HttpFront::stop() {
  impl_->stopping = true;
  if (impl_->wake_fd >= 0) impl_->wake();
}

}  // namespace duo::serve
