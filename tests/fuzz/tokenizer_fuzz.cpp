// libFuzzer entry for the tokenizer. An input starting with "GGUF" is a vocabulary: it is
// loaded (load_vocab's checks, the Tokenizer's tables) and encodes a fixed text. Any other
// input is text: its first byte picks a vocabulary (SmolLM2, Qwen2.5, a small SentencePiece
// one) and the flags, the rest is encoded. Findings: a crash, a sanitizer report, an
// exception other than duo::Error while loading (none at all while encoding), an id out of
// range, min_tokens above the real count, or byte-level BPE text that does not decode back to
// itself (bytes without a token of their own are dropped).
#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>

#include "core/error.h"
#include "fuzz_vocabs.h"
#include "io/gguf.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/vocab.h"

namespace {

// Whether a byte has a token of its own (else byte-level BPE drops it), per vocabulary.
bool byte_kept(const duo::Tokenizer& tok, unsigned char c) {
  static std::map<const duo::Tokenizer*, std::array<bool, 256>> kept;
  auto it = kept.find(&tok);
  if (it == kept.end()) {
    std::array<bool, 256> k{};
    for (int b = 0; b < 256; ++b) k[b] = !tok.encode(std::string(1, char(b)), false, false).empty();
    it = kept.emplace(&tok, k).first;
  }
  return it->second[c];
}

void check(const duo::Tokenizer& tok, const std::string& text, bool add_bos, bool parse_special) {
  const std::vector<int32_t> ids = tok.encode(text, add_bos, parse_special);
  for (int32_t id : ids)
    if (id < 0 || id >= tok.n_vocab()) __builtin_trap();
  const size_t bos = add_bos && tok.vocab().add_bos && tok.vocab().bos >= 0 ? 1 : 0;
  if (tok.min_tokens(text) > ids.size() - std::min(bos, ids.size())) __builtin_trap();
  (void)tok.decode(ids);
  // Markers as parts: as many of them as there are marker parts in the result.
  const std::vector<duo::PromptPart> parts = {{text, false}, {"<|im_end|>", true}, {text, false}};
  (void)tok.encode_parts(parts, add_bos);
  if (tok.vocab().model != duo::Vocab::Model::BPE || parse_special || add_bos) return;
  // Lossless apart from the bytes that have no token of their own.
  std::string kept;
  for (unsigned char c : text)
    if (byte_kept(tok, c)) kept += char(c);
  if (tok.decode(ids) != kept) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size >= 4 && std::string(reinterpret_cast<const char*>(data), 4) == "GGUF") {
    std::unique_ptr<duo::Tokenizer> tok;
    try {
      auto f = duo::GgufFile::from_memory(data, size);
      tok = duo::Tokenizer::from_gguf(*f);
    } catch (const duo::Error&) {
      return 0;
    }
    for (bool special : {false, true}) (void)tok->encode("Hello world <|im_end|> 2024 \xE2\x96\x81\xff", true, special);
    return 0;
  }
  const auto& toks = duo::fuzz::tokenizers();
  if (size == 0) return 0;
  const uint8_t sel = data[0];
  const duo::Tokenizer& tok = *toks[(sel & 0x0f) % toks.size()];
  check(tok, std::string(reinterpret_cast<const char*>(data) + 1, size - 1), sel & 0x10, sel & 0x20);
  return 0;
}
