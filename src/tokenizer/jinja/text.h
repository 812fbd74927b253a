// A string that remembers which of its bytes the template itself wrote. Chat templates are
// rendered to text and then tokenized; only bytes the template wrote (its literals, and the
// model's own BOS/EOS strings) may become special tokens, never bytes that came from the
// conversation. Concatenation, slicing and trimming keep the provenance; any other
// transformation of mixed text yields text that counts as the conversation's (safe: a marker
// that loses its standing is tokenized as text, it is never invented).
#pragma once
#include <cstddef>
#include <string>
#include <utility>
#include <vector>

namespace duo::jinja {

struct Text {
  std::string s;
  // Sorted, disjoint, non-touching [begin, end) byte ranges the template wrote.
  std::vector<std::pair<size_t, size_t>> trusted;

  static Text literal(std::string v) {
    Text t;
    t.s = std::move(v);
    if (!t.s.empty()) t.trusted.push_back({0, t.s.size()});
    return t;
  }
  static Text data(std::string v) {
    Text t;
    t.s = std::move(v);
    return t;
  }
  bool all_trusted() const { return s.empty() || (trusted.size() == 1 && trusted[0].second - trusted[0].first == s.size()); }
  void append(const Text& o);
  void append_data(const std::string& o) { s += o; }
  Text substr(size_t pos, size_t n = std::string::npos) const;
  // Text derived from this one by an operation that does not keep byte positions: trusted only
  // when every input byte was.
  Text derived(std::string v) const { return all_trusted() ? literal(std::move(v)) : data(std::move(v)); }
};

}  // namespace duo::jinja
