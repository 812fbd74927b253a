// The vocabularies the tokenizer and chat fuzz targets run on: the byte-level BPE vocabularies
// of the two default models (read once from the fetched GGUFs: $DUO_MODELS, else
// ~/.cache/duo/models) and a small SentencePiece vocabulary with byte fallback built here.
#pragma once
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "io/gguf.h"
#include "tokenizer/tokenizer.h"

namespace duo::fuzz {

inline const std::vector<std::string>& model_files() {
  static const std::vector<std::string> files = {"SmolLM2-135M-Instruct.Q4_1.gguf",
                                                 "Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf"};
  return files;
}

inline std::string models_dir() {
  if (const char* d = std::getenv("DUO_MODELS")) return d;
  const char* home = std::getenv("HOME");
  return std::string(home ? home : "") + "/.cache/duo/models";
}

// A GGUF of the default models (its metadata: vocabulary, chat template), or null when it was
// not fetched.
inline std::unique_ptr<GgufFile> open_model(const std::string& file) {
  const std::string path = models_dir() + "/" + file;
  if (FILE* f = std::fopen(path.c_str(), "rb")) {
    std::fclose(f);
    return GgufFile::open(path);
  }
  return nullptr;
}

inline Vocab small_spm_vocab() {
  Vocab v;
  v.model = Vocab::Model::SPM;
  v.add_space_prefix = true;
  auto add = [&](const std::string& t, float score, TokenType type) {
    v.tokens.push_back(t);
    v.scores.push_back(score);
    v.types.push_back(type);
    return (int32_t)v.tokens.size() - 1;
  };
  v.unk = add("<unk>", 0, TokenType::Unknown);
  v.bos = add("<s>", 0, TokenType::Control);
  v.eos = add("</s>", 0, TokenType::Control);
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "<0x%02X>", b);
    add(buf, 0, TokenType::Byte);
  }
  const std::string sp = "\xE2\x96\x81";
  int score = -1;
  for (const char* t : {"a", "b", "ab", "abc", "the", "he", "hello", "\xC3\xA9", "<0x41>"}) {
    add(t, float(score--), TokenType::Normal);
    add(sp + t, float(score--), TokenType::Normal);
  }
  add(sp, -50, TokenType::Normal);
  add("[INST]", 0, TokenType::Control);
  return v;
}

// Every vocabulary available: the fetched models' first, then the SentencePiece one. Aborts
// when no model was fetched (the targets are meant to run on real vocabularies).
inline const std::vector<std::unique_ptr<Tokenizer>>& tokenizers() {
  static const std::vector<std::unique_ptr<Tokenizer>> toks = [] {
    std::vector<std::unique_ptr<Tokenizer>> t;
    for (const std::string& f : model_files())
      if (auto g = open_model(f)) t.push_back(Tokenizer::from_gguf(*g));
    if (t.empty()) {
      std::fprintf(stderr, "fuzz: no model in %s (scripts/fetch_models.py)\n", models_dir().c_str());
      std::abort();
    }
    t.push_back(std::make_unique<Tokenizer>(small_spm_vocab()));
    return t;
  }();
  return toks;
}

}  // namespace duo::fuzz
