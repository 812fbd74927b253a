// Splits a Jinja template into text and the tokens inside its tags, applying the whitespace
// control chat templates rely on: "{%-"/"-%}" strip, and Hugging Face's environment settings
// trim_blocks (the newline after a block or comment tag goes) and lstrip_blocks (spaces and
// tabs before a block or comment tag at the start of a line go; "{%+" keeps them).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace duo::jinja {

struct Token {
  enum class Kind { Text, VarBegin, VarEnd, BlockBegin, BlockEnd, Name, Int, Float, String, Op, End };
  Kind kind = Kind::End;
  std::string s;  // text, name, operator, or the string literal's value (escapes resolved)
  int64_t i = 0;
  double f = 0;
  size_t pos = 0;  // byte offset in the template (for messages)
};

// Throws duo::Error (with the offset) for an unclosed tag, comment or string, or a stray character.
std::vector<Token> lex(const std::string& src);

}  // namespace duo::jinja
