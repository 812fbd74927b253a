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

std::vector<PromptPart> render_chat_template(const ChatTemplate& t, const std::vector<ChatMessage>& messages,
                                             bool add_generation_prompt) {
  for (const auto& m : messages)
    DUO_CHECK(m.role == "system" || m.role == "user" || m.role == "assistant",
              "chat message role '{}' is not one of system, user, assistant", m.role);
  const bool has_system = !messages.empty() && messages[0].role == "system";
  std::vector<PromptPart> out;
  auto mark = [&](const std::string& s) {
    if (!s.empty()) out.push_back({s, true});
  };
  auto text = [&](const std::string& s) {
    if (!s.empty()) out.push_back({s, false});
  };
  switch (t.kind) {
    case ChatTemplate::Kind::ChatML: {
      auto turn = [&](const std::string& role, const std::string& content) {
        mark("<|im_start|>");
        text(role + "\n");
        text(content);
        mark("<|im_end|>");
        text("\n");
      };
      // The default system prompt comes with the first message (SmolLM2's template renders
      // nothing for an empty conversation; Qwen's fails on one).
      if (!has_system && !messages.empty() && !t.default_system.empty()) turn("system", t.default_system);
      for (const auto& m : messages) turn(m.role, m.content);
      if (add_generation_prompt) {
        mark("<|im_start|>");
        text("assistant\n");
      }
      break;
    }
    case ChatTemplate::Kind::Llama3: {
      auto header = [&](const std::string& role) {
        mark("<|start_header_id|>");
        text(role);
        mark("<|end_header_id|>");
        text("\n\n");
      };
      mark(t.bos);
      for (const auto& m : messages) {
        header(m.role);
        text(m.content);
        mark("<|eot_id|>");
      }
      if (add_generation_prompt) header("assistant");
      break;
    }
    case ChatTemplate::Kind::Llama2: {
      // "[INST]" and "[/INST]" are control tokens in some vocabularies (Mistral's), text in others.
      std::string system;
      size_t i = 0;
      if (has_system) system = messages[i++].content;
      for (; i < messages.size(); ++i) {
        const auto& m = messages[i];
        if (m.role == "user") {
          mark(t.bos);
          mark("[INST]");
          text(" ");
          if (!system.empty()) {
            text("<<SYS>>\n");
            text(system);
            text("\n<</SYS>>\n\n");
            system.clear();
          }
          text(m.content);
          text(" ");
          mark("[/INST]");
        } else if (m.role == "assistant") {
          text(" ");
          text(m.content);
          mark("</s>");
        } else {
          fail("a Llama-2 style chat accepts a system message only first");
        }
      }
      break;
    }
  }
  return out;
}

std::string apply_chat_template(const ChatTemplate& t, const std::vector<ChatMessage>& messages,
                                bool add_generation_prompt) {
  std::string out;
  for (const auto& p : render_chat_template(t, messages, add_generation_prompt)) out += p.text;
  return out;
}

std::vector<int32_t> encode_chat(const Tokenizer& tok, const ChatTemplate& t, const std::vector<ChatMessage>& messages,
                                 bool add_generation_prompt) {
  return tok.encode_parts(render_chat_template(t, messages, add_generation_prompt), false);
}

}  // namespace duo
