// Where one HTTP/1.1 request ends in the bytes a client sends, decided incrementally and with
// every limit checked before more is buffered. The front end (http_front.h) reads requests
// with it on its own (no thread per slow client) and hands cpp-httplib only complete ones, so
// the framing rules are strict where HTTP is ambiguous (request smuggling, oversized framing):
//  - the head (request line + headers) is at most max_head_bytes (431), the request line at
//    most 8 KiB (414, cpp-httplib's limit), every line ends with CRLF, a header has a name
//    without white space and a colon (400);
//  - the body is framed by Content-Length (digits only, repeats must agree) or by
//    Transfer-Encoding: chunked (nothing else: 501), never both (400); a body larger than
//    max_body_bytes is refused as soon as that is known: from Content-Length before reading
//    it, from the chunk sizes as they come (413); chunk lines are at most 1 KiB and the
//    framing may take at most as many bytes as the data plus 64 KiB (413), no trailers;
//  - Range and If-Range are dropped (these endpoints never serve parts: a Range request gets
//    the whole answer, RFC 9110 allows ignoring it), and so is Expect: the front end answers
//    100-continue itself.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace duo::serve {

struct FramingLimits {
  size_t max_head_bytes = size_t(64) << 10;
  size_t max_body_bytes = size_t(8) << 20;
};

class RequestFramer {
 public:
  enum class Result { NeedMore, Complete, Refused };

  explicit RequestFramer(FramingLimits limits) : limits_(limits) {}

  // `data` is everything received since this request began (it only grows between calls;
  // bytes past this request may follow). Parses what is new.
  Result advance(std::string_view data);

  bool head_done() const { return phase_ > Phase::Headers; }
  bool http11() const { return http11_; }
  bool expects_continue() const { return expect_continue_; }
  // After Complete: the request's bytes in `data` and the request as cpp-httplib gets it
  // (the head without the dropped headers, then the body as sent).
  size_t consumed() const { return pos_; }
  std::string forwarded(std::string_view data) const;
  // After Refused: the HTTP status and why.
  int status() const { return status_; }
  const std::string& reason() const { return reason_; }

 private:
  enum class Phase { RequestLine, Headers, Body, ChunkSize, ChunkData, ChunkEnd, LastLine, Done, Refused };
  Result refuse(int status, std::string reason);
  // The next line (ending in '\n') from pos_, or npos when it is not all there yet.
  size_t line_end(std::string_view data) const;
  Result request_line(std::string_view line);
  Result header_line(std::string_view line);
  Result end_of_head();

  FramingLimits limits_;
  Phase phase_ = Phase::RequestLine;
  size_t pos_ = 0;            // bytes of data parsed
  size_t head_end_ = 0;       // where the body begins
  std::string head_;          // the head as forwarded
  bool http11_ = false;
  bool expect_continue_ = false;
  bool chunked_ = false;
  bool has_length_ = false;
  uint64_t content_length_ = 0;
  uint64_t remaining_ = 0;    // bytes left of the body (Content-Length) or of this chunk
  uint64_t payload_ = 0;      // body data bytes so far
  int status_ = 0;
  std::string reason_;
};

}  // namespace duo::serve
