// Splits text into the pieces byte-level BPE works on, with the regexes of a model family's
// pre-tokenizer. Regexes are applied in sequence: each splits every piece of the previous
// step into matches and the text between them.
#pragma once
#include <string>
#include <string_view>
#include <vector>

namespace duo {

// Length of the valid UTF-8 character at s[i] (no overlongs, no surrogates, <= U+10FFFF),
// or 0 when the bytes there are not one.
size_t utf8_char_len(std::string_view s, size_t i);

class Pretokenizer {
 public:
  explicit Pretokenizer(const std::string& name);  // throws for an unknown name
  // The given regexes (PCRE2 syntax, as tokenizer.json's Split patterns), applied in order.
  explicit Pretokenizer(const std::vector<std::string>& regexes);
  ~Pretokenizer();
  std::vector<std::string> split(std::string_view text) const;

 private:
  struct Regex;
  void add(const char* pattern);
  std::vector<Regex*> regexes_;
};

}  // namespace duo
