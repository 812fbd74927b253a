// A byte-level recognizer of one JSON object (RFC 8259; the top-level value must be an
// object, as OpenAI's JSON mode requires), fed a byte at a time. Constrained sampling tries
// each token's bytes on a copy and masks the tokens it refuses, so whatever is generated is a
// prefix of valid JSON, and once the object is complete only whitespace and end-of-generation
// may follow.
//
// Whitespace runs are bounded (kMaxWhitespace bytes between two other bytes): without a bound a
// model could emit blanks for ever and still be "valid". Strings are not checked for UTF-8
// validity (the server's JSON output replaces invalid bytes), nor \u escapes for surrogate
// pairing; nesting is bounded by kMaxDepth.
#pragma once
#include <array>
#include <cstdint>
#include <string_view>

namespace duo {

class JsonObjectMatcher {
 public:
  static constexpr int kMaxDepth = 32;
  static constexpr int kMaxWhitespace = 16;

  // Takes one byte; false (and the matcher unchanged) when no valid JSON object continues so.
  bool feed(unsigned char c);
  // All bytes of `s`, or false: then the matcher is left part-way (use a copy to test).
  bool feed(std::string_view s);
  // The object is complete (only whitespace may follow).
  bool done() const { return mode_ == Mode::Done; }

 private:
  enum class Mode : uint8_t {
    Start,       // before the top-level '{'
    ObjFirst,    // after '{': a key or '}'
    ObjKey,      // after ',' in an object: a key
    Colon,       // after a key
    Value,       // a value (after ':' or ',' in an array)
    ArrFirst,    // after '[': a value or ']'
    After,       // after a value: ',' or the closing bracket
    String,      // inside a string
    Escape,      // after '\' in a string
    Unicode,     // inside \uXXXX (hex_left digits to go)
    Minus, Zero, Int, FracStart, Frac, ExpStart, ExpSign, Exp,  // a number
    Literal,     // inside true / false / null
    Done,
  };
  bool step(unsigned char c);
  bool close_value();  // a value ended: After, or Done at depth 0
  bool end_number(unsigned char c);

  Mode mode_ = Mode::Start;
  bool key_ = false;  // the string being read is an object key
  uint8_t hex_left_ = 0;
  uint8_t ws_ = 0;    // whitespace bytes in the current run
  const char* literal_ = nullptr;  // the rest of the literal being matched
  int depth_ = 0;
  std::array<char, kMaxDepth> stack_{};  // '{' or '['
};

}  // namespace duo
