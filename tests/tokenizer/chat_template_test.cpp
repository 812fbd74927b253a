// Chat templates: our native renderers against transformers' Jinja rendering of the templates
// in the GGUFs (tests/fixtures/tokenizer/*.json "chats"), family detection, the default system
// prompt parsed out of the template text, and errors.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/gguf.h"
#include "test_support.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/gguf_builder.h"

namespace duo {
namespace {

void check_renderings(const std::string& model_file, const std::string& fixture, const std::string& system) {
  DUO_REQUIRE_MODEL(path, model_file);
  auto g = GgufFile::open(path);
  const ChatTemplate t = ChatTemplate::from_gguf(*g);
  EXPECT_EQ(t.kind, ChatTemplate::Kind::ChatML);
  EXPECT_EQ(t.default_system, system);
  std::ifstream f(test::fixture_path("tokenizer/" + fixture + ".json"));
  ASSERT_TRUE(f.good());
  const auto j = nlohmann::json::parse(f);
  int n = 0;
  for (const auto& c : j["chats"]) {
    std::vector<ChatMessage> msgs;
    for (const auto& m : c["messages"]) msgs.push_back({m["role"], m["content"]});
    EXPECT_EQ(apply_chat_template(t, msgs, c["add_generation_prompt"]), c["text"].get<std::string>())
        << "chat " << n << " add_generation_prompt=" << c["add_generation_prompt"];
    ++n;
  }
  EXPECT_GE(n, 16);
}

TEST(ChatTemplate, SmolLM2MatchesJinja) {
  check_renderings(test::kSmolLM2, "smollm2", "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
}

TEST(ChatTemplate, QwenMatchesJinja) {
  check_renderings(test::kQwenCoder, "qwen2.5-coder-1.5b",
                   "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.");
}

TEST(ChatTemplate, RecognisesFamiliesAndDefaultSystemPrompt) {
  // The default system prompt is the literal between "<|im_start|>system\n" and "<|im_end|>",
  // whether the template writes the newline as an escape or as a real newline.
  const ChatTemplate q = ChatTemplate::from_jinja(
      "{{- '<|im_start|>system\\n' }}{{- messages[0]['content'] }} ... {{- '<|im_start|>system\\nYou are Qwen, "
      "created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}");
  EXPECT_EQ(q.kind, ChatTemplate::Kind::ChatML);
  EXPECT_EQ(q.default_system, "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.");
  EXPECT_EQ(apply_chat_template(q, {{"user", "hi"}}, true),
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
            "assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
  const ChatTemplate s = ChatTemplate::from_jinja(
      "{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nBe brief.<|im_end|>\n' }}");
  EXPECT_EQ(s.default_system, "Be brief.");
  // A ChatML template without a default system prompt injects none.
  const ChatTemplate plain = ChatTemplate::from_jinja(
      "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
      "'<|im_end|>' + '\\n'}}{% endfor %}");
  EXPECT_EQ(plain.default_system, "");
  EXPECT_EQ(apply_chat_template(plain, {{"user", "hi"}}, false), "<|im_start|>user\nhi<|im_end|>\n");
  // No messages: only the generation prompt, as SmolLM2's Jinja template renders it.
  EXPECT_EQ(apply_chat_template(s, {}, true), "<|im_start|>assistant\n");
  // A system message replaces the default.
  EXPECT_EQ(apply_chat_template(q, {{"system", "S"}, {"user", "U"}}, false),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n");

  const ChatTemplate l3 = ChatTemplate::from_jinja("{{ '<|start_header_id|>' + role }}");
  EXPECT_EQ(l3.kind, ChatTemplate::Kind::Llama3);
  EXPECT_EQ(apply_chat_template(l3, {{"user", "hi"}}, true),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|><|start_header_id|>assistant"
            "<|end_header_id|>\n\n");
  const ChatTemplate l2 = ChatTemplate::from_jinja("{{ bos_token + '[INST] ' + content + ' [/INST]' }}");
  EXPECT_EQ(l2.kind, ChatTemplate::Kind::Llama2);
  EXPECT_EQ(apply_chat_template(l2, {{"system", "S"}, {"user", "U"}, {"assistant", "A"}, {"user", "V"}}, true),
            "<s>[INST] <<SYS>>\nS\n<</SYS>>\n\nU [/INST] A</s><s>[INST] V [/INST]");
}

TEST(ChatTemplate, Errors) {
  try {
    ChatTemplate::from_jinja("{{ message.content }}<start_of_turn>");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("unsupported chat template"), std::string::npos) << m;
    EXPECT_NE(m.find("ChatML"), std::string::npos) << m;
  }
  const ChatTemplate q = ChatTemplate::from_jinja("<|im_start|>");
  EXPECT_THROW(apply_chat_template(q, {{"robot", "x"}}, false), Error);
}

TEST(ChatTemplate, PlainChatMLWhenTheGgufHasNoTemplate) {
  test::GgufBuilder b;
  b.str("general.architecture", "llama");
  const auto bytes = b.bytes();
  auto g = GgufFile::from_memory(bytes.data(), bytes.size());
  const ChatTemplate t = ChatTemplate::from_gguf(*g);
  EXPECT_EQ(t.kind, ChatTemplate::Kind::ChatML);
  EXPECT_EQ(t.default_system, "");
  EXPECT_EQ(apply_chat_template(t, {{"user", "hi"}}, true), "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
}

}  // namespace
}  // namespace duo
