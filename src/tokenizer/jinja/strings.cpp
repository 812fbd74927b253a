#include "tokenizer/jinja/strings.h"

#include <cctype>

namespace duo::jinja {

std::vector<size_t> code_point_starts(const std::string& s) {
  std::vector<size_t> out;
  for (size_t i = 0; i < s.size(); ++i)
    if (i == 0 || ((unsigned char)s[i] & 0xC0) != 0x80) out.push_back(i);
  out.push_back(s.size());
  return out;
}

namespace {

// Python's str.isspace() code points beyond ASCII, as UTF-8.
const char* const kWideSpaces[] = {"\xC2\x85", "\xC2\xA0", "\xE1\x9A\x80", "\xE2\x80\x80", "\xE2\x80\x81",
                                   "\xE2\x80\x82", "\xE2\x80\x83", "\xE2\x80\x84", "\xE2\x80\x85", "\xE2\x80\x86",
                                   "\xE2\x80\x87", "\xE2\x80\x88", "\xE2\x80\x89", "\xE2\x80\x8A", "\xE2\x80\xA8",
                                   "\xE2\x80\xA9", "\xE2\x80\xAF", "\xE2\x81\x9F", "\xE3\x80\x80"};

bool ascii_space(unsigned char c) { return c == ' ' || (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x1F); }

}  // namespace

size_t space_at(const std::string& s, size_t i) {
  if (i >= s.size()) return 0;
  if (ascii_space((unsigned char)s[i])) return 1;
  for (const char* w : kWideSpaces) {
    const std::string ws(w);
    if (s.compare(i, ws.size(), ws) == 0) return ws.size();
  }
  return 0;
}

size_t space_before(const std::string& s, size_t end) {
  if (end == 0) return 0;
  if (ascii_space((unsigned char)s[end - 1])) return 1;
  for (const char* w : kWideSpaces) {
    const std::string ws(w);
    if (end >= ws.size() && s.compare(end - ws.size(), ws.size(), ws) == 0) return ws.size();
  }
  return 0;
}

std::pair<size_t, size_t> strip_range(const std::string& s, const std::string* chars, bool left, bool right) {
  size_t b = 0, e = s.size();
  if (!chars) {
    while (left && b < e) {
      const size_t n = space_at(s, b);
      if (!n) break;
      b += n;
    }
    while (right && e > b) {
      const size_t n = space_before(s, e);
      if (!n) break;
      e -= n;
    }
    return {b, e};
  }
  // The set of code points in `chars`.
  std::vector<std::string> set;
  const auto cs = code_point_starts(*chars);
  for (size_t k = 0; k + 1 < cs.size(); ++k) set.push_back(chars->substr(cs[k], cs[k + 1] - cs[k]));
  auto match_at = [&](size_t i) -> size_t {
    for (const auto& c : set)
      if (s.compare(i, c.size(), c) == 0) return c.size();
    return 0;
  };
  auto match_before = [&](size_t end) -> size_t {
    for (const auto& c : set)
      if (end >= c.size() && s.compare(end - c.size(), c.size(), c) == 0) return c.size();
    return 0;
  };
  while (left && b < e) {
    const size_t n = match_at(b);
    if (!n) break;
    b += n;
  }
  while (right && e > b) {
    const size_t n = match_before(e);
    if (!n) break;
    e -= n;
  }
  return {b, e};
}

std::string ascii_lower(std::string s) {
  for (char& c : s) c = (char)std::tolower((unsigned char)c);
  return s;
}

std::string ascii_upper(std::string s) {
  for (char& c : s) c = (char)std::toupper((unsigned char)c);
  return s;
}

}  // namespace duo::jinja
