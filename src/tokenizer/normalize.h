// The normalizer steps of a tokenizer.json that duo applies to text before a Unigram model
// (hf_unigram.cpp reads them): Replace (a literal or a regex, every match), Strip (Unicode
// whitespace at either end), Prepend (on text that is not empty) and Precompiled (SentencePiece's
// compiled normalization table, e.g. nmt_nfkc, looked up as HF tokenizers does), in the declared
// order, to each run of text between added tokens as HF tokenizers does.
#pragma once
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace duo {

struct NormStep {
  enum class Kind { Replace, Strip, Prepend, Precompiled };
  Kind kind = Kind::Replace;
  std::string pattern;  // Replace: what is replaced (a PCRE2 regex when `regex`); Prepend: the text
  bool regex = false;
  std::string content;  // Replace: what it becomes
  bool left = false, right = false;  // Strip
  std::string charsmap;  // Precompiled: the table's bytes (base64-decoded)
};

class Normalizer {
 public:
  explicit Normalizer(const std::vector<NormStep>& steps);  // throws duo::Error for a bad regex
  ~Normalizer();
  // start_kept (when given): whether the result begins with what the input's first character
  // became, i.e. its first character comes from offset 0 of the input (HF's Metaspace adds its
  // "first" prefix only then); false when a step removed the text's first character.
  std::string apply(std::string_view text, bool* start_kept = nullptr) const;
  // For Tokenizer::min_tokens: the text may lose bytes (Strip), or may shrink by more than that
  // (a Replace whose match can be longer than what it becomes, or a Precompiled table).
  bool strips() const { return strips_; }
  bool shrinks() const { return shrinks_; }

 private:
  struct Step;
  std::vector<std::unique_ptr<Step>> steps_;
  bool strips_ = false, shrinks_ = false;
};

}  // namespace duo
