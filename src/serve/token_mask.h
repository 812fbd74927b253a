// Which vocabulary tokens a JsonMatcher accepts next, for constrained sampling.
//
// Trying every token's bytes on a copy of the matcher steps it once per byte of the whole
// vocabulary (~300K bytes for SmolLM2's 49K tokens) at every generated token. Instead the
// pieces form a byte trie, laid out in pre-order, that is walked once with a stack of matchers
// (one per depth): a byte the matcher refuses skips its whole subtree, and tokens that share
// a prefix share its steps. Inside a plain string, a subtree whose bytes are all plain string
// bytes is accepted whole without stepping (most of the vocabulary, in free text).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "serve/json_matcher.h"

namespace duo::serve {

class TokenMask {
 public:
  // pieces[t]: token t's bytes; tokens with include[t] false (or no bytes) are never allowed.
  TokenMask(const std::vector<std::string>& pieces, const std::vector<bool>& include);

  // Appends to `out` every token whose whole piece `m` accepts (in no particular order).
  void allowed(const JsonMatcher& m, std::vector<int32_t>& out);

  size_t trie_nodes() const { return nodes_.size(); }

 private:
  struct Node {
    unsigned char byte = 0;
    bool plain = false;       // this byte and all bytes below are plain string bytes
    uint16_t depth = 0;       // bytes from the root (the root is 0)
    uint32_t end = 0;         // one past the last node of this subtree
    uint32_t tok_begin = 0;   // tokens_[tok_begin, tok_own_end): this node's piece exactly
    uint32_t tok_own_end = 0;
    uint32_t tok_sub_end = 0;  // tokens_[tok_begin, tok_sub_end): the whole subtree's
  };
  std::vector<Node> nodes_;       // pre-order; nodes_[0] is the root (the empty prefix)
  std::vector<int32_t> tokens_;   // token ids sorted by piece
  std::vector<JsonMatcher> stack_;  // matchers by depth, reused across calls
  std::vector<uint8_t> plain_;      // stack_[d] is inside a plain string
};

}  // namespace duo::serve
