#include "tokenizer/vocab.h"

#include <algorithm>

#include "core/error.h"
#include "io/gguf.h"

namespace duo {

const std::vector<std::string>& known_pretokenizers() {
  static const std::vector<std::string> k = {"default", "gpt2", "llama-bpe", "llama3", "qwen2", "smollm"};
  return k;
}

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
    for (int64_t t : f.get_int_array("tokenizer.ggml.token_type")) v.types.push_back((TokenType)t);
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
