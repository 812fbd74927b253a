#include "tokenizer/vocab.h"

#include <algorithm>

#include "core/error.h"
#include "io/gguf.h"

namespace duo {

const std::vector<std::string>& known_pretokenizers() {
  static const std::vector<std::string> k = {"default", "gpt2", "llama-bpe", "llama3", "qwen2", "smollm"};
  return k;
}

namespace {

bool is_hex(char c) { return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F') || (c >= 'a' && c <= 'f'); }

bool is_byte_token_text(const std::string& t) {
  return t.size() == 6 && t.compare(0, 3, "<0x") == 0 && is_hex(t[3]) && is_hex(t[4]) && t[5] == '>';
}

// A token's text for an error message: quoted, control bytes escaped, long ones cut.
std::string quoted(const std::string& t) {
  std::string out = "\"";
  for (size_t i = 0; i < t.size() && i < 40; ++i) {
    const unsigned char c = (unsigned char)t[i];
    out += c < 32 || c == 127 || c == '"' || c == '\\' ? fmt::format("\\x{:02x}", c) : std::string(1, (char)c);
  }
  return out + (t.size() > 40 ? "...\"" : "\"");
}

}  // namespace

Vocab load_vocab(const GgufFile& f) {
  Vocab v;
  const std::string model = f.get_string("tokenizer.ggml.model");
  if (model == "gpt2")
    v.model = Vocab::Model::BPE;
  else if (model == "llama")
    v.model = Vocab::Model::SPM;
  else
    fail("{}: unsupported tokenizer model '{}' (supported: gpt2 = byte-level BPE, llama = SentencePiece)", f.path(),
         model);
  v.tokens = f.get_string_array("tokenizer.ggml.tokens");
  DUO_CHECK(!v.tokens.empty(), "{}: the vocabulary is empty", f.path());
  const size_t n = v.tokens.size();
  if (f.has("tokenizer.ggml.token_type")) {
    for (int64_t t : f.get_int_array("tokenizer.ggml.token_type")) {
      // 0 (undefined) to 6 (byte) are GGUF's token types; anything else is a corrupt file.
      DUO_CHECK(t >= 0 && t <= (int64_t)TokenType::Byte, "{}: token {} has token type {} (valid: 0 to 6)", f.path(),
                v.types.size(), t);
      v.types.push_back((TokenType)t);
    }
    DUO_CHECK(v.types.size() == n, "{}: {} token types for {} tokens", f.path(), v.types.size(), n);
  } else {
    v.types.assign(n, TokenType::Normal);
  }
  if (f.has("tokenizer.ggml.scores")) {
    v.scores = f.get_float_array("tokenizer.ggml.scores");
    DUO_CHECK(v.scores.size() == n, "{}: {} token scores for {} tokens", f.path(), v.scores.size(), n);
  }
  if (v.model == Vocab::Model::BPE) {
    v.merges = f.get_string_array("tokenizer.ggml.merges");
    v.pre = f.opt_string("tokenizer.ggml.pre").value_or("default");
    const auto& known = known_pretokenizers();
    if (std::find(known.begin(), known.end(), v.pre) == known.end()) {
      std::string list;
      for (const auto& k : known) list += (list.empty() ? "" : ", ") + k;
      fail("{}: unsupported pre-tokenizer '{}' (supported: {})", f.path(), v.pre, list);
    }
  } else {
    DUO_CHECK(!v.scores.empty(), "{}: a SentencePiece vocabulary needs tokenizer.ggml.scores", f.path());
    // The tokenizer decodes a BYTE token from its text: it must spell the byte as <0xHH>.
    for (size_t i = 0; i < n; ++i)
      if (v.types[i] == TokenType::Byte && !is_byte_token_text(v.tokens[i]))
        fail("{}: token {} is of type BYTE but its text {} is not of the form <0xHH>", f.path(), i,
             quoted(v.tokens[i]));
  }
  auto id = [&](const char* key) -> int32_t {
    auto x = f.opt_int(key);
    if (!x) return -1;
    DUO_CHECK(*x >= 0 && (size_t)*x < n, "{}: {} = {} is outside the vocabulary", f.path(), key, *x);
    return (int32_t)*x;
  };
  v.bos = id("tokenizer.ggml.bos_token_id");
  v.eos = id("tokenizer.ggml.eos_token_id");
  v.unk = id("tokenizer.ggml.unknown_token_id");
  v.pad = id("tokenizer.ggml.padding_token_id");
  v.eot = id("tokenizer.ggml.eot_token_id");
  v.add_bos = f.opt_bool("tokenizer.ggml.add_bos_token").value_or(v.model == Vocab::Model::SPM);
  v.add_eos = f.opt_bool("tokenizer.ggml.add_eos_token").value_or(false);
  v.add_space_prefix = f.opt_bool("tokenizer.ggml.add_space_prefix").value_or(v.model == Vocab::Model::SPM);
  return v;
}

}  // namespace duo
