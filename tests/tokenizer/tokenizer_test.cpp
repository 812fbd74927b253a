// Our tokenizers and chat templates against HF tokenizers/transformers on the same GGUF
// vocabularies (scripts/make_tokenizer_fixtures.py), plus round trips and edge cases.
#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>

#include "eval/haystack.h"
#include "io/gguf.h"
#include "test_support.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace duo {
namespace {

nlohmann::json load_fixture(const std::string& name) {
  std::ifstream f(test::fixture_path("tokenizer/" + name + ".json"));
  EXPECT_TRUE(f.good());
  return nlohmann::json::parse(f);
}

void check_model(const std::string& file, const std::string& fixture) {
  const std::string path = test::models_dir() + "/" + file;
  auto g = GgufFile::open(path);
  auto tok = Tokenizer::from_gguf(*g);
  const auto j = load_fixture(fixture);
  int checked = 0;
  for (const auto& c : j["cases"]) {
    const std::string text = c["text"];
    const auto expect = c["ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(tok->encode(text, false, true), expect) << "text: " << text;
    const auto expect_plain = c.contains("ids_no_special") ? c["ids_no_special"].get<std::vector<int32_t>>() : expect;
    EXPECT_EQ(tok->encode(text, false, false), expect_plain) << "(no special) text: " << text;
    EXPECT_EQ(tok->decode(expect), text) << "round trip of: " << text;
    ++checked;
  }
  EXPECT_GT(checked, 250);
  const ChatTemplate tmpl = ChatTemplate::from_gguf(*g);
  for (const auto& c : j["chats"]) {
    std::vector<ChatMessage> msgs;
    for (const auto& m : c["messages"]) msgs.push_back({m["role"], m["content"]});
    EXPECT_EQ(apply_chat_template(tmpl, msgs, c["add_generation_prompt"]), c["text"].get<std::string>());
  }
}

TEST(Tokenizer, SmolLM2MatchesHuggingFace) {
  DUO_REQUIRE_MODEL(path, test::kSmolLM2);
  check_model(test::kSmolLM2, "smollm2");
}

TEST(Tokenizer, QwenMatchesHuggingFace) {
  DUO_REQUIRE_MODEL(path, test::kQwenCoder);
  check_model(test::kQwenCoder, "qwen2.5-coder-1.5b");
}

TEST(Tokenizer, SpecialTokensAndEndOfGeneration) {
  DUO_REQUIRE_MODEL(path, test::kSmolLM2);
  auto g = GgufFile::open(path);
  auto tok = Tokenizer::from_gguf(*g);
  EXPECT_EQ(tok->n_vocab(), 49152);
  EXPECT_EQ(tok->token_id("<|im_end|>"), 2);
  EXPECT_TRUE(tok->is_eog(2));    // <|im_end|> (also EOS here)
  EXPECT_TRUE(tok->is_eog(0));    // <|endoftext|>
  EXPECT_FALSE(tok->is_eog(1));   // <|im_start|>
  EXPECT_FALSE(tok->is_eog(100));
  EXPECT_EQ(tok->token_to_piece(1), "");  // control tokens print nothing
  EXPECT_EQ(tok->decode({1}), "<|im_start|>");
  // Invalid UTF-8 is encoded byte by byte and decodes back to the same bytes...
  const std::string bad = "ok \x80\x81 broken \xc3(";
  EXPECT_EQ(tok->decode(tok->encode(bad, false, false)), bad);
  // ...except bytes the vocabulary has no token for (0xFE/0xFF never occur in UTF-8 and this
  // vocabulary dropped them): those become the unknown token, not nothing.
  const auto ids = tok->encode("a\xff", false, false);
  ASSERT_EQ(ids.size(), 2u);
  EXPECT_EQ(ids[1], tok->vocab().unk);
  EXPECT_THROW(tok->decode({49152}), std::runtime_error);
}

TEST(Tokenizer, LongTextIsFast) {
  DUO_REQUIRE_MODEL(path, test::kQwenCoder);
  auto g = GgufFile::open(path);
  auto tok = Tokenizer::from_gguf(*g);
  std::string text;
  for (const auto& s : haystack_sentences(2000, 3)) text += s + " ";
  text += std::string(20000, 'x');  // one 20K-character "word"
  ASSERT_GT(text.size(), 200000u);
  const auto t0 = std::chrono::steady_clock::now();
  const auto ids = tok->encode(text, false, false);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(s, 2.0) << "tokenizing " << text.size() << " bytes took " << s << " s";
  EXPECT_EQ(tok->decode(ids), text);
}

// SentencePiece on a hand-built vocabulary: merges by score, byte fallback, space prefix.
TEST(Tokenizer, SentencePieceByScoreWithByteFallback) {
  Vocab v;
  v.model = Vocab::Model::SPM;
  v.add_space_prefix = true;
  auto add = [&](const std::string& t, float score, TokenType type = TokenType::Normal) {
    v.tokens.push_back(t);
    v.scores.push_back(score);
    v.types.push_back(type);
    return (int32_t)v.tokens.size() - 1;
  };
  const std::string sp = "\xE2\x96\x81";  // U+2581
  add("<unk>", 0, TokenType::Unknown);
  v.unk = 0;
  add("<s>", 0, TokenType::Control);
  v.bos = 1;
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "<0x%02X>", b);
    add(buf, 0, TokenType::Byte);
  }
  const int32_t sp_id = add(sp, -1);
  const int32_t h = add("h", -2), e = add("e", -2), l = add("l", -2), o = add("o", -2);
  const int32_t he = add("he", -1.5f), ll = add("ll", -1.0f), llo = add("llo", -0.5f);
  const int32_t sp_he = add(sp + "he", -3.0f);  // lower score than "he": "he" merges first
  (void)h, (void)e, (void)l, (void)o, (void)sp_he;
  Tokenizer tok(v);
  // "▁hello": ll (-1.0) merges before he (-1.5), then llo (-0.5), then ▁he (-3.0) joins ▁+he.
  EXPECT_EQ(tok.encode("hello", true, false), (std::vector<int32_t>{1, sp_he, llo}));
  // 'x' is not in the vocabulary: byte fallback <0x78>; space -> ▁.
  EXPECT_EQ(tok.encode("he x", false, false), (std::vector<int32_t>{sp_he, sp_id, 2 + 0x78}));
  EXPECT_EQ(tok.decode(tok.encode("he x", false, false)), "he x");
  (void)he, (void)ll;
}

TEST(ChatTemplate, RecognisesFamiliesAndDefaultSystemPrompt) {
  const ChatTemplate q = ChatTemplate::from_jinja(
      "{{- '<|im_start|>system\\n' }}{{- messages[0]['content'] }} ... {{- '<|im_start|>system\\nYou are Qwen, "
      "created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}");
  EXPECT_EQ(q.kind, ChatTemplate::Kind::ChatML);
  EXPECT_EQ(q.default_system, "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.");
  EXPECT_EQ(apply_chat_template(q, {{"user", "hi"}}, true),
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
            "assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
  const ChatTemplate l3 = ChatTemplate::from_jinja("{{ '<|start_header_id|>' + role }}");
  EXPECT_EQ(apply_chat_template(l3, {{"user", "hi"}}, true),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|><|start_header_id|>assistant"
            "<|end_header_id|>\n\n");
  EXPECT_THROW(ChatTemplate::from_jinja("{{ message.content }}"), std::runtime_error);
  EXPECT_THROW(apply_chat_template(q, {{"robot", "x"}}, false), std::runtime_error);
}

}  // namespace
}  // namespace duo
