#include "serve/http_framing.h"

#include <algorithm>
#include <cctype>

namespace duo::serve {

namespace {

constexpr size_t kMaxRequestLine = 8192;  // cpp-httplib answers 414 beyond this
constexpr size_t kMaxChunkLine = 1024;
constexpr uint64_t kFramingAllowance = uint64_t(64) << 10;

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
         });
}

bool space_or_tab(char c) { return c == ' ' || c == '\t'; }

// Digits only, at most 18 of them (fits int64 with room): what cpp-httplib's strtoull reads the same way.
bool parse_decimal(std::string_view s, uint64_t& out) {
  if (s.empty() || s.size() > 18) return false;
  out = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    out = out * 10 + uint64_t(c - '0');
  }
  return true;
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

RequestFramer::Result RequestFramer::refuse(int status, std::string reason) {
  phase_ = Phase::Refused;
  status_ = status;
  reason_ = std::move(reason);
  return Result::Refused;
}

size_t RequestFramer::line_end(std::string_view data) const {
  const size_t nl = data.find('\n', pos_);
  return nl == std::string_view::npos ? nl : nl + 1;
}

RequestFramer::Result RequestFramer::request_line(std::string_view line) {
  if (line.size() > kMaxRequestLine) return refuse(414, "the request line is longer than 8192 bytes");
  if (line.size() < 2 || line[line.size() - 2] != '\r') return refuse(400, "the request line does not end with CRLF");
  const std::string_view body = line.substr(0, line.size() - 2);
  // METHOD SP TARGET SP VERSION, single spaces.
  const size_t a = body.find(' '), b = body.rfind(' ');
  if (a == std::string_view::npos || a == b || a == 0 || b + 1 == body.size() ||
      body.substr(a + 1, b - a - 1).find(' ') != std::string_view::npos || b == a + 1)
    return refuse(400, "malformed request line");
  const std::string_view version = body.substr(b + 1);
  if (version != "HTTP/1.1" && version != "HTTP/1.0") return refuse(400, "unsupported HTTP version");
  http11_ = version == "HTTP/1.1";
  head_.append(line);
  phase_ = Phase::Headers;
  return Result::NeedMore;
}

RequestFramer::Result RequestFramer::header_line(std::string_view line) {
  if (line.size() < 2 || line[line.size() - 2] != '\r') return refuse(400, "a header line does not end with CRLF");
  if (line.size() == 2) return end_of_head();
  std::string_view h = line.substr(0, line.size() - 2);
  if (space_or_tab(h.front())) return refuse(400, "folded header lines are not accepted");
  const size_t colon = h.find(':');
  if (colon == std::string_view::npos || colon == 0) return refuse(400, "a header line has no name");
  const std::string_view name = h.substr(0, colon);
  if (std::any_of(name.begin(), name.end(), [](char c) { return space_or_tab(c) || c == '\r'; }))
    return refuse(400, "a header name contains white space");
  std::string_view value = h.substr(colon + 1);
  while (!value.empty() && space_or_tab(value.front())) value.remove_prefix(1);
  while (!value.empty() && space_or_tab(value.back())) value.remove_suffix(1);

  if (iequals(name, "Content-Length")) {
    uint64_t n = 0;
    if (!parse_decimal(value, n)) return refuse(400, "Content-Length is not a number");
    if (has_length_ && n != content_length_) return refuse(400, "two different Content-Length headers");
    has_length_ = true;
    content_length_ = n;
  } else if (iequals(name, "Transfer-Encoding")) {
    if (chunked_) return refuse(400, "more than one Transfer-Encoding header");
    if (!iequals(value, "chunked")) return refuse(501, "only the chunked transfer encoding is supported");
    chunked_ = true;
  } else if (iequals(name, "Expect")) {
    expect_continue_ = http11_ && iequals(value, "100-continue");
    return Result::NeedMore;  // answered by the front end, not forwarded
  } else if (iequals(name, "Range") || iequals(name, "If-Range")) {
    return Result::NeedMore;  // ignored: every answer is whole
  }
  head_.append(line);
  return Result::NeedMore;
}

RequestFramer::Result RequestFramer::end_of_head() {
  head_.append("\r\n");
  head_end_ = pos_;
  if (chunked_ && has_length_) return refuse(400, "both Content-Length and Transfer-Encoding");
  if (chunked_) {
    phase_ = Phase::ChunkSize;
  } else if (has_length_) {
    if (content_length_ > limits_.max_body_bytes) return refuse(413, "the request body is larger than this server accepts");
    remaining_ = content_length_;
    phase_ = remaining_ ? Phase::Body : Phase::Done;
  } else {
    phase_ = Phase::Done;
  }
  return Result::NeedMore;
}

RequestFramer::Result RequestFramer::advance(std::string_view data) {
  for (;;) {
    switch (phase_) {
      case Phase::Done: return Result::Complete;
      case Phase::Refused: return Result::Refused;
      case Phase::RequestLine:
      case Phase::Headers: {
        const size_t end = line_end(data);
        const size_t head_bytes = end == std::string_view::npos ? data.size() : end;
        if (phase_ == Phase::RequestLine && head_bytes - pos_ > kMaxRequestLine + 2)
          return refuse(414, "the request line is longer than 8192 bytes");
        if (head_bytes > limits_.max_head_bytes)
          return refuse(431, "the request headers are larger than this server accepts");
        if (end == std::string_view::npos) return Result::NeedMore;
        const std::string_view line = data.substr(pos_, end - pos_);
        pos_ = end;
        const Result r = phase_ == Phase::RequestLine ? request_line(line) : header_line(line);
        if (r == Result::Refused) return r;
        break;
      }
      case Phase::Body: {
        const uint64_t take = std::min<uint64_t>(remaining_, data.size() - pos_);
        pos_ += take;
        remaining_ -= take;
        if (remaining_) return Result::NeedMore;
        phase_ = Phase::Done;
        break;
      }
      case Phase::ChunkSize:
      case Phase::LastLine: {
        const size_t end = line_end(data);
        if ((end == std::string_view::npos ? data.size() : end) - pos_ > kMaxChunkLine)
          return refuse(400, "a chunk size line is longer than 1024 bytes");
        if (end == std::string_view::npos) return Result::NeedMore;
        const std::string_view line = data.substr(pos_, end - pos_);
        pos_ = end;
        if (line.size() < 2 || line[line.size() - 2] != '\r') return refuse(400, "a chunk line does not end with CRLF");
        if (phase_ == Phase::LastLine) {
          if (line.size() != 2) return refuse(400, "chunked trailers are not accepted");
          phase_ = Phase::Done;
          break;
        }
        // HEX [; extension] CRLF
        uint64_t size = 0;
        size_t i = 0;
        for (; i + 2 < line.size() && hex_digit(line[i]) >= 0; ++i) {
          if (i >= 15) return refuse(413, "the request body is larger than this server accepts");
          size = size * 16 + uint64_t(hex_digit(line[i]));
        }
        if (i == 0 || (i + 2 < line.size() && line[i] != ';')) return refuse(400, "malformed chunk size");
        payload_ += size;
        if (payload_ > limits_.max_body_bytes) return refuse(413, "the request body is larger than this server accepts");
        const uint64_t framing = (pos_ - head_end_) - (payload_ - size);
        if (framing > payload_ + kFramingAllowance)
          return refuse(413, "the chunked framing takes more bytes than this server accepts");
        remaining_ = size;
        phase_ = size ? Phase::ChunkData : Phase::LastLine;
        break;
      }
      case Phase::ChunkData: {
        const uint64_t take = std::min<uint64_t>(remaining_, data.size() - pos_);
        pos_ += take;
        remaining_ -= take;
        if (remaining_) return Result::NeedMore;
        phase_ = Phase::ChunkEnd;
        break;
      }
      case Phase::ChunkEnd: {
        if (data.size() - pos_ < 2) return Result::NeedMore;
        if (data.substr(pos_, 2) != "\r\n") return refuse(400, "chunk data is not followed by CRLF");
        pos_ += 2;
        phase_ = Phase::ChunkSize;
        break;
      }
    }
  }
}

std::string RequestFramer::forwarded(std::string_view data) const {
  std::string out;
  out.reserve(head_.size() + (pos_ - head_end_));
  out.append(head_);
  out.append(data.substr(head_end_, pos_ - head_end_));
  return out;
}

}  // namespace duo::serve
