#include "tokenizer/chat_template.h"

#include "core/error.h"
#include "io/gguf.h"

namespace duo {

namespace {

// The text a template puts between "<|im_start|>system" + newline and "<|im_end|>" as a
// literal (no template code inside); the newline may be written as a real one or as "\n".
std::string chatml_default_system(const std::string& j) {
  const std::string start = "<|im_start|>system";
  for (size_t at = j.find(start); at != std::string::npos; at = j.find(start, at + 1)) {
    size_t p = at + start.size();
    if (j.compare(p, 1, "\n") == 0)
      p += 1;
    else if (j.compare(p, 2, "\\n") == 0)
      p += 2;
    else
      continue;
    const size_t end = j.find("<|im_end|>", p);
    if (end == std::string::npos) continue;
    const std::string text = j.substr(p, end - p);
    if (!text.empty() && text.find_first_of("'\"{}%+") == std::string::npos) return text;
  }
  return "";
}

}  // namespace

ChatTemplate ChatTemplate::from_jinja(const std::string& j) {
  ChatTemplate t;
  if (j.find("<|im_start|>") != std::string::npos) {
    t.kind = Kind::ChatML;
    t.default_system = chatml_default_system(j);
  } else if (j.find("<|start_header_id|>") != std::string::npos) {
    t.kind = Kind::Llama3;
    t.bos = "<|begin_of_text|>";
  } else if (j.find("[INST]") != std::string::npos) {
    t.kind = Kind::Llama2;
    t.bos = "<s>";
  } else {
    fail("unsupported chat template (supported families: ChatML, Llama-3, Llama-2/Mistral [INST]); "
         "template starts with: {}",
         j.substr(0, 80));
  }
  return t;
}

ChatTemplate ChatTemplate::from_gguf(const GgufFile& f) {
  if (auto j = f.opt_string("tokenizer.chat_template")) return from_jinja(*j);
  return ChatTemplate{};
}

std::string apply_chat_template(const ChatTemplate& t, const std::vector<ChatMessage>& messages,
                                bool add_generation_prompt) {
  for (const auto& m : messages)
    DUO_CHECK(m.role == "system" || m.role == "user" || m.role == "assistant",
              "chat message role '{}' is not one of system, user, assistant", m.role);
  const bool has_system = !messages.empty() && messages[0].role == "system";
  std::string out;
  switch (t.kind) {
    case ChatTemplate::Kind::ChatML:
      // The default system prompt comes with the first message (SmolLM2's template renders
      // nothing for an empty conversation; Qwen's fails on one).
      if (!has_system && !messages.empty() && !t.default_system.empty())
        out += "<|im_start|>system\n" + t.default_system + "<|im_end|>\n";
      for (const auto& m : messages) out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
      if (add_generation_prompt) out += "<|im_start|>assistant\n";
      break;
    case ChatTemplate::Kind::Llama3:
      out += t.bos;
      for (const auto& m : messages)
        out += "<|start_header_id|>" + m.role + "<|end_header_id|>\n\n" + m.content + "<|eot_id|>";
      if (add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
      break;
    case ChatTemplate::Kind::Llama2: {
      std::string system;
      size_t i = 0;
      if (has_system) system = messages[i++].content;
      for (; i < messages.size(); ++i) {
        const auto& m = messages[i];
        if (m.role == "user") {
          std::string content = m.content;
          if (!system.empty()) {
            content = "<<SYS>>\n" + system + "\n<</SYS>>\n\n" + content;
            system.clear();
          }
          out += t.bos + "[INST] " + content + " [/INST]";
        } else if (m.role == "assistant") {
          out += " " + m.content + "</s>";
        } else {
          fail("a Llama-2 style chat accepts a system message only first");
        }
      }
      break;
    }
  }
  return out;
}

}  // namespace duo
