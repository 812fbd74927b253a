// Joins token pieces into complete UTF-8 characters for streaming output: a token may end
// in the middle of a multi-byte character, which must not be printed half.
#pragma once
#include <string>

namespace duo {

class Utf8Stream {
 public:
  // Appends bytes and returns the longest prefix of complete characters held so far.
  std::string push(const std::string& bytes);
  // Whatever is left (an incomplete tail), e.g. at the end of generation.
  std::string flush();

 private:
  std::string pending_;
};

}  // namespace duo
