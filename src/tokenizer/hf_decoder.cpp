#include "tokenizer/hf_decoder.h"

#include <string_view>


namespace duo {

namespace {

const char kSpm[] = "\xE2\x96\x81";  // U+2581

std::string replace_all(const std::string& s, const std::string& from, const std::string& to) {
  if (from.empty()) return s;
  std::string out;
  size_t last = 0;
  for (size_t at = s.find(from); at != std::string::npos; at = s.find(from, last)) {
    out.append(s, last, at - last);
    out += to;
    last = at + from.size();
  }
  return out.append(s, last, std::string::npos);
}

int byte_token(const std::string& t) {
  auto hex = [](char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
  };
  if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>' || hex(t[3]) < 0 || hex(t[4]) < 0) return -1;
  return hex(t[3]) * 16 + hex(t[4]);
}

// Strip: up to `start` copies of c cut off the front of s and up to `stop` off its end.
std::string strip(const std::string& s, const std::string& c, size_t start, size_t stop) {
  size_t b = 0, e = s.size();
  for (size_t k = 0; k < start && b + c.size() <= e && s.compare(b, c.size(), c) == 0; ++k) b += c.size();
  for (size_t k = 0; k < stop && e >= b + c.size() && s.compare(e - c.size(), c.size(), c) == 0; ++k) e -= c.size();
  return s.substr(b, e - b);
}

}  // namespace

std::string decode_tokens(const std::vector<DecodeStep>& steps, std::vector<std::string> tokens) {
  for (const DecodeStep& st : steps) {
    switch (st.kind) {
      case DecodeStep::Kind::Metaspace:
        for (size_t i = 0; i < tokens.size(); ++i)
          tokens[i] = replace_all(tokens[i], kSpm, i == 0 && st.drop_first ? "" : " ");
        break;
      case DecodeStep::Kind::Replace:
        for (auto& t : tokens) t = replace_all(t, st.from, st.to);
        break;
      case DecodeStep::Kind::ByteFallback: {
        std::vector<std::string> out;
        std::string bytes;
        bool in_bytes = false;
        for (auto& t : tokens) {
          const int b = byte_token(t);
          if (b >= 0) {
            bytes += (char)b;
            in_bytes = true;
            continue;
          }
          if (in_bytes) out.push_back(std::move(bytes)), bytes.clear(), in_bytes = false;
          out.push_back(std::move(t));
        }
        if (in_bytes) out.push_back(std::move(bytes));
        tokens.swap(out);
        break;
      }
      case DecodeStep::Kind::Fuse: {
        std::string all;
        for (const auto& t : tokens) all += t;
        tokens.assign(1, std::move(all));
        break;
      }
      case DecodeStep::Kind::Strip:
        for (auto& t : tokens) t = strip(t, st.from, st.start, st.stop);
        break;
    }
  }
  std::string s;
  for (const auto& t : tokens) s += t;
  return s;
}

}  // namespace duo
