#include "tokenizer/model_tokenizer.h"

#include "core/error.h"
#include "io/gguf.h"
#include "io/hf_checkpoint.h"
#include "model/config.h"
#include "tokenizer/hf_tokenizer.h"

namespace duo {

std::unique_ptr<Tokenizer> tokenizer_for(const GgufFile* gguf, const HfCheckpoint* hf, int32_t n_vocab) {
  DUO_CHECK(gguf || hf, "this model has no tokenizer (synthetic weights: no GGUF file, no Hugging Face directory)");
  return hf ? tokenizer_from_hf(hf->dir(), n_vocab) : Tokenizer::from_gguf(*gguf);
}

std::unique_ptr<Tokenizer> load_model_tokenizer(const std::string& path) {
  if (is_directory(path)) {
    const auto ck = HfCheckpoint::open(path);
    std::vector<float> rope_factors;  // (unused: the config is read for its vocabulary size)
    return tokenizer_for(nullptr, ck.get(), ModelConfig::from_hf(*ck, rope_factors).n_vocab);
  }
  const auto f = GgufFile::open(path);
  return tokenizer_for(f.get(), nullptr, 0);
}

}  // namespace duo
