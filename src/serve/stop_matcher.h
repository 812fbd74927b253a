// Stop strings over streamed text: generation ends where one of them first appears, and the
// client never sees it (nor anything after it). Text that could still turn out to be the
// start of a stop string is held back until the next piece decides.
#pragma once
#include <string>
#include <vector>

namespace duo::serve {

class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops);
  // Takes the next piece of generated text; returns what may be shown now. After a match,
  // matched() is true and further pushes return "".
  std::string push(const std::string& text);
  // End of generation: whatever was held back.
  std::string flush();
  bool matched() const { return matched_; }

 private:
  std::vector<std::string> stops_;
  std::string held_;
  bool matched_ = false;
};

}  // namespace duo::serve
