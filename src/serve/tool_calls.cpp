#include "serve/tool_calls.h"

#include <fmt/format.h>

#include <algorithm>
#include <random>

namespace duo::serve {

using nlohmann::json;
using ojson = nlohmann::ordered_json;

namespace {

const ojson* find_tool(const ojson& tools, const std::string& name) {
  for (const auto& t : tools)
    if (t["function"]["name"] == name) return &t;
  return nullptr;
}

// A tool's parameters schema as the recogniser takes it: an object at the top even where the
// tool leaves "type" out (OpenAI's arguments are always an object).
json parameters_of(const ojson& tool) {
  const ojson& f = tool["function"];
  json p = f.contains("parameters") && f["parameters"].is_object() ? json::parse(f["parameters"].dump())
                                                                   : json{{"type", "object"}};
  if (!p.contains("type") && !p.contains("anyOf") && !p.contains("oneOf") && !p.contains("$ref")) p["type"] = "object";
  // Keys beyond the named parameters are allowed by JSON Schema when additionalProperties is
  // left out, and a small model given that freedom writes keys of its own until max_tokens;
  // a forced call keeps to the named ones (a narrowing: what it writes is still valid).
  if (p.contains("properties") && !p.contains("additionalProperties")) p["additionalProperties"] = false;
  return p;
}

// Trims ASCII blanks at both ends.
std::string trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t\r\n") + 1 - b);
}

json make_call(const std::string& name, const ojson& arguments) {
  return {{"id", new_tool_call_id()}, {"type", "function"}, {"function", {{"name", name}, {"arguments", arguments.dump()}}}};
}

ToolAnswer plain(const std::string& text) {
  ToolAnswer a;
  a.content = text;
  return a;
}

}  // namespace

std::string new_tool_call_id() {
  static thread_local std::mt19937_64 rng(std::random_device{}());
  return fmt::format("call_{:016x}{:08x}", rng(), (uint32_t)rng());
}

std::shared_ptr<const CompiledSchema> forced_tool_schema(const GenerationRequest& r) {
  if (r.tool_choice == ToolChoice::Named) return compile_json_schema(parameters_of(*find_tool(r.tools, r.tool_name)));
  // Required: {"name": const, "arguments": parameters} per tool, one of them. Each tool's
  // $defs move to the top so that its "#/$defs/..." references still resolve there.
  json defs = json::object(), alts = json::array();
  for (const auto& t : r.tools) {
    json p = parameters_of(t);
    for (const char* k : {"$defs", "definitions"}) {
      if (!p.contains(k)) continue;
      for (auto& [name, d] : p[k].items()) {
        json& slot = defs[k][name];
        if (!slot.is_null() && slot != d)
          throw SchemaError(fmt::format("two tools define '{}' differently", name), fmt::format("/{}/{}", k, name));
        slot = d;
      }
      p.erase(k);
    }
    alts.push_back({{"type", "object"},
                    {"properties", {{"name", {{"const", t["function"]["name"].get<std::string>()}}}, {"arguments", p}}},
                    {"required", {"name", "arguments"}},
                    {"additionalProperties", false}});
  }
  json schema = alts.size() == 1 ? alts[0] : json{{"anyOf", alts}};
  for (auto& [k, d] : defs.items()) schema[k] = d;
  return compile_json_schema(schema);
}

bool template_knows_tools(const ChatTemplate& t) { return t.source.find("tools") != std::string::npos; }

std::vector<ChatMessage> hermes_messages(const std::vector<ChatMessage>& messages, const ojson& tools) {
  std::vector<ChatMessage> out;
  size_t first = 0;
  if (!tools.is_null()) {
    // Qwen2.5's tool prompt, after the system message if there is one.
    std::string sys;
    if (!messages.empty() && messages[0].role == "system") {
      sys = messages[0].content + "\n\n";
      first = 1;
    }
    sys += "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
           "You are provided with function signatures within <tools></tools> XML tags:\n<tools>";
    for (const auto& t : tools) {
      sys += '\n';
      sys += t.dump();
    }
    sys += "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
           "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
           "<args-json-object>}\n</tool_call>";
    out.push_back({"system", sys});
  }
  for (size_t i = first; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    if (m.role == "tool") {
      // Consecutive results share one user turn, as Qwen2.5's template writes them.
      std::string block = "<tool_response>\n" + m.content + "\n</tool_response>";
      if (i > first && messages[i - 1].role == "tool")
        out.back().content += "\n" + block;
      else
        out.push_back({"user", block});
    } else if (!m.tool_calls.is_null()) {
      std::string text = m.content;
      for (const auto& c : m.tool_calls) {
        const ojson& f = c["function"];
        text += (text.empty() ? "" : "\n") + std::string("<tool_call>\n{\"name\": ") + f["name"].dump() +
                ", \"arguments\": " + f["arguments"].dump() + "}\n</tool_call>";
      }
      out.push_back({m.role, text});
    } else {
      out.push_back({m.role, m.content});
    }
  }
  return out;
}

namespace {

// One call as an object {"name": a known tool, "arguments" (or "parameters"): an object, or
// JSON text of one}; null when `call` is not that.
json call_of(const ojson& call, const std::vector<std::string>& names) {
  if (call.is_discarded() || !call.is_object()) return nullptr;
  const auto name = call.find("name");
  auto args = call.find("arguments");
  if (args == call.end()) args = call.find("parameters");
  if (name == call.end() || !name->is_string() || args == call.end()) return nullptr;
  if (std::find(names.begin(), names.end(), name->get<std::string>()) == names.end()) return nullptr;
  ojson arguments = *args;
  if (arguments.is_string()) arguments = ojson::parse(args->get<std::string>(), nullptr, false);
  if (!arguments.is_object()) return nullptr;
  return make_call(name->get<std::string>(), arguments);
}

// An answer that is nothing but one call object, bare or in a ```json fence (what Qwen2.5-Coder
// writes instead of <tool_call> tags; llama.cpp's Hermes parser takes these forms too).
json bare_call(const std::string& text, const std::vector<std::string>& names) {
  std::string t = trim(text);
  if (t.rfind("```", 0) == 0 && t.size() >= 6 && t.compare(t.size() - 3, 3, "```") == 0) {
    const size_t nl = t.find('\n');
    if (nl == std::string::npos || nl >= t.size() - 3) return nullptr;
    const std::string lang = trim(t.substr(3, nl - 3));
    if (!lang.empty() && lang != "json") return nullptr;
    t = trim(t.substr(nl + 1, t.size() - 3 - nl - 1));
  }
  if (t.empty() || t[0] != '{') return nullptr;
  return call_of(ojson::parse(t, nullptr, /*allow_exceptions=*/false), names);
}

}  // namespace

json parse_call_body(const std::string& body, const std::vector<std::string>& names) {
  return call_of(ojson::parse(trim(body), nullptr, /*allow_exceptions=*/false), names);
}

ToolAnswer parse_hermes_calls(const std::string& text, const std::vector<std::string>& names) {
  static const std::string kOpen = "<tool_call>", kClose = "</tool_call>";
  ToolAnswer a;
  a.tool_calls = json::array();
  std::string outside;
  size_t at = 0;
  for (;;) {
    const size_t b = text.find(kOpen, at);
    if (b == std::string::npos) break;
    outside += text.substr(at, b - at);
    size_t e = text.find(kClose, b + kOpen.size());
    // A last call whose closing tag never came (generation stopped at the end of the turn).
    const bool closed = e != std::string::npos;
    const std::string body = text.substr(b + kOpen.size(), closed ? e - b - kOpen.size() : std::string::npos);
    json call = call_of(ojson::parse(trim(body), nullptr, /*allow_exceptions=*/false), names);
    if (call.is_null()) return plain(text);
    a.tool_calls.push_back(std::move(call));
    at = closed ? e + kClose.size() : text.size();
  }
  if (a.tool_calls.empty()) {
    json call = bare_call(text, names);
    if (call.is_null()) return plain(text);
    a.is_call = true;
    a.content_null = true;
    a.tool_calls.push_back(std::move(call));
    return a;
  }
  outside += text.substr(at);
  a.is_call = true;
  a.content = trim(outside);
  a.content_null = a.content.empty();
  return a;
}

ToolAnswer shape_tool_answer(const GenerationRequest& r, const std::string& text, bool complete) {
  std::vector<std::string> names;
  for (const auto& t : r.tools) names.push_back(t["function"]["name"].get<std::string>());
  switch (r.tool_choice) {
    case ToolChoice::None: return plain(text);
    case ToolChoice::Auto: return parse_hermes_calls(text, names);
    case ToolChoice::Named:
    case ToolChoice::Required: break;
  }
  if (!complete) return plain(text);
  const ojson v = ojson::parse(text, nullptr, /*allow_exceptions=*/false);
  if (v.is_discarded() || !v.is_object()) return plain(text);
  ToolAnswer a;
  a.is_call = true;
  a.content_null = true;
  if (r.tool_choice == ToolChoice::Named) {
    a.tool_calls = json::array({make_call(r.tool_name, v)});
    return a;
  }
  const auto name = v.find("name");
  const auto args = v.find("arguments");
  if (name == v.end() || !name->is_string() || args == v.end() || !args->is_object()) return plain(text);
  a.tool_calls = json::array({make_call(name->get<std::string>(), *args)});
  return a;
}

}  // namespace duo::serve
