// The Unigram model of a tokenizer.json (T5, ALBERT, XLNet, mT5 and other SentencePiece
// conversions): a piece of normalized text is split into the tokens whose log-probabilities
// sum highest (Viterbi over every vocabulary token that starts at each character), as HF
// tokenizers' Unigram::encode does it: a character that no token of its own length covers is
// the unknown token with the lowest score less 10, runs of unknown characters are one unknown
// token, and with byte_fallback such a run becomes the <0xXX> tokens of its bytes instead.
#pragma once
#include <algorithm>
#include <cstdint>
#include <string_view>
#include <vector>

#include "tokenizer/vocab.h"

namespace duo {

class UnigramModel {
 public:
  // The pieces are the model's own tokens (ids below v.unigram_scores.size()) that are normal,
  // byte or the unknown token (text may spell it, as in HF): added and special tokens are matched in the text before the model runs
  // (or must not be, when the caller keeps special tokens out of user text).
  explicit UnigramModel(const Vocab& v);
  // Appends the ids of one piece of normalized text. Invalid UTF-8 bytes are characters of
  // their own that no token covers (HF cannot take them).
  void encode(std::string_view piece, std::vector<int32_t>& out) const;

 private:
  // The vocabulary as a byte trie: node 0 is the root; a node's edges are edge_byte_ /
  // edge_child_ [first_edge_[node], first_edge_[node + 1]), sorted by byte (about 13 bytes a
  // node: a 250k-piece vocabulary's trie stays small).
  int32_t child(int32_t node, unsigned char b) const {
    const auto begin = edge_byte_.begin() + first_edge_[node], end = edge_byte_.begin() + first_edge_[node + 1];
    const auto it = std::lower_bound(begin, end, b);
    return it != end && *it == b ? edge_child_[it - edge_byte_.begin()] : -1;
  }
  int32_t exact(std::string_view s) const;  // the token spelled s, or -1
  std::vector<uint32_t> first_edge_;
  std::vector<unsigned char> edge_byte_;
  std::vector<int32_t> edge_child_;
  std::vector<int32_t> node_id_;  // the token ending at a node, or -1
  std::vector<double> scores_;
  double unk_score_ = 0;
  int32_t unk_ = -1;
  bool byte_fallback_ = false;
  int32_t byte_tokens_[256];
};

}  // namespace duo
