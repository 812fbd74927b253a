// Tokenizers read from tokenizer.json against HF tokenizers' ids (tests/fixtures/hf, from
// dev/make_hf_fixtures.py): a few hundred strings each (words, whitespace runs, numbers,
// code, emoji, CJK, combining marks, special and added tokens in text), BOS from the
// post-processor or tokenizer_config.json, end tokens from generation_config.json, and the
// errors for tokenizers duo does not implement.
#include "tokenizer/hf_tokenizer.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "core/error.h"
#include "io/hf_fixture.h"

namespace duo {
namespace {

void check_cases(const std::string& key, int32_t n_vocab) {
  const auto ref = test::hf_reference(key);
  auto tok = tokenizer_from_hf(test::hf_dir(key), n_vocab);
  EXPECT_EQ(tok->n_vocab(), n_vocab);
  size_t n = 0, total_ids = 0;
  for (const auto& c : ref["tokenizer_cases"]) {
    const std::string text = c["text"].get<std::string>();
    const auto want = c["ids"].get<std::vector<int32_t>>();
    // HF matches added tokens (special or not) in text: parse_special on.
    EXPECT_EQ(tok->encode(text, false, true), want) << key << ": '" << text << "'";
    EXPECT_EQ(tok->decode(want), text) << key;  // byte-level: decoding gives the text back
    ++n, total_ids += want.size();
  }
  EXPECT_GE(n, 300u);
  for (const auto& c : ref["tokenizer_cases_with_bos"]) {
    const std::string text = c["text"].get<std::string>();
    EXPECT_EQ(tok->encode(text, tok->vocab().add_bos, true), c["ids"].get<std::vector<int32_t>>()) << key << ": " << text;
  }
  std::printf("  %s: %zu strings, %zu ids, all equal\n", key.c_str(), n, total_ids);
}

TEST(HfTokenizer, LlamaStyleSplitRegexMatchesHf) { check_cases("tiny-llama", 384); }
TEST(HfTokenizer, SmolLMStyleDigitsByteLevelMatchesHf) { check_cases("tiny-qwen2", 336); }

TEST(HfTokenizer, SpecialTokensAndPadding) {
  auto l = tokenizer_from_hf(test::hf_dir("tiny-llama"), 384);
  EXPECT_TRUE(l->vocab().add_bos);  // from the post-processor's template
  EXPECT_EQ(l->vocab().bos, 0);
  EXPECT_TRUE(l->is_eog(1));  // eos_token and generation_config's list
  EXPECT_TRUE(l->is_eog(2));
  EXPECT_FALSE(l->is_eog(0));
  EXPECT_EQ(l->vocab().types[383], TokenType::UserDefined);  // "<tool>", special: false
  EXPECT_EQ(l->vocab().types[2], TokenType::Control);
  auto q = tokenizer_from_hf(test::hf_dir("tiny-qwen2"), 336);
  EXPECT_FALSE(q->vocab().add_bos);  // tokenizer_config.json: add_bos_token false
  EXPECT_TRUE(q->is_eog(0));
  EXPECT_TRUE(q->is_eog(2));
  // Rows beyond the tokenizer's 317 tokens are unused padding tokens.
  EXPECT_EQ(q->vocab().types[317], TokenType::Unused);
  EXPECT_EQ(q->vocab().tokens[335], "[PAD335]");
  // The model must have a row for every token.
  EXPECT_THROW(tokenizer_from_hf(test::hf_dir("tiny-qwen2"), 300), Error);
}

std::string error_with(const std::string& key, const std::function<void(nlohmann::json&)>& edit) {
  test::ScratchDir d(key);
  auto tj = test::read_json(d.file("tokenizer.json"));
  edit(tj);
  test::write_json(d.file("tokenizer.json"), tj);
  try {
    load_hf_vocab(d.str(), 0);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

#define EXPECT_CONTAINS(s, text) \
  do { const std::string s_ = (s); EXPECT_NE(s_.find(text), std::string::npos) << s_; } while (0)

TEST(HfTokenizer, UnsupportedTokenizersAreNamed) {
  EXPECT_CONTAINS(error_with("tiny-llama", [](auto& j) { j["model"]["type"] = "WordPiece"; }),
                  "tokenizer model 'WordPiece' is not supported");
  EXPECT_CONTAINS(error_with("tiny-llama", [](auto& j) { j["model"]["type"] = "WordPiece"; }), "'WordPiece'");
  EXPECT_CONTAINS(error_with("tiny-llama", [](auto& j) { j["model"]["byte_fallback"] = true; }), "byte_fallback");
  EXPECT_CONTAINS(error_with("tiny-llama",
                             [](auto& j) {
                               j["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "\xE2\x96\x81"}};
                             }),
                  "pre-tokenizer 'Metaspace' is not supported");
  EXPECT_CONTAINS(error_with("tiny-llama", [](auto& j) { j["normalizer"] = {{"type", "NFKC"}}; }),
                  "normalizer 'NFKC' is not supported");
  EXPECT_CONTAINS(error_with("tiny-llama", [](auto& j) { j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Removed"; }),
                  "behavior 'Removed'");
  EXPECT_CONTAINS(error_with("tiny-qwen2", [](auto& j) { j["added_tokens"][0]["lstrip"] = true; }),
                  "'<|endoftext|>' uses lstrip");
  EXPECT_CONTAINS(error_with("tiny-qwen2", [](auto& j) { j["pre_tokenizer"] = {{"type", "Digits"}}; }),
                  "no ByteLevel step");
  {
    test::ScratchDir d("tiny-qwen2");
    std::filesystem::remove(d.file("tokenizer.json"));
    try {
      load_hf_vocab(d.str(), 0);
      FAIL();
    } catch (const Error& e) {
      EXPECT_CONTAINS(std::string(e.what()), "tokenizer.json' is missing");
    }
  }
}

// A Split with a literal String pattern is the regex of that string, special characters quoted.
TEST(HfTokenizer, SplitStringPatternIsLiteral) {
  test::ScratchDir d("tiny-qwen2");
  auto tj = test::read_json(d.file("tokenizer.json"));
  tj["pre_tokenizer"]["pretokenizers"][0] = {
      {"type", "Split"}, {"pattern", {{"String", "a.b"}}}, {"behavior", "Isolated"}, {"invert", false}};
  test::write_json(d.file("tokenizer.json"), tj);
  Vocab v = load_hf_vocab(d.str(), 0);
  ASSERT_FALSE(v.pre_regexes.empty());
  EXPECT_EQ(v.pre_regexes[0], "a\\.b");
}

}  // namespace
}  // namespace duo
