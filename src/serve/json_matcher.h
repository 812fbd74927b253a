// A byte-level recogniser of one JSON value (RFC 8259) that matches a CompiledSchema, fed a
// byte at a time. Constrained sampling steps it through each candidate token's bytes and masks
// the tokens it refuses (TokenMask), so whatever is generated is a prefix of a valid document;
// every prefix it accepts can still be completed (the compiler drops what cannot be satisfied).
//
// The state is a set of "threads", each a stack of frames (one per open value): a union
// (anyOf / oneOf) forks one thread per alternative at the value's first byte, and a thread
// dies at the first byte its alternative refuses. The state lives in fixed arrays and a copy
// takes only the frames in use, so stepping a copy costs tens of nanoseconds, no allocation.
//
// Whitespace runs between tokens are bounded (kMaxWhitespace bytes): without a bound a model
// could emit blanks for ever and still be "valid". Strings are not checked for UTF-8 validity
// (the server's JSON output replaces invalid bytes) nor \u escapes for surrogate pairing.
#pragma once
#include <cstdint>
#include <string_view>

#include "serve/json_schema.h"

namespace duo::serve {

class JsonMatcher {
 public:
  static constexpr int kMaxDepth = 32;      // open values per thread
  static constexpr int kMaxThreads = 16;    // alternatives followed at once
  static constexpr int kMaxFrames = 128;    // frames of all threads together
  static constexpr int kMaxWhitespace = 16;

  JsonMatcher() = default;
  // `schema` must outlive the matcher. `trailing_whitespace`: blanks may follow the complete
  // value (as parsers allow); off, nothing may (generation ends there).
  explicit JsonMatcher(const CompiledSchema& schema, bool trailing_whitespace = true);
  JsonMatcher(const JsonMatcher& o) { *this = o; }
  JsonMatcher& operator=(const JsonMatcher& o);

  // Takes one byte; false (and the matcher unchanged) when no valid document continues so.
  bool feed(unsigned char c);
  // All bytes of `s`, or false: then the matcher is left part-way (use a copy to test).
  bool feed(std::string_view s);
  // This becomes `from` after byte c; false when c is refused (this is then unspecified).
  bool step_from(const JsonMatcher& from, unsigned char c);
  // The bytes so far are a whole document the schema accepts (a number may still grow).
  bool done() const;
  // Every thread is inside a plain string (a value, or a key that names no property), where
  // any byte but '"', '\' and control bytes is taken without changing the state (TokenMask's
  // shortcut).
  bool in_plain_string() const;
  int threads() const { return n_threads_; }

  // Trivial (no initializers), so that a matcher's unused frames cost nothing to make; every
  // frame in use is made whole by value-initialisation (Frame{}), padding included.
  struct Frame {
    uint8_t kind, phase;
    uint16_t pad;  // explicit, so that frames compare with memcmp
    int32_t node;
    uint32_t a, b;
    uint64_t n;
  };

 private:
  void advance(Frame* st, int d, unsigned char c);
  void emit(const Frame* st, int d);

  const CompiledSchema* schema_ = nullptr;
  bool trailing_ws_ = true;
  uint8_t ws_ = 0;  // whitespace bytes in the current run
  uint8_t n_threads_ = 0;
  uint16_t used_ = 0;  // frames_ in use
  uint8_t len_[kMaxThreads] = {};
  Frame frames_[kMaxFrames];
};

}  // namespace duo::serve
