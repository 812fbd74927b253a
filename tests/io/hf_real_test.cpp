// A real model in both forms: SmolLM2-135M-Instruct's GGUF and the HF directory transformers
// makes of it (dev/hf_from_gguf.py; float32 weights dequantized from the GGUF's Q4_1, Q/K rows
// back in HF's order). duo must give the same greedy tokens from both, and the directory's real
// tokenizer.json (49152 tokens) the ids of HF tokenizers (fixture from make_hf_fixtures.py).
// Skipped when the directory has not been made.
#include <gtest/gtest.h>

#include <filesystem>

#include "duo/engine.h"
#include "io/hf_fixture.h"
#include "duo/sampler.h"
#include "tokenizer/hf_tokenizer.h"

namespace duo {
namespace {

const char* kSmolHf = "SmolLM2-135M-Instruct-hf";

#define REQUIRE_HF_DIR(var)                                                                   \
  const std::string var = test::models_dir() + "/" + kSmolHf;                                 \
  if (!std::filesystem::is_directory(var)) GTEST_SKIP() << "not made (dev/hf_from_gguf.py): " << var;

TEST(HfReal, SmolLM2TokenizerJsonMatchesHf) {
  REQUIRE_HF_DIR(dir);
  const auto ref = test::read_json(test::fixture_path(std::string("hf/") + kSmolHf + ".tokenizer.json"));
  auto tok = tokenizer_from_hf(dir, 0);
  size_t n = 0;
  for (const auto& c : ref["tokenizer_cases"]) {
    const std::string text = c["text"].get<std::string>();
    EXPECT_EQ(tok->encode(text, false, true), c["ids"].get<std::vector<int32_t>>()) << text;
    ++n;
  }
  EXPECT_GE(n, 400u);
}

std::vector<int32_t> greedy(const std::string& model, const std::string& prompt, int n) {
  EngineOptions o;
  o.model_path = model;
  o.threads = 2;
  Engine e(o);
  auto s = e.new_session();
  Sampler sampler(SamplerConfig{});
  std::vector<int32_t> out;
  s->generate(e.tokenizer().encode(prompt, e.tokenizer().vocab().add_bos, false), n, sampler,
              [&](int32_t t, const std::string&) {
                out.push_back(t);
                return true;
              });
  return out;
}

// Prompts without digits: transformers' GGUF tokenizer conversion writes a plain ByteLevel
// pre-tokenizer, without SmolLM's split of every digit, so only there the two tokenizers differ.
TEST(HfReal, SmolLM2DirectoryGreedyEqualsGguf) {
  REQUIRE_HF_DIR(dir);
  DUO_REQUIRE_MODEL(gguf, test::kSmolLM2);
  for (const char* prompt : {"The capital of France is", "def fibonacci(n):\n"}) {
    const auto a = greedy(gguf, prompt, 24), b = greedy(dir, prompt, 24);
    EXPECT_FALSE(a.empty());
    EXPECT_EQ(a, b) << prompt;
  }
}

}  // namespace
}  // namespace duo
