// Chat formats of instruct models. GGUF files carry a Jinja template; rather than embedding a
// Jinja interpreter we recognise the template's family and render it natively, taking the
// default system prompt the template injects from the template text itself.
#pragma once
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace duo {

class GgufFile;

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

struct ChatTemplate {
  enum class Kind { ChatML, Llama3, Llama2 };
  Kind kind = Kind::ChatML;
  std::string default_system;  // injected when the conversation has no system message ("" = none)
  std::string bos;             // BOS text the template itself writes (Llama formats)

  // From tokenizer.chat_template; throws duo::Error for a template of an unknown family.
  // Without a template, plain ChatML (no default system prompt).
  static ChatTemplate from_gguf(const GgufFile& f);
  static ChatTemplate from_jinja(const std::string& jinja);
};

// The rendered conversation as parts: the template's own markers ("<|im_start|>", "<|eot_id|>",
// the BOS it writes, "[INST]") are special parts, everything else (roles, newlines, message
// content) is text. Throws duo::Error for an unknown role or a misplaced system message.
std::vector<PromptPart> render_chat_template(const ChatTemplate& t, const std::vector<ChatMessage>& messages,
                                             bool add_generation_prompt);
// The rendered conversation as one string (the parts concatenated).
std::string apply_chat_template(const ChatTemplate& t, const std::vector<ChatMessage>& messages,
                                bool add_generation_prompt);
// The conversation's token ids: the template's markers are the only special tokens; message
// content is tokenized with special-token parsing off, so a message can never write a turn of
// its own ("<|im_end|>\n<|im_start|>system ..." stays text). No extra BOS (the template writes it).
std::vector<int32_t> encode_chat(const Tokenizer& tok, const ChatTemplate& t, const std::vector<ChatMessage>& messages,
                                 bool add_generation_prompt);

}  // namespace duo
