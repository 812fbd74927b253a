#include "tokenizer/chat_template.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "io/gguf.h"
#include "tokenizer/jinja/template.h"

namespace duo {

const char* const kChatMLTemplate =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + "
    "'\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

namespace {

std::string read_file(const std::string& path, const char* what) {
  std::ifstream f(path, std::ios::binary);
  DUO_CHECK(f.good(), "cannot read {} '{}'", what, path);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

nlohmann::json read_json(const std::string& path) {
  try {
    return nlohmann::json::parse(read_file(path, "JSON file"));
  } catch (const nlohmann::json::exception& e) {
    fail("{} is not valid JSON: {}", path, e.what());
  }
}

// tokenizer_config.json's chat_template: a string, or a list of {name, template} of which
// transformers uses "default".
std::string pick_template(const nlohmann::json& j, const std::string& file) {
  if (j.is_string()) return j.get<std::string>();
  if (j.is_array()) {
    for (const auto& e : j)
      if (e.is_object() && e.value("name", "") == "default" && e.contains("template") && e["template"].is_string())
        return e["template"].get<std::string>();
    fail("{}: chat_template lists no template named \"default\"; pick one with --chat-template FILE", file);
  }
  fail("{}: chat_template is neither a string nor a list of named templates", file);
}

// The HF directory's template (transformers' order: chat_template.jinja, chat_template.json,
// tokenizer_config.json); "" when it has none.
std::string hf_template(const std::string& dir, std::string& origin) {
  namespace fs = std::filesystem;
  if (const fs::path p = fs::path(dir) / "chat_template.jinja"; fs::exists(p)) {
    origin = p.string();
    return read_file(p.string(), "chat template");
  }
  for (const char* name : {"chat_template.json", "tokenizer_config.json"}) {
    const fs::path p = fs::path(dir) / name;
    if (!fs::exists(p)) continue;
    const auto j = read_json(p.string());
    if (j.is_object() && j.contains("chat_template") && !j["chat_template"].is_null()) {
      origin = p.string();
      return pick_template(j["chat_template"], p.string());
    }
  }
  return "";
}

}  // namespace

ChatTokens ChatTokens::from_tokenizer(const Tokenizer& tok) {
  const Vocab& v = tok.vocab();
  ChatTokens t;
  auto text = [&](int32_t id) { return id >= 0 && id < (int32_t)v.tokens.size() ? v.tokens[id] : std::string(); };
  t.bos = text(v.bos);
  t.eos = text(v.eos);
  for (size_t i = 0; i < v.tokens.size(); ++i)
    if (v.types[i] == TokenType::Control || v.types[i] == TokenType::UserDefined) t.specials.push_back(v.tokens[i]);
  return t;
}

ChatTemplate ChatTemplate::from_jinja(const std::string& source, const ChatTokens& tokens, const std::string& origin) {
  ChatTemplate t;
  t.source = source;
  t.origin = origin;
  t.bos_token = tokens.bos;
  t.eos_token = tokens.eos;
  // Only specials the template can write: those in its text and the BOS/EOS it is given.
  for (const auto& s : tokens.specials)
    if (!s.empty() && (s == t.bos_token || s == t.eos_token || source.find(s) != std::string::npos))
      t.markers.push_back(s);
  std::sort(t.markers.begin(), t.markers.end(),
            [](const std::string& a, const std::string& b) { return a.size() != b.size() ? a.size() > b.size() : a < b; });
  t.markers.erase(std::unique(t.markers.begin(), t.markers.end()), t.markers.end());
  try {
    t.program = std::make_shared<const jinja::Template>(source);
  } catch (const Error& e) {
    fail("{}: {} (give another template with --chat-template FILE)", origin, e.what());
  }
  return t;
}

ChatTemplate ChatTemplate::for_model(const GgufFile* gguf, const std::string& hf_dir, const Tokenizer& tok,
                                     const std::string& override_file) {
  const ChatTokens tokens = ChatTokens::from_tokenizer(tok);
  if (!override_file.empty()) return from_jinja(read_file(override_file, "chat template"), tokens, override_file);
  if (gguf) {
    if (auto j = gguf->opt_string("tokenizer.chat_template")) return from_jinja(*j, tokens, "the GGUF's tokenizer.chat_template");
  } else if (!hf_dir.empty()) {
    std::string origin;
    const std::string src = hf_template(hf_dir, origin);
    if (!src.empty()) return from_jinja(src, tokens, origin);
  }
  return from_jinja(kChatMLTemplate, tokens, "the built-in ChatML template (the model has none)");
}

ChatTemplate ChatTemplate::from_gguf(const GgufFile& f) {
  const auto tok = Tokenizer::from_gguf(f);
  return for_model(&f, "", *tok);
}

std::vector<PromptPart> render_chat_template(const ChatTemplate& t, const std::vector<ChatMessage>& messages,
                                             bool add_generation_prompt, const nlohmann::ordered_json& tools) {
  DUO_CHECK(t.program != nullptr, "chat template not loaded");
  jinja::List msgs;
  for (const auto& m : messages) {
    DUO_CHECK(m.role == "system" || m.role == "user" || m.role == "assistant" || m.role == "tool",
              "chat message role '{}' is not one of system, user, assistant, tool", m.role);
    auto d = std::make_shared<jinja::Dict>();
    d->set(jinja::Text::data("role"), jinja::Value::string(jinja::Text::data(m.role)));
    d->set(jinja::Text::data("content"), jinja::Value::string(jinja::Text::data(m.content)));
    if (!m.tool_calls.is_null()) d->set(jinja::Text::data("tool_calls"), jinja::Value::from_json(m.tool_calls));
    if (!m.tool_call_id.empty())
      d->set(jinja::Text::data("tool_call_id"), jinja::Value::string(jinja::Text::data(m.tool_call_id)));
    msgs.push_back(jinja::Value::of_dict(std::move(d)));
  }
  // transformers' context: messages, tools (None without), documents, add_generation_prompt,
  // and the special-token strings.
  std::vector<std::pair<std::string, jinja::Value>> ctx = {
      {"messages", jinja::Value::of_list(std::move(msgs))},
      {"tools", tools.is_null() ? jinja::Value::none() : jinja::Value::from_json(tools)},
      {"documents", jinja::Value::none()},
      {"add_generation_prompt", jinja::Value::boolean(add_generation_prompt)},
      {"bos_token", jinja::Value::string(jinja::Text::literal(t.bos_token))},
      {"eos_token", jinja::Value::string(jinja::Text::literal(t.eos_token))},
  };
  size_t in_bytes = tools.is_null() ? 0 : tools.dump().size();
  for (const auto& m : messages)
    in_bytes += m.content.size() + m.role.size() + m.tool_call_id.size() + (m.tool_calls.is_null() ? 0 : m.tool_calls.dump().size());
  // Room for templates that repeat the conversation a few times, however long it is.
  jinja::Limits limits;
  limits.max_bytes = std::max(t.max_bytes, 8 * in_bytes);
  limits.max_steps = t.max_steps + in_bytes;
  jinja::Text out;
  try {
    out = t.program->render(std::move(ctx), limits);
  } catch (const Error& e) {
    fail("{}: {}", t.origin, e.what());
  }

  // Split: conversation bytes are text; the template's bytes are searched for its markers
  // (longest first at the earliest position).
  std::vector<PromptPart> parts;
  auto text = [&](std::string_view s) {
    if (s.empty()) return;
    if (!parts.empty() && !parts.back().special)
      parts.back().text += s;
    else
      parts.push_back({std::string(s), false});
  };
  auto trusted = [&](std::string_view s) {
    size_t run = 0;
    for (size_t i = 0; i < s.size();) {
      const std::string* hit = nullptr;
      for (const auto& m : t.markers)
        if (s.compare(i, m.size(), m) == 0) {
          hit = &m;
          break;
        }
      if (!hit) {
        ++i;
        continue;
      }
      text(s.substr(run, i - run));
      parts.push_back({*hit, true});
      i += hit->size();
      run = i;
    }
    text(s.substr(run));
  };
  const std::string_view all(out.s);
  size_t at = 0;
  for (auto [b, e] : out.trusted) {
    text(all.substr(at, b - at));
    trusted(all.substr(b, e - b));
    at = e;
  }
  text(all.substr(at));
  return parts;
}

std::string apply_chat_template(const ChatTemplate& t, const std::vector<ChatMessage>& messages,
                                bool add_generation_prompt, const nlohmann::ordered_json& tools) {
  std::string out;
  for (const auto& p : render_chat_template(t, messages, add_generation_prompt, tools)) out += p.text;
  return out;
}

std::vector<int32_t> encode_chat(const Tokenizer& tok, const ChatTemplate& t, const std::vector<ChatMessage>& messages,
                                 bool add_generation_prompt, const nlohmann::ordered_json& tools) {
  return tok.encode_parts(render_chat_template(t, messages, add_generation_prompt, tools), false);
}

}  // namespace duo
