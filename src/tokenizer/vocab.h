// The tokenizer vocabulary as stored in GGUF metadata (tokenizer.ggml.*).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

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
};

// Reads the vocabulary; throws duo::Error for an unknown tokenizer model or pre-tokenizer,
// missing arrays or inconsistent lengths.
Vocab load_vocab(const GgufFile& f);

// Pre-tokenizer names we implement (for error messages and tests).
const std::vector<std::string>& known_pretokenizers();

}  // namespace duo
