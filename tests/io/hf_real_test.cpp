// Real models in both forms: a GGUF and the HF directory transformers makes of it
// (dev/hf_from_gguf.py; float32 weights dequantized from the GGUF's quantized ones, the tokenizer
// rebuilt as tokenizer.json):
//   SmolLM2-135M-Instruct (Q4_1; llama: Q/K rows back in HF's order; tied embeddings; 49152 tokens)
//   Qwen2.5-Coder-1.5B-Instruct (Q4_K_M: Q4_K and Q6_K; qwen2: QKV biases; the GGUF's own
//     output.weight beside token_embd, so untied; 151936 tokens; the GGUF's chat template)
// duo must give the same greedy tokens from both forms, the directory's chat template the same
// prompt ids as the GGUF's, and the directory's real tokenizer.json the ids of HF tokenizers
// (fixtures from dev/make_hf_fixtures.py --real). Each model is skipped when its directory
// has not been made (docs/testing.md says how).
#include <gtest/gtest.h>

#include <filesystem>

#include "duo/engine.h"
#include "duo/sampler.h"
#include "io/hf_fixture.h"
#include "model/model.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/hf_tokenizer.h"

namespace duo {
namespace {

const char* kSmolHf = "SmolLM2-135M-Instruct-hf";
const char* kQwenHf = "Qwen2.5-Coder-1.5B-Instruct-hf";

#define REQUIRE_HF_DIR(var, name)                                                             \
  const std::string var = test::models_dir() + "/" + (name);                                  \
  if (!std::filesystem::is_directory(var)) GTEST_SKIP() << "not made (dev/hf_from_gguf.py): " << var;

void expect_tokenizer_matches_hf(const std::string& dir, const std::string& name) {
  const auto ref = test::read_json(test::fixture_path("hf/" + name + ".tokenizer.json"));
  auto tok = tokenizer_from_hf(dir, 0);
  size_t n = 0;
  for (const auto& c : ref["tokenizer_cases"]) {
    const std::string text = c["text"].get<std::string>();
    EXPECT_EQ(tok->encode(text, false, true), c["ids"].get<std::vector<int32_t>>()) << text;
    ++n;
  }
  EXPECT_GE(n, 400u);
}

std::unique_ptr<Engine> engine(const std::string& model) {
  EngineOptions o;
  o.model_path = model;
  o.threads = 2;
  return std::make_unique<Engine>(o);
}

std::vector<int32_t> greedy(Engine& e, const std::vector<int32_t>& prompt, int n) {
  auto s = e.new_session();
  Sampler sampler(SamplerConfig{});
  std::vector<int32_t> out;
  s->generate(prompt, n, sampler, [&](int32_t t, const std::string&) {
    out.push_back(t);
    return true;
  });
  return out;
}

std::vector<int32_t> plain_prompt(Engine& e, const std::string& text) {
  return e.tokenizer().encode(text, e.tokenizer().vocab().add_bos, false);
}

std::vector<int32_t> chat_prompt(Engine& e, const std::vector<ChatMessage>& msgs) {
  return encode_chat(e.tokenizer(), chat_template_of(e.model(), e.tokenizer()), msgs, true);
}

// Where two token sequences first differ (for the failure message).
size_t first_difference(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  size_t i = 0;
  while (i < a.size() && i < b.size() && a[i] == b[i]) ++i;
  return i;
}

// n greedy tokens of the GGUF engine g after pg and of the directory's engine h after ph, checked
// equal (what: the prompt, for the failure message); returns g's.
std::vector<int32_t> expect_same_greedy(Engine& g, const std::vector<int32_t>& pg, Engine& h,
                                        const std::vector<int32_t>& ph, int n, const std::string& what) {
  const auto a = greedy(g, pg, n), b = greedy(h, ph, n);
  EXPECT_EQ(a, b) << what << ": first difference at " << first_difference(a, b);
  return a;
}

TEST(HfReal, SmolLM2TokenizerJsonMatchesHf) {
  REQUIRE_HF_DIR(dir, kSmolHf);
  expect_tokenizer_matches_hf(dir, kSmolHf);
}

// Prompts without digits: transformers' GGUF tokenizer conversion writes a plain ByteLevel
// pre-tokenizer, without SmolLM's split of every digit, so only there the two tokenizers differ.
TEST(HfReal, SmolLM2DirectoryGreedyEqualsGguf) {
  REQUIRE_HF_DIR(dir, kSmolHf);
  DUO_REQUIRE_MODEL(gguf, test::kSmolLM2);
  auto g = engine(gguf), h = engine(dir);
  for (const char* prompt : {"The capital of France is", "def fibonacci(n):\n"})
    EXPECT_FALSE(expect_same_greedy(*g, plain_prompt(*g, prompt), *h, plain_prompt(*h, prompt), 24, prompt).empty());
}

TEST(HfReal, QwenCoderTokenizerJsonMatchesHf) {
  REQUIRE_HF_DIR(dir, kQwenHf);
  expect_tokenizer_matches_hf(dir, kQwenHf);
}

// Digits included: Qwen2's pre-tokenizer (one digit per piece) is what the converter writes.
// The chat prompt goes through each form's own template (GGUF tokenizer.chat_template, the
// directory's chat_template.jinja), Qwen's default system prompt included.
TEST(HfReal, QwenCoderDirectoryGreedyEqualsGguf) {
  REQUIRE_HF_DIR(dir, kQwenHf);
  DUO_REQUIRE_MODEL(gguf, test::kQwenCoder);
  auto g = engine(gguf), h = engine(dir);
  for (const char* prompt : {"def fibonacci(n):\n", "# Sum of the squares of 1 to 100\n"})
    EXPECT_EQ(expect_same_greedy(*g, plain_prompt(*g, prompt), *h, plain_prompt(*h, prompt), 16, prompt).size(), 16u);
  const std::vector<ChatMessage> chat = {{"user", "Write a C function that returns the larger of two ints."}};
  const auto pg = chat_prompt(*g, chat), ph = chat_prompt(*h, chat);
  ASSERT_EQ(pg, ph);
  EXPECT_EQ(expect_same_greedy(*g, pg, *h, ph, 24, "chat").size(), 24u);
}

}  // namespace
}  // namespace duo
