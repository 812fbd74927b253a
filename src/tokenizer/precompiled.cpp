#include "tokenizer/precompiled.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <cstring>

#include "core/error.h"
#include "tokenizer/pretokenize.h"

namespace duo {

namespace {

// darts-clone's unit fields.
bool has_leaf(uint32_t u) { return (u >> 8) & 1; }
uint32_t value(uint32_t u) { return u & ((1u << 31) - 1); }
uint32_t label(uint32_t u) { return u & ((1u << 31) | 0xFF); }
uint32_t offset(uint32_t u) { return (u >> 10) << ((u & (1u << 9)) >> 6); }

}  // namespace

std::string base64_decode(std::string_view in) {
  auto val = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    return c == '+' ? 62 : c == '/' ? 63 : -1;
  };
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] == '=') {
      DUO_CHECK(in.find_first_not_of('=', i) == std::string_view::npos, "base64: '=' inside the text");
      break;
    }
    const int v = val(in[i]);
    DUO_CHECK(v >= 0, "base64: character {} at {} is not base64", (int)(unsigned char)in[i], i);
    acc = (acc << 6) | (uint32_t)v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += (char)((acc >> bits) & 0xFF);
    }
  }
  return out;
}

PrecompiledMap::PrecompiledMap(const std::string& map) {
  DUO_CHECK(map.size() >= 4, "precompiled_charsmap: {} bytes, too short for its header", map.size());
  const uint32_t trie_bytes = (uint32_t)(unsigned char)map[0] | (uint32_t)(unsigned char)map[1] << 8 |
                              (uint32_t)(unsigned char)map[2] << 16 | (uint32_t)(unsigned char)map[3] << 24;
  DUO_CHECK(trie_bytes % 4 == 0 && trie_bytes >= 4 && trie_bytes <= map.size() - 4,
            "precompiled_charsmap: a trie of {} bytes in a table of {}", trie_bytes, map.size());
  units_.resize(trie_bytes / 4);
  std::memcpy(units_.data(), map.data() + 4, trie_bytes);  // little-endian, as the hosts duo runs on
  replacements_ = map.substr(4 + trie_bytes);
  int err = 0;
  PCRE2_SIZE off = 0;
  grapheme_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>("\\X"), PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &err,
                            &off, nullptr);
  DUO_CHECK(grapheme_ != nullptr, "PCRE2 cannot compile \\X");
}

PrecompiledMap::~PrecompiledMap() { pcre2_code_free(static_cast<pcre2_code*>(grapheme_)); }

const char* PrecompiledMap::lookup(std::string_view s, size_t& len) const {
  size_t pos = offset(units_[0]);
  for (unsigned char c : s) {
    if (c == 0) break;  // keys end at a 0 byte
    pos ^= c;
    if (pos >= units_.size()) return nullptr;
    const uint32_t u = units_[pos];
    if (label(u) != c) return nullptr;
    pos ^= offset(u);
    if (pos >= units_.size()) return nullptr;
    if (has_leaf(u)) {  // the shortest key: the first found
      const uint32_t at = value(units_[pos]);
      if (at >= replacements_.size()) return nullptr;
      const size_t end = replacements_.find('\0', at);
      len = (end == std::string::npos ? replacements_.size() : end) - at;
      return replacements_.data() + at;
    }
  }
  return nullptr;
}

std::string PrecompiledMap::apply(std::string_view text) const {
  std::string out;
  auto* code = static_cast<pcre2_code*>(grapheme_);
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(code, nullptr);
  auto one = [&](std::string_view part) {
    size_t len = 0;
    if (const char* r = lookup(part, len))
      out.append(r, len);
    else
      out.append(part);
  };
  for (size_t i = 0; i < text.size();) {
    // PCRE2 in UTF mode must not see invalid UTF-8: clusters are found in the valid runs, and an
    // invalid byte, which no key starts a valid character with, stays as it is.
    size_t e = i;
    while (e < text.size() && utf8_char_len(text, e) > 0) e += utf8_char_len(text, e);
    const std::string_view run = text.substr(i, e - i);
    for (size_t pos = 0; pos < run.size();) {
      size_t end = pos + utf8_char_len(run, pos);
      if (pcre2_match(code, reinterpret_cast<PCRE2_SPTR>(run.data()), run.size(), pos,
                      PCRE2_NO_UTF_CHECK | PCRE2_ANCHORED, md, nullptr) > 0)
        end = std::max(end, (size_t)pcre2_get_ovector_pointer(md)[1]);
      const std::string_view g = run.substr(pos, end - pos);
      size_t len = 0;
      const char* r = g.size() < 6 ? lookup(g, len) : nullptr;
      if (r) {
        out.append(r, len);
      } else {
        for (size_t k = 0; k < g.size(); k += utf8_char_len(g, k)) one(g.substr(k, utf8_char_len(g, k)));
      }
      pos = end;
    }
    if (e < text.size()) out += text[e++];
    i = e;
  }
  pcre2_match_data_free(md);
  return out;
}

}  // namespace duo
