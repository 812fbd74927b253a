// Python str semantics over UTF-8 bytes: code points (len, indexing, slicing) and the
// whitespace str.strip()/split() use.
#pragma once
#include <cstddef>
#include <string>
#include <vector>

namespace duo::jinja {

// Byte offsets where code points start, plus s.size() at the end.
std::vector<size_t> code_point_starts(const std::string& s);
// Length in bytes of the Python-whitespace code point at s[i] (0 if none).
size_t space_at(const std::string& s, size_t i);
// Length in bytes of the Python-whitespace code point that ends at s[end] (0 if none).
size_t space_before(const std::string& s, size_t end);
// [begin, end) of s without leading/trailing characters: whitespace when `chars` is null,
// else any code point in *chars.
std::pair<size_t, size_t> strip_range(const std::string& s, const std::string* chars, bool left, bool right);
std::string ascii_lower(std::string s);
std::string ascii_upper(std::string s);

}  // namespace duo::jinja
