#include "engine/utf8_stream.h"

namespace duo {

namespace {
// Length of the UTF-8 sequence a lead byte starts (1 for ASCII and for invalid bytes,
// which are then passed through unchanged).
int seq_len(unsigned char c) {
  if (c < 0x80) return 1;
  if ((c & 0xE0) == 0xC0) return 2;
  if ((c & 0xF0) == 0xE0) return 3;
  if ((c & 0xF8) == 0xF0) return 4;
  return 1;
}
}  // namespace

std::string Utf8Stream::push(const std::string& bytes) {
  pending_ += bytes;
  size_t i = 0, complete = 0;
  while (i < pending_.size()) {
    const int n = seq_len((unsigned char)pending_[i]);
    if (i + n > pending_.size()) break;
    i += n;
    complete = i;
  }
  std::string out = pending_.substr(0, complete);
  pending_.erase(0, complete);
  return out;
}

std::string Utf8Stream::flush() {
  std::string out;
  out.swap(pending_);
  return out;
}

}  // namespace duo
