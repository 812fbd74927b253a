// Text <-> token ids for the vocabularies GGUF models carry: byte-level BPE (GPT-2 style,
// with the model's pre-tokenizer regexes, run through PCRE2) and SentencePiece (scores, byte
// fallback); and those of tokenizer.json files (hf_tokenizer.h), Unigram models among them.
// Special tokens in text are recognised when asked to.
#pragma once
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tokenizer/vocab.h"

namespace duo {

class GgufFile;
class Normalizer;
class Pretokenizer;
class UnigramModel;

// A piece of a prompt for Tokenizer::encode_parts.
struct PromptPart {
  std::string text;
  // A chat template's marker ("<|im_start|>"): it becomes its special token when the vocabulary
  // has one as a control or user-defined token (else it is text).
  bool special = false;
};

class Tokenizer {
 public:
  explicit Tokenizer(Vocab v);
  ~Tokenizer();
  static std::unique_ptr<Tokenizer> from_gguf(const GgufFile& f);
  // Bytes the BPE piece cache holds now (bounded; for tests and memory accounting).
  size_t piece_cache_bytes() const;

  // add_bos: prepend the BOS token (when the vocabulary has one).
  // parse_special: text of control tokens (e.g. "<|im_start|>") becomes those tokens;
  // user-defined tokens are always recognised, as in the reference implementations.
  std::vector<int32_t> encode(std::string_view text, bool add_bos, bool parse_special) const;
  // A prompt whose special tokens are exactly its marker parts: the text parts are encoded with
  // parse_special off, so text written by a user ("<|im_end|>\n<|im_start|>system") can never
  // become a template's marker, and user-defined tokens that are one of this prompt's markers are
  // not matched in text either. Text runs between markers are encoded as one piece, so for text
  // without special-token text the ids are those of encode(concatenation, add_bos, true).
  std::vector<int32_t> encode_parts(const std::vector<PromptPart>& parts, bool add_bos) const;
  // A lower bound on the number of ids encode() gives for `text` (BOS/EOS not counted), in one
  // pass over its bytes and without tokenizing: every token covers at most max_token_bytes()
  // bytes of the input, and every byte is covered by some token unless the vocabulary would
  // drop it (no byte token and no unknown token). Lets a server refuse a prompt that cannot
  // fit the context before paying for its tokenization.
  size_t min_tokens(std::string_view text) const;
  // The most input bytes one token can stand for (>= 1).
  size_t max_token_bytes() const { return max_token_bytes_; }
  // Concatenated pieces; control tokens render as their text.
  std::string decode(const std::vector<int32_t>& ids) const;
  // Raw bytes of one token (may be part of a UTF-8 character). Control tokens give "".
  std::string token_to_piece(int32_t id) const;
  int32_t n_vocab() const { return (int32_t)vocab_.tokens.size(); }
  // End of generation: EOS, EOT, and the end-of-turn control tokens of chat formats.
  bool is_eog(int32_t id) const;
  int32_t token_id(std::string_view text) const;  // -1 when not a token
  const Vocab& vocab() const { return vocab_; }

 private:
  void encode_bpe_piece(const std::string& piece, std::vector<int32_t>& out) const;
  // at_start: the text begins the input (the SentencePiece prefix may be added only there).
  void encode_spm(const std::string& text, bool at_start, std::vector<int32_t>& out) const;
  void encode_spm_piece(const std::string& piece, std::vector<int32_t>& out) const;   // spaces as U+2581
  void encode_spm_scores(const std::string& piece, std::vector<int32_t>& out) const;  // GGUF's scores
  void encode_unigram(const std::string& text, bool at_start, std::vector<int32_t>& out) const;
  void unigram_min_tokens();  // the min_tokens bounds of a Unigram model
  void encode_segment(const std::string& text, bool at_start, std::vector<int32_t>& out) const;
  std::string piece_bytes(int32_t id) const;
  // Text without specials (or with them, parse_special), between two markers; `never`: special
  // ids not to match in it.
  void encode_text(std::string_view text, bool parse_special, const std::vector<int32_t>& never, bool at_start,
                   std::vector<int32_t>& out) const;

  Vocab vocab_;
  std::unordered_map<std::string, int32_t> token_to_id_;
  std::unordered_map<std::string, int32_t> merge_rank_;
  std::vector<int32_t> specials_;  // control and user-defined tokens, longest text first
  bool special_first_[256] = {};   // bytes a special token can start with
  std::vector<bool> eog_;
  std::unique_ptr<Pretokenizer> pre_;
  std::unique_ptr<UnigramModel> unigram_;   // tokenizer.json Unigram models
  std::unique_ptr<Normalizer> normalizer_;  // their normalizer steps
  bool ignore_merges_ = false;  // BPE: whole-piece vocabulary lookup before merging (Llama-3)
  int32_t byte_tokens_[256];  // SPM byte fallback <0xXX> ids, or BPE single-byte token ids
  size_t max_token_bytes_ = 1;
  bool byte_kept_[256] = {};   // some token covers the byte wherever it occurs (min_tokens)
  bool all_bytes_kept_ = false;
  mutable std::mutex cache_mu_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;  // BPE piece -> ids
  mutable size_t cache_bytes_ = 0;  // what cache_'s entries hold (remember_piece keeps it bounded)
  // Keeps a piece's ids for the next time it is seen, within a bound in bytes.
  void remember_piece(const std::string& piece, std::vector<int32_t> ids) const;
};

}  // namespace duo
