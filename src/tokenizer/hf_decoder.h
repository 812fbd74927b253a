// The decoder steps of a tokenizer.json that duo runs as declared (Unigram models): each step
// maps the list of token texts to a new list, and the result is their concatenation, as HF
// tokenizers' Decoder::decode_chain. Metaspace reads U+2581 as a space (and, where it adds a
// prefix on encoding, drops the U+2581 of the first token), Replace a literal in each token,
// ByteFallback turns runs of <0xXX> tokens into their bytes, Fuse joins the list, Strip cuts up
// to `start` / `stop` copies of a character off each token's ends.
#pragma once
#include <cstddef>
#include <string>
#include <vector>

namespace duo {

struct DecodeStep {
  enum class Kind { Metaspace, Replace, ByteFallback, Fuse, Strip };
  Kind kind = Kind::Fuse;
  std::string from, to;        // Replace: a literal and what it becomes; Strip: the character (from)
  bool drop_first = false;     // Metaspace: prepend_scheme is not "never"
  size_t start = 0, stop = 0;  // Strip
};

// HF gives U+FFFD for each byte of a run of byte tokens that is not valid UTF-8; duo keeps the
// bytes (the caller's text may end inside a character that the next tokens complete).
std::string decode_tokens(const std::vector<DecodeStep>& steps, std::vector<std::string> tokens);

}  // namespace duo
