// Chat formats of instruct models: the model's own Jinja chat template (GGUF
// tokenizer.chat_template; in a Hugging Face directory chat_template.jinja or
// tokenizer_config.json's chat_template), or a file given with --chat-template, rendered by
// duo's Jinja implementation (tokenizer/jinja/: the subset real chat templates use, checked
// byte for byte against Python jinja2 with transformers' settings).
//
// Rendering keeps track of which bytes the template itself wrote (its literals, and the
// model's BOS/EOS strings passed to it) and which came from the conversation. Only the former
// are searched for the vocabulary's special tokens, so a message can never write a turn of its
// own: "<|im_end|>" typed by a user stays text.
#pragma once
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "io/hf_checkpoint.h"
#include "tokenizer/tokenizer.h"

namespace duo {

class GgufFile;
namespace jinja {
class Template;
}

struct ChatMessage {
  std::string role;  // "system", "user", "assistant" or "tool"
  std::string content;
  // Tool use, laid out as transformers passes it to templates: an assistant's calls
  // [{"type": "function", "function": {"name", "arguments": object}}] (null: none), and a tool
  // result's call id. An assistant turn of calls only has content "" (not None, which
  // templates such as Qwen3's cannot take).
  nlohmann::ordered_json tool_calls = nullptr;
  std::string tool_call_id = {};
};

// What a template sees of the vocabulary: the BOS/EOS texts (bos_token, eos_token) and the
// special tokens (control and user-defined) its text may write.
struct ChatTokens {
  std::string bos, eos;
  std::vector<std::string> specials;
  static ChatTokens from_tokenizer(const Tokenizer& tok);
};

struct ChatTemplate {
  std::string source;                // the Jinja text
  std::string origin;                // where it came from (for messages)
  std::string bos_token, eos_token;
  std::vector<std::string> markers;  // specials that occur in the source (or are BOS/EOS), longest first
  std::shared_ptr<const jinja::Template> program;
  // Work bounds of one rendering (a template is untrusted input): evaluation steps and string
  // bytes, both raised in proportion to the conversation's size.
  uint64_t max_steps = 50'000'000;
  size_t max_bytes = 256u << 20;

  // Parses `source` (throws duo::Error naming `origin` for syntax duo does not support).
  static ChatTemplate from_jinja(const std::string& source, const ChatTokens& tokens,
                                 const std::string& origin = "chat template");
  // The model's template: `override_file` when not empty; else the GGUF's
  // tokenizer.chat_template, or the HF directory's chat_template.jinja / chat_template.json /
  // tokenizer_config.json "chat_template"; else plain ChatML (kChatMLTemplate), as before.
  // Pass the GGUF (or nullptr) and the HF directory (or "") the model was loaded from.
  static ChatTemplate for_model(const GgufFile* gguf, const std::string& hf_dir, const Tokenizer& tok,
                                const std::string& override_file = "");
  // for_model of a GGUF file with its own vocabulary (tests, fuzzing).
  static ChatTemplate from_gguf(const GgufFile& f);
};

// ChatTemplate::for_model for a loaded model (a duo::Model: GGUF or Hugging Face directory).
template <typename ModelT>
ChatTemplate chat_template_of(const ModelT& m, const Tokenizer& tok, const std::string& override_file = "") {
  return ChatTemplate::for_model(m.has_gguf() ? &m.gguf() : nullptr, m.hf() ? m.hf()->dir() : std::string(), tok,
                                 override_file);
}

// The template used when a model has none: ChatML without a default system prompt.
extern const char* const kChatMLTemplate;

// The rendered conversation as parts: the special tokens the template's own text wrote are
// special parts, everything else (message content included) is text. `tools` (a JSON array,
// or null for none) is passed to the template as `tools`. Throws duo::Error for an unknown
// role and whatever the template raises (raise_exception) or does wrong.
std::vector<PromptPart> render_chat_template(const ChatTemplate& t, const std::vector<ChatMessage>& messages,
                                             bool add_generation_prompt,
                                             const nlohmann::ordered_json& tools = nlohmann::ordered_json());
// The rendered conversation as one string (the parts concatenated).
std::string apply_chat_template(const ChatTemplate& t, const std::vector<ChatMessage>& messages,
                                bool add_generation_prompt, const nlohmann::ordered_json& tools = nlohmann::ordered_json());
// The conversation's token ids: the template's markers are the only special tokens; message
// content is tokenized with special-token parsing off, so a message can never write a turn of
// its own ("<|im_end|>\n<|im_start|>system ..." stays text). No extra BOS (the template writes it).
std::vector<int32_t> encode_chat(const Tokenizer& tok, const ChatTemplate& t, const std::vector<ChatMessage>& messages,
                                 bool add_generation_prompt, const nlohmann::ordered_json& tools = nlohmann::ordered_json());

}  // namespace duo
