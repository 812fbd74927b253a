// The tokenizer vocabulary as stored in GGUF metadata (tokenizer.ggml.*).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "tokenizer/hf_decoder.h"
#include "tokenizer/normalize.h"

namespace duo {

class GgufFile;

// GGUF token types.
enum class TokenType : int32_t { Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6 };

struct Vocab {
  enum class Model { BPE, SPM };  // byte-level BPE ("gpt2") or SentencePiece ("llama")
  Model model = Model::BPE;
  std::string pre = "default";  // pre-tokenizer name (BPE)
  std::vector<std::string> tokens;
  std::vector<TokenType> types;
  std::vector<float> scores;
  std::vector<std::string> merges;  // "left right", highest priority first
  int32_t bos = -1, eos = -1, unk = -1, pad = -1, eot = -1;
  bool add_bos = false, add_eos = false, add_space_prefix = false;
  // From a tokenizer.json (hf_tokenizer.cpp): the pre-tokenizer's split regexes as the file
  // declares them (used instead of the named set `pre` when not empty), BPE's ignore_merges,
  // and further end-of-generation ids (generation_config.json's eos_token_id list).
  std::vector<std::string> pre_regexes;
  bool ignore_merges = false;
  std::vector<int32_t> eog_ids;
  // SentencePiece-style tokenizer.json (model BPE with byte_fallback): symbols are characters
  // (or the <0xXX> tokens of a character not in the vocabulary, or the unknown token, fused over
  // a run when fuse_unk), merged by `merges` rank rather than by score. How the U+2581 prefix is
  // added, as its normalizer or Metaspace pre-tokenizer declares: add_space_prefix on every run
  // of text (Prepend normalizer), only on the run at the start of the input (prefix_first_only),
  // not on a run that already starts with a space (prefix_unless_space); split_on_space: every
  // U+2581 starts a new piece (Metaspace split). decode_keeps_space: the decoder has no Strip.
  bool spm_merges = false, fuse_unk = false;
  bool prefix_first_only = false, prefix_unless_space = false, split_on_space = false;
  bool decode_keeps_space = false;
  // Unigram tokenizer.json (model SPM with `unigram` set; hf_unigram.cpp): the log-probability of
  // each of the model's pieces, by id (as f64, as HF keeps them), byte_fallback, the normalizer's
  // steps, a Metaspace pre-tokenizer (its prefix and split in the fields above; without one the
  // normalized text is one piece) and the decoder's steps, run as declared.
  bool unigram = false, byte_fallback = false, metaspace = false;
  std::vector<double> unigram_scores;
  std::vector<NormStep> normalizer;
  std::vector<DecodeStep> decoder;
};

// Reads the vocabulary; throws duo::Error for an unknown tokenizer model or pre-tokenizer,
// missing arrays or inconsistent lengths.
Vocab load_vocab(const GgufFile& f);

// Pre-tokenizer names we implement (for error messages and tests).
const std::vector<std::string>& known_pretokenizers();

}  // namespace duo
