// The parts of a tokenizer.json whose model is Unigram that differ from a BPE file (used by
// hf_tokenizer.cpp): the model's vocab list of [piece, log-probability] (ids by position),
// unk_id and byte_fallback, and the normalizer (Replace, Strip, Prepend, Precompiled),
// pre-tokenizer (Metaspace) and decoder steps the converted SentencePiece models declare.
// Anything else is refused by name.
#pragma once
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>

#include "tokenizer/vocab.h"

namespace duo {

// Token ids to their text and type.
using HfTokenMap = std::map<int64_t, std::pair<std::string, TokenType>>;

// Fills v (model SPM with unigram set, scores, unk, byte_fallback, the steps) and the model's
// tokens in by_id. Throws duo::Error naming what is not supported.
void read_unigram(const nlohmann::json& tj, const std::string& where, Vocab& v, HfTokenMap& by_id);

// The value HF tokenizers holds for a number of a tokenizer.json that nlohmann read as v. HF's
// JSON reader does not round correctly and puts some scores one ulp from v; Unigram compares
// sums of scores, and paths that tie exactly (". .." against ".. .") are told apart by those
// ulps, so duo reads the scores as HF does.
double hf_json_double(double v);

// A Metaspace pre-tokenizer's or decoder's prefix: prepend_scheme, or the older
// add_prefix_space (true: always). Refuses a replacement other than U+2581.
std::string metaspace_scheme(const nlohmann::json& p, const std::string& where);

}  // namespace duo
