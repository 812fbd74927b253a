// HttpFront under hostile clients, with a handler that echoes the request it was given:
// slow clients hold no worker, deadlines and limits answer with the right status, half-closed
// clients are served, pipelined requests are answered in order.
#include "serve/http_front.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

namespace duo::serve {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// A front end on a free loopback port whose handler answers 200 with the forwarded request
// as the body (and "eof" when the client had half-closed).
struct EchoServer {
  HttpFront front;
  std::thread thread;
  int port = 0;
  std::atomic<int> handled{0};
  std::atomic<int> refusals{0};

  explicit EchoServer(FrontOptions o)
      : front(with_port0(o), [this](FrontRequest& r) { return echo(r); }, [this](int) { refusals++; }) {
    port = front.bind();
    thread = std::thread([this] { front.run(); });
  }
  ~EchoServer() {
    front.stop();
    thread.join();
  }
  static FrontOptions with_port0(FrontOptions o) {
    o.port = 0;
    return o;
  }
  bool echo(FrontRequest& r) {
    handled++;
    const std::string body = (r.peer_eof ? "eof:" : "") + r.bytes;
    const std::string resp = "HTTP/1.1 200 OK\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
    size_t off = 0;
    while (off < resp.size()) {
      const ssize_t n = send(r.fd, resp.data() + off, resp.size() - off, MSG_NOSIGNAL);
      if (n <= 0) return false;
      off += size_t(n);
    }
    return true;
  }
};

int connect_to(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(uint16_t(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  timeval tv{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  return fd;
}

void send_all(int fd, const std::string& s) { ASSERT_EQ(send(fd, s.data(), s.size(), MSG_NOSIGNAL), ssize_t(s.size())); }

// Reads until the peer closes or `want` bytes arrived (or the 5 s receive timeout).
std::string read_some(int fd, size_t want = SIZE_MAX) {
  std::string out;
  char buf[65536];
  while (out.size() < want) {
    const ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    out.append(buf, size_t(n));
  }
  return out;
}

int status_of(const std::string& resp) { return resp.size() >= 12 ? std::stoi(resp.substr(9, 3)) : -1; }

const std::string kHealth = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n";

TEST(HttpFront, SlowClientsHoldNoWorker) {
  FrontOptions o;
  o.threads = 1;
  EchoServer s(o);
  // Twenty clients that send one byte and stall: with a thread per connection they would
  // take the only worker.
  std::vector<int> slow;
  for (int i = 0; i < 20; ++i) {
    slow.push_back(connect_to(s.port));
    send_all(slow.back(), "P");
  }
  const auto t0 = Clock::now();
  const int fd = connect_to(s.port);
  send_all(fd, kHealth);
  const std::string resp = read_some(fd, 20);
  EXPECT_EQ(status_of(resp), 200);
  EXPECT_LT(Clock::now() - t0, 1s);
  for (int f : slow) close(f);
  close(fd);
}

TEST(HttpFront, HeadAndRequestDeadlines) {
  FrontOptions o;
  o.head_timeout = 300ms;
  o.request_timeout = 600ms;
  EchoServer s(o);
  // A head trickling in gets 408 at the head deadline, however often bytes come.
  const int a = connect_to(s.port);
  const auto t0 = Clock::now();
  std::string got;
  for (int i = 0; i < 20; ++i) {
    if (send(a, "G", 1, MSG_NOSIGNAL) != 1) break;
    std::this_thread::sleep_for(50ms);
  }
  got = read_some(a);
  EXPECT_EQ(status_of(got), 408) << got;
  EXPECT_NE(got.find("request_timeout"), std::string::npos);
  EXPECT_LT(Clock::now() - t0, 2s);
  close(a);
  // A complete head with a body that never comes: 408 at the request deadline.
  const int b = connect_to(s.port);
  send_all(b, "POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n12345");
  const auto t1 = Clock::now();
  got = read_some(b);
  EXPECT_EQ(status_of(got), 408) << got;
  EXPECT_GT(Clock::now() - t1, 200ms);
  close(b);
  EXPECT_EQ(s.handled, 0);
  EXPECT_EQ(s.refusals, 2);
}

TEST(HttpFront, ConnectionLimitRefusesAtOnce) {
  FrontOptions o;
  o.max_connections = 3;
  EchoServer s(o);
  std::vector<int> held;
  for (int i = 0; i < 3; ++i) held.push_back(connect_to(s.port));
  std::this_thread::sleep_for(100ms);
  const int extra = connect_to(s.port);
  const std::string got = read_some(extra);
  EXPECT_EQ(status_of(got), 503) << got;
  EXPECT_NE(got.find("too_many_connections"), std::string::npos);
  close(extra);
  // Once one of them leaves, a new client is served.
  close(held.back());
  held.pop_back();
  std::this_thread::sleep_for(100ms);
  const int next = connect_to(s.port);
  send_all(next, kHealth);
  EXPECT_EQ(status_of(read_some(next, 20)), 200);
  close(next);
  for (int f : held) close(f);
}

TEST(HttpFront, HalfClosedClientIsServed) {
  EchoServer s(FrontOptions{});
  const int fd = connect_to(s.port);
  send_all(fd, kHealth);
  ASSERT_EQ(shutdown(fd, SHUT_WR), 0);
  const std::string got = read_some(fd);
  EXPECT_EQ(status_of(got), 200) << got;
  EXPECT_NE(got.find("GET /health"), std::string::npos);
  close(fd);
}

TEST(HttpFront, OversizedBodiesRefusedBeforeTheyArrive) {
  FrontOptions o;
  o.limits.max_body_bytes = 1000;
  EchoServer s(o);
  // A chunked body of 24 MiB: the 413 comes after the first chunk past the limit, and the
  // client is not made to send the rest.
  const int fd = connect_to(s.port);
  send_all(fd, "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
  std::string chunk = "400\r\n" + std::string(1024, 'x') + "\r\n";
  send_all(fd, chunk);
  const std::string got = read_some(fd);
  EXPECT_EQ(status_of(got), 413) << got;
  EXPECT_NE(got.find("payload_too_large"), std::string::npos);
  close(fd);
  const int big = connect_to(s.port);
  send_all(big, "POST / HTTP/1.1\r\nContent-Length: 25165824\r\n\r\n");
  EXPECT_EQ(status_of(read_some(big)), 413);
  close(big);
  // Headers: 50 MiB would be accepted line by line without a total.
  const int hdr = connect_to(s.port);
  send_all(hdr, "GET /health HTTP/1.1\r\n");
  std::string line = "X-A: " + std::string(4000, 'b') + "\r\n";
  bool refused_early = false;
  for (int i = 0; i < 12800 && !refused_early; ++i) refused_early = send(hdr, line.data(), line.size(), MSG_NOSIGNAL) < 0;
  EXPECT_EQ(status_of(read_some(hdr)), 431);
  close(hdr);
  EXPECT_EQ(s.handled, 0);
}

TEST(HttpFront, PipelinedAndContinuedRequests) {
  EchoServer s(FrontOptions{});
  const int fd = connect_to(s.port);
  const std::string post = "POST /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
  send_all(fd, kHealth + post);
  const std::string got = read_some(fd, 2 * 19 + kHealth.size() + post.size() + 20);
  const size_t second = got.find("HTTP/1.1 200", 1);
  ASSERT_NE(second, std::string::npos) << got;
  EXPECT_NE(got.find(kHealth), std::string::npos);
  EXPECT_NE(got.find(post, second), std::string::npos);
  // Expect: 100-continue gets its interim answer before the body is sent.
  send_all(fd, "POST /y HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n");
  EXPECT_EQ(read_some(fd, 25), "HTTP/1.1 100 Continue\r\n\r\n");
  send_all(fd, "{}");
  const std::string last = read_some(fd, 20);
  EXPECT_EQ(status_of(last), 200);
  close(fd);
}

}  // namespace
}  // namespace duo::serve
