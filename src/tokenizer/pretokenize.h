// Splits text into the pieces byte-level BPE works on, with the regexes of a model family's
// pre-tokenizer. Regexes are applied in sequence: each splits every piece of the previous
// step into matches and the text between them.
#pragma once
#include <string>
#include <string_view>
#include <vector>

namespace duo {

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
