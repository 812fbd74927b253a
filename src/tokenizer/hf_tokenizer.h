// The vocabulary of a Hugging Face directory: tokenizer.json (byte-level BPE: vocab, merges in
// the string or the pair form, added tokens, the pre-tokenizer's split regexes as declared; or
// SentencePiece-style BPE with byte_fallback: the U+2581 space of its Prepend/Replace normalizer
// or Metaspace pre-tokenizer, <0xXX> byte tokens, its decoder's Strip; or a Unigram model with
// its normalizer, Metaspace and decoder steps, hf_unigram.cpp),
// tokenizer_config.json (bos/eos, add_bos_token) and generation_config.json (eos ids), turned
// into duo's Vocab so the one Tokenizer serves GGUF and HF models alike.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "tokenizer/tokenizer.h"
#include "tokenizer/vocab.h"

namespace duo {

// n_vocab: the model's embedding rows (config.json's vocab_size); ids the tokenizer does not
// use up to it become unused "[PADn]" tokens, as the GGUF converter writes them. 0: the
// tokenizer's own size. Throws duo::Error naming what is missing or not supported.
Vocab load_hf_vocab(const std::string& dir, int32_t n_vocab);
std::unique_ptr<Tokenizer> tokenizer_from_hf(const std::string& dir, int32_t n_vocab);

}  // namespace duo
