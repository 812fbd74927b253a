// The tokenizer of a model in either form duo loads: a GGUF file's vocabulary
// (tokenizer.ggml.*), or a Hugging Face directory's tokenizer.json (hf_tokenizer.h). One place
// decides, so every command tokenizes a model the same way the engine does.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "tokenizer/tokenizer.h"

namespace duo {

class GgufFile;
class HfCheckpoint;

// The HF directory's when `hf` is given, else the GGUF's (both null: synthetic weights, an
// error); n_vocab: the model's embedding rows (an HF
// tokenizer's unused ids up to it become padding tokens, as the GGUF converter writes them).
std::unique_ptr<Tokenizer> tokenizer_for(const GgufFile* gguf, const HfCheckpoint* hf, int32_t n_vocab);

// The tokenizer of a loaded model (a duo::Model, GGUF or Hugging Face directory).
template <typename ModelT>
std::unique_ptr<Tokenizer> tokenizer_of(const ModelT& m) {
  return tokenizer_for(m.has_gguf() ? &m.gguf() : nullptr, m.hf(), m.config().n_vocab);
}

// Only the tokenizer of the model at `path` (GGUF file or HF directory): its weights are mapped,
// never read, and no model is built (`duo tokenize`).
std::unique_ptr<Tokenizer> load_model_tokenizer(const std::string& path);

}  // namespace duo
