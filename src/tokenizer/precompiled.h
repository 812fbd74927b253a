// SentencePiece's precompiled normalization table (the precompiled_charsmap of a tokenizer.json
// Precompiled normalizer, e.g. nmt_nfkc: NFKC plus SentencePiece's own whitespace and control
// character rules, compiled into data). Its layout: a little-endian u32 with the size in bytes
// of a darts-clone double-array trie, that trie's u32 units, then the replacement strings, each
// ended by a 0 byte; a key's value in the trie is the offset of its replacement.
// apply() follows HF tokenizers' Precompiled normalizer: per extended grapheme cluster (PCRE2's
// \X), a cluster shorter than 6 bytes whose start has an entry is replaced as a whole by the
// replacement of the shortest key that is a prefix of it; otherwise each character is looked up
// alone (and kept when it has no entry).
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace duo {

class PrecompiledMap {
 public:
  explicit PrecompiledMap(const std::string& charsmap);  // throws duo::Error for a malformed table
  ~PrecompiledMap();
  PrecompiledMap(const PrecompiledMap&) = delete;
  PrecompiledMap& operator=(const PrecompiledMap&) = delete;
  std::string apply(std::string_view text) const;

 private:
  // The replacement of the shortest key that is a prefix of `s`, or nullptr.
  const char* lookup(std::string_view s, size_t& len) const;
  std::vector<uint32_t> units_;
  std::string replacements_;
  void* grapheme_ = nullptr;  // the compiled \X (pcre2_code)
};

// Standard base64 (with '=' padding) to bytes; throws duo::Error for other characters.
std::string base64_decode(std::string_view in);

}  // namespace duo
