// RequestFramer: where a request ends, and every limit refused before the bytes beyond it
// would have to be buffered.
#include "serve/http_framing.h"

#include <gtest/gtest.h>

#include <string>

namespace duo::serve {
namespace {

using R = RequestFramer::Result;

FramingLimits small_limits() {
  FramingLimits l;
  l.max_head_bytes = 1024;
  l.max_body_bytes = 100;
  return l;
}

// Feeds `data` one byte at a time (the worst a client can do) and returns the final result.
R feed_bytewise(RequestFramer& f, const std::string& data, size_t* calls_before_end = nullptr) {
  R r = R::NeedMore;
  for (size_t i = 1; i <= data.size(); ++i) {
    r = f.advance(std::string_view(data).substr(0, i));
    if (r != R::NeedMore) {
      if (calls_before_end) *calls_before_end = i;
      return r;
    }
  }
  return r;
}

TEST(RequestFramer, ContentLengthBodyEndsWhereItSays) {
  const std::string req = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
  const std::string next = "GET /health HTTP/1.1\r\n\r\n";
  RequestFramer f(small_limits());
  EXPECT_EQ(f.advance(req.substr(0, req.size() - 1)), R::NeedMore);
  EXPECT_EQ(f.advance(req + next), R::Complete);
  EXPECT_EQ(f.consumed(), req.size());
  EXPECT_EQ(f.forwarded(req + next), req);
  EXPECT_TRUE(f.http11());
  RequestFramer g(small_limits());
  EXPECT_EQ(g.advance(next), R::Complete);
  EXPECT_EQ(g.consumed(), next.size());
}

TEST(RequestFramer, ChunkedBodyParsedIncrementally) {
  const std::string req =
      "POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\n\r\n";
  RequestFramer f(small_limits());
  size_t at = 0;
  EXPECT_EQ(feed_bytewise(f, req + "GET", &at), R::Complete);
  EXPECT_EQ(at, req.size());
  EXPECT_EQ(f.consumed(), req.size());
  EXPECT_EQ(f.forwarded(req), req);
}

TEST(RequestFramer, ChunkedBodyOverTheLimitRefusedFromTheChunkSize) {
  // 24 MiB announced in chunks; refused at the chunk line that passes 100 bytes, long before
  // the data would be buffered.
  RequestFramer f(small_limits());
  std::string req = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n40\r\n" + std::string(64, 'a') + "\r\n40\r\n";
  EXPECT_EQ(f.advance(req), R::Refused);
  EXPECT_EQ(f.status(), 413);
  RequestFramer g(small_limits());
  EXPECT_EQ(g.advance("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1800000\r\n"), R::Refused);
  EXPECT_EQ(g.status(), 413);
  // A size with more hex digits than any body can have.
  RequestFramer h(small_limits());
  EXPECT_EQ(h.advance("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0000000000000000001\r\n"), R::Refused);
  EXPECT_EQ(h.status(), 413);
}

TEST(RequestFramer, ChunkFramingCannotOutweighTheData) {
  // One-byte chunks: 6 bytes on the wire for each byte of data; within 100 bytes of data the
  // framing allowance (data + 64 KiB) is never reached, but a size line of zeros is bounded.
  FramingLimits l = small_limits();
  RequestFramer f(l);
  std::string req = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
  for (int i = 0; i < 50; ++i) req += "1\r\nx\r\n";
  req += "0\r\n\r\n";
  EXPECT_EQ(f.advance(req), R::Complete);
  RequestFramer g(l);
  EXPECT_EQ(g.advance("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1;" + std::string(2000, 'x')), R::Refused);
  EXPECT_EQ(g.status(), 400);
  // Empty chunks with long extensions: no data, framing only.
  RequestFramer h(l);
  std::string empty = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
  R r = R::NeedMore;
  for (int i = 0; i < 200 && r == R::NeedMore; ++i) {
    empty += "1;" + std::string(1000, 'e') + "\r\nx\r\n";
    r = h.advance(empty);
  }
  EXPECT_EQ(r, R::Refused);
}

TEST(RequestFramer, ContentLengthOverTheLimitRefusedBeforeTheBody) {
  RequestFramer f(small_limits());
  EXPECT_EQ(f.advance("POST / HTTP/1.1\r\nContent-Length: 101\r\n\r\n"), R::Refused);
  EXPECT_EQ(f.status(), 413);
  RequestFramer g(small_limits());
  EXPECT_EQ(g.advance("POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n"), R::Refused);
  EXPECT_EQ(g.status(), 400);
}

TEST(RequestFramer, HeadLimitCountsEveryLine) {
  // Many short header lines (each far below cpp-httplib's per-line limit) add up.
  RequestFramer f(small_limits());
  std::string req = "GET /health HTTP/1.1\r\n";
  size_t at = 0;
  for (int i = 0; i < 200; ++i) req += "X-A: b\r\n";
  EXPECT_EQ(feed_bytewise(f, req, &at), R::Refused);
  EXPECT_EQ(f.status(), 431);
  EXPECT_EQ(at, 1025u);  // refused at the first byte past the limit
  RequestFramer g(small_limits());
  EXPECT_EQ(g.advance("GET /" + std::string(9000, 'a')), R::Refused);
  EXPECT_EQ(g.status(), 414);
}

TEST(RequestFramer, AmbiguousFramingRefused) {
  const char* bad[][2] = {
      {"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", "400"},
      {"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", "400"},
      {"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n", "400"},
      {"POST / HTTP/1.1\r\nContent-Length: %35\r\n\r\n", "400"},
      {"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "501"},
      {"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", "400"},
      {"POST / HTTP/1.1\r\nContent-Length : 5\r\n\r\n", "400"},
      {"POST / HTTP/1.1\r\n Content-Length: 5\r\n\r\n", "400"},
      {"POST / HTTP/1.1\r\nContent-Length: 5\n\r\n", "400"},
      {"POST / HTTP/1.1\n", "400"},
      {"POST / HTTP/2\r\n\r\n", "400"},
      {"POST  / HTTP/1.1\r\n\r\n", "400"},
      {"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n", "400"},
      {"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n", "400"},
      {"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nTrailer: x\r\n\r\n", "400"},
  };
  for (auto& [req, status] : bad) {
    RequestFramer f(small_limits());
    EXPECT_EQ(f.advance(req), R::Refused) << req;
    EXPECT_EQ(std::to_string(f.status()), status) << req;
  }
}

TEST(RequestFramer, RangeAndExpectAreNotForwarded) {
  std::string ranges = "bytes=0-0";
  for (int i = 1; i < 500; ++i) {
    const std::string n = std::to_string(i);
    ranges.append(",").append(n).append("-").append(n);
  }
  const std::string req = "POST /v1/completions HTTP/1.1\r\nrange: " + ranges +
                          "\r\nIf-Range: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n{}";
  FramingLimits l = small_limits();
  l.max_head_bytes = 8192;
  RequestFramer f(l);
  EXPECT_EQ(f.advance(req.substr(0, req.size() - 2)), R::NeedMore);
  EXPECT_TRUE(f.head_done());
  EXPECT_TRUE(f.expects_continue());
  EXPECT_EQ(f.advance(req), R::Complete);
  EXPECT_EQ(f.forwarded(req), "POST /v1/completions HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}");
  // HTTP/1.0 clients get no 100 Continue.
  RequestFramer g(l);
  EXPECT_EQ(g.advance("POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"), R::NeedMore);
  EXPECT_FALSE(g.expects_continue());
  EXPECT_FALSE(g.http11());
}

}  // namespace
}  // namespace duo::serve
