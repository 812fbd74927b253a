#include "serve/request.h"

#include <cmath>
#include <limits>
#include <set>

#include "serve/api_error.h"
#include "serve/tool_calls.h"

namespace duo::serve {

using nlohmann::json;

namespace {

// JSON nesting a valid request never comes near (a response_format schema of nested objects
// written inline takes two levels per object).
constexpr int kMaxDepth = 64;
constexpr size_t kMaxMessages = 4096;
constexpr int64_t kMaxWindow = 1 << 24;
constexpr size_t kMaxTools = 128;

// Nesting depth of a JSON text (brackets outside strings), so a body of a million '[' is
// refused before a parser builds a million nested values out of it.
int nesting_depth(const std::string& s) {
  int depth = 0, worst = 0;
  bool in_string = false, escaped = false;
  for (char c : s) {
    if (in_string) {
      if (escaped)
        escaped = false;
      else if (c == '\\')
        escaped = true;
      else if (c == '"')
        in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      worst = std::max(worst, ++depth);
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return worst;
}

const char* type_name(const json& v) {
  if (v.is_number_integer() || v.is_number_unsigned()) return "an integer";
  if (v.is_number_float()) return "a number";
  return v.type_name();
}

// A field's value, or nullptr when absent or JSON null (null means "the default", as OpenAI
// treats it).
const json* field(const json& o, const char* key) {
  auto it = o.find(key);
  if (it == o.end() || it->is_null()) return nullptr;
  return &*it;
}

int64_t to_int(const json& v, const std::string& name, int64_t lo, int64_t hi) {
  if (!v.is_number_integer() && !v.is_number_unsigned())
    bad_param(name, "'{}' must be an integer, not {}", name, type_name(v));
  if (v.is_number_unsigned() && v.get<uint64_t>() > (uint64_t)std::numeric_limits<int64_t>::max())
    bad_param(name, "'{}' is out of range: {} is more than {}", name, v.dump(), hi);
  const int64_t x = v.get<int64_t>();
  if (x < lo || x > hi) bad_param(name, "'{}' is out of range: {} is not in [{}, {}]", name, x, lo, hi);
  return x;
}

std::optional<int64_t> get_int(const json& o, const char* key, int64_t lo, int64_t hi) {
  if (const json* v = field(o, key)) return to_int(*v, key, lo, hi);
  return std::nullopt;
}

std::optional<double> get_number(const json& o, const char* key, double lo, double hi, bool lo_open = false) {
  const json* v = field(o, key);
  if (!v) return std::nullopt;
  if (!v->is_number()) bad_param(key, "'{}' must be a number, not {}", key, type_name(*v));
  const double x = v->get<double>();
  if (!std::isfinite(x) || x > hi || (lo_open ? x <= lo : x < lo))
    bad_param(key, "'{}' is out of range: {} is not in {}{}, {}]", key, v->dump(), lo_open ? "(" : "[", lo, hi);
  return x;
}

std::optional<bool> get_bool(const json& o, const char* key) {
  const json* v = field(o, key);
  if (!v) return std::nullopt;
  if (!v->is_boolean()) bad_param(key, "'{}' must be a boolean, not {}", key, type_name(*v));
  return v->get<bool>();
}

std::optional<std::string> get_string(const json& o, const char* key) {
  const json* v = field(o, key);
  if (!v) return std::nullopt;
  if (!v->is_string()) bad_param(key, "'{}' must be a string, not {}", key, type_name(*v));
  return v->get<std::string>();
}

[[noreturn]] void unsupported(const std::string& param, const std::string& what) {
  throw ApiError(400, "invalid_request_error", fmt::format("'{}': {} is not supported by this server", param, what),
                 param, "unsupported_parameter");
}

// Fields every endpoint accepts; each endpoint adds its own.
const std::set<std::string> kCommonFields = {
    "model", "max_tokens", "temperature", "top_p", "n", "stream", "stream_options", "stop", "presence_penalty",
    "frequency_penalty", "logit_bias", "logprobs", "user", "seed", "metadata", "store", "service_tier",
    // vLLM / llama.cpp sampling extensions
    "min_p", "repetition_penalty", "ignore_eos",
    // duo extensions
    "top_k", "attention", "sink", "recent", "pattern", "retrieval_ratio", "threshold"};
const std::set<std::string> kCompletionFields = {"prompt", "echo", "best_of", "suffix",
                                                 // duo extension
                                                 "parse_special"};
const std::set<std::string> kChatFields = {"messages",  "max_completion_tokens", "top_logprobs", "response_format",
                                           "tools",     "tool_choice",           "functions",    "function_call",
                                           "parallel_tool_calls"};

// Fields this server does not know are ignored (as vLLM and llama.cpp do) and reported: the
// response's x-duo-ignored-fields header and the request log name them.
std::vector<std::string> unknown_fields(const json& body, Endpoint ep) {
  const auto& own = ep == Endpoint::Completions ? kCompletionFields : kChatFields;
  std::vector<std::string> out;
  // The other endpoint's input field means the request went to the wrong place: refused.
  const char* other_input = ep == Endpoint::Completions ? "messages" : "prompt";
  if (body.contains(other_input))
    bad_param(other_input, "'{}' belongs to {}, not {}", other_input,
              endpoint_path(ep == Endpoint::Completions ? Endpoint::ChatCompletions : Endpoint::Completions),
              endpoint_path(ep));
  for (auto it = body.begin(); it != body.end(); ++it)
    if (!kCommonFields.count(it.key()) && !own.count(it.key())) out.push_back(it.key());
  return out;
}

std::vector<std::pair<int32_t, float>> parse_logit_bias(const json& body) {
  std::vector<std::pair<int32_t, float>> out;
  const json* v = field(body, "logit_bias");
  if (!v) return out;
  if (!v->is_object()) bad_param("logit_bias", "'logit_bias' must be an object, not {}", type_name(*v));
  if (v->size() > 1024) bad_param("logit_bias", "'logit_bias' holds {} entries, more than 1024", v->size());
  for (auto it = v->begin(); it != v->end(); ++it) {
    const std::string& k = it.key();
    int64_t id = -1;
    if (!k.empty() && k.size() <= 10 && k.find_first_not_of("0123456789") == std::string::npos) id = std::stoll(k);
    if (id < 0 || id > std::numeric_limits<int32_t>::max())
      bad_param("logit_bias", "'logit_bias' keys must be token ids (got '{}')", k);
    if (!it->is_number()) bad_param("logit_bias", "'logit_bias[{}]' must be a number, not {}", k, type_name(*it));
    const double b = it->get<double>();
    if (!(b >= -100.0 && b <= 100.0)) bad_param("logit_bias", "'logit_bias[{}]' = {} is not in [-100, 100]", k, it->dump());
    out.push_back({(int32_t)id, (float)b});
  }
  return out;
}

// Options with one supported value (the default): anything else is refused rather than ignored.
void check_defaults_only(const json& body, Endpoint ep) {
  if (ep == Endpoint::Completions) {
    if (get_bool(body, "echo").value_or(false)) unsupported("echo", "echoing the prompt");
    if (auto b = get_int(body, "best_of", 1, 20); b && *b != 1) unsupported("best_of", "best_of > 1");
    if (auto s = get_string(body, "suffix"); s && !s->empty()) unsupported("suffix", "a suffix");
  } else {
    if (const json* v = field(body, "response_format")) {
      if (!v->is_object()) bad_param("response_format", "'response_format' must be an object, not {}", type_name(*v));
      auto t = get_string(*v, "type");
      if (!t) bad_param("response_format", "'response_format' needs a 'type'");
      if (*t != "text" && *t != "json_object" && *t != "json_schema")
        unsupported("response_format", fmt::format("response format '{}'", *t));
    }
    // The legacy function-calling fields (before tools): not implemented.
    if (const json* v = field(body, "functions")) {
      if (!v->is_array()) bad_param("functions", "'functions' must be an array, not {}", type_name(*v));
      if (!v->empty()) unsupported("functions", "'functions' (use 'tools')");
    }
    if (const json* v = field(body, "function_call"); v && !(v->is_string() && v->get<std::string>() == "none"))
      unsupported("function_call", "'function_call' (use 'tool_choice')");
    get_bool(body, "parallel_tool_calls");
  }
  get_string(body, "user");
  get_bool(body, "store");
  get_string(body, "service_tier");
  if (const json* v = field(body, "metadata"); v && !v->is_object())
    bad_param("metadata", "'metadata' must be an object, not {}", type_name(*v));
}

// response_format {"type": "json_schema", "json_schema": {"name", "description", "schema",
// "strict"}}: the schema compiled for constrained sampling, which always holds to it (strict or
// not). A schema using what the recogniser does not support is refused, naming the keyword.
std::shared_ptr<const CompiledSchema> parse_json_schema_format(const json& rf) {
  const char* param = "response_format";
  const json* js = field(rf, "json_schema");
  if (!js) bad_param(param, "'response_format.json_schema' is required with type json_schema");
  if (!js->is_object()) bad_param(param, "'response_format.json_schema' must be an object, not {}", type_name(*js));
  for (const char* k : {"name", "description"})
    if (const json* v = field(*js, k); v && !v->is_string())
      bad_param(param, "'response_format.json_schema.{}' must be a string, not {}", k, type_name(*v));
  if (const json* v = field(*js, "strict"); v && !v->is_boolean())
    bad_param(param, "'response_format.json_schema.strict' must be a boolean, not {}", type_name(*v));
  const json* schema = field(*js, "schema");
  if (!schema) bad_param(param, "'response_format.json_schema.schema' is required");
  if (!schema->is_object() && !schema->is_boolean())
    bad_param(param, "'response_format.json_schema.schema' must be an object, not {}", type_name(*schema));
  try {
    return compile_json_schema(*schema);
  } catch (const SchemaError& e) {
    throw ApiError(400, "invalid_request_error", fmt::format("'response_format.json_schema.schema': {}", e.what()), param,
                   "unsupported_schema");
  }
}

std::string message_content(const json& content, size_t i) {
  const std::string name = fmt::format("messages[{}].content", i);
  if (content.is_string()) return content.get<std::string>();
  if (!content.is_array()) bad_param(name, "'{}' must be a string or an array of text parts, not {}", name, type_name(content));
  std::string text;
  for (size_t j = 0; j < content.size(); ++j) {
    const json& part = content[j];
    const std::string pname = fmt::format("{}[{}]", name, j);
    if (!part.is_object()) bad_param(pname, "'{}' must be an object, not {}", pname, type_name(part));
    auto type = get_string(part, "type");
    if (!type) bad_param(pname, "'{}' needs a 'type'", pname);
    if (*type != "text") unsupported(pname, fmt::format("content of type '{}'", *type));
    auto t = get_string(part, "text");
    if (!t) bad_param(pname, "'{}' needs a 'text' string", pname);
    text += *t;
  }
  return text;
}

// An assistant message's tool_calls (OpenAI: [{"id", "type": "function", "function": {"name",
// "arguments": JSON text}}]) in the layout transformers hands templates: arguments as the
// object they encode (Qwen's template prints `arguments | tojson`; vLLM converts the same way),
// or the text as given when it is not JSON. Empty: null (no calls).
nlohmann::ordered_json parse_message_tool_calls(const json& tc, const std::string& name) {
  if (!tc.is_array()) bad_param(name, "'{}' must be an array, not {}", name, type_name(tc));
  if (tc.empty()) return nullptr;
  nlohmann::ordered_json out = nlohmann::ordered_json::array();
  for (size_t k = 0; k < tc.size(); ++k) {
    const std::string cname = fmt::format("{}[{}]", name, k);
    const json& c = tc[k];
    if (!c.is_object()) bad_param(cname, "'{}' must be an object, not {}", cname, type_name(c));
    if (auto t = get_string(c, "type"); t && *t != "function")
      unsupported(cname + ".type", fmt::format("tool calls of type '{}'", *t));
    const json* f = field(c, "function");
    if (!f || !f->is_object()) bad_param(cname + ".function", "'{}.function' must be an object", cname);
    auto fname = get_string(*f, "name");
    if (!fname) bad_param(cname + ".function.name", "'{}.function.name' is required", cname);
    nlohmann::ordered_json args = nlohmann::ordered_json::object();
    if (const json* a = field(*f, "arguments")) {
      if (a->is_string()) {
        const std::string& text = a->get_ref<const std::string&>();
        // Text nested deeper than a body may be stays text (the depth check saw only a string).
        const bool shallow = nesting_depth(text) <= kMaxDepth;
        if (shallow) args = nlohmann::ordered_json::parse(text, nullptr, /*allow_exceptions=*/false);
        if (!shallow || args.is_discarded()) args = text;
      } else if (a->is_object()) {
        args = nlohmann::ordered_json::parse(a->dump());
      } else {
        bad_param(cname + ".function.arguments", "'{}.function.arguments' must be a string, not {}", cname, type_name(*a));
      }
    }
    nlohmann::ordered_json call = nlohmann::ordered_json::object();
    if (auto id = get_string(c, "id")) call["id"] = *id;
    call["type"] = "function";
    call["function"] = {{"name", *fname}, {"arguments", std::move(args)}};
    out.push_back(std::move(call));
  }
  return out;
}

std::vector<ChatMessage> parse_messages(const json& body) {
  const json* v = field(body, "messages");
  if (!v) bad_param("messages", "'messages' is required");
  if (!v->is_array()) bad_param("messages", "'messages' must be an array, not {}", type_name(*v));
  if (v->empty()) bad_param("messages", "'messages' must hold at least one message");
  if (v->size() > kMaxMessages) bad_param("messages", "'messages' holds {} messages, more than {}", v->size(), kMaxMessages);
  std::vector<ChatMessage> out;
  for (size_t i = 0; i < v->size(); ++i) {
    const json& m = (*v)[i];
    const std::string name = fmt::format("messages[{}]", i);
    if (!m.is_object()) bad_param(name, "'{}' must be an object, not {}", name, type_name(m));
    auto role = get_string(m, "role");
    if (!role) bad_param(name + ".role", "'{}.role' is required", name);
    if (*role == "developer") *role = "system";
    if (*role == "function") unsupported(name + ".role", "role 'function' (use role 'tool')");
    if (*role != "system" && *role != "user" && *role != "assistant" && *role != "tool")
      bad_param(name + ".role", "'{}.role' must be system, developer, user, assistant or tool (got '{}')", name,
                *role);
    ChatMessage msg;
    msg.role = *role;
    if (const json* tc = field(m, "tool_calls")) {
      if (*role != "assistant") bad_param(name + ".tool_calls", "'{}.tool_calls' belongs to assistant messages", name);
      msg.tool_calls = parse_message_tool_calls(*tc, name + ".tool_calls");
    }
    if (*role == "tool") {
      if (auto id = get_string(m, "tool_call_id")) msg.tool_call_id = *id;
    }
    const json* content = field(m, "content");
    if (content)
      msg.content = message_content(*content, i);
    else if (msg.tool_calls.is_null())  // an assistant turn of calls only may have none
      bad_param(name + ".content", "'{}.content' is required", name);
    get_string(m, "name");
    out.push_back(std::move(msg));
  }
  return out;
}

// tools and tool_choice. `body` is the request read again with key order kept: the template
// prints the tools, and what the model is shown should be what the client wrote.
void parse_tools(const nlohmann::ordered_json& body, GenerationRequest& r) {
  using oj = nlohmann::ordered_json;
  auto it = body.find("tools");
  const bool have = it != body.end() && !it->is_null();
  if (have) {
    if (!it->is_array()) bad_param("tools", "'tools' must be an array, not {}", it->type_name());
    if (it->size() > kMaxTools) bad_param("tools", "'tools' holds {} tools, more than {}", it->size(), kMaxTools);
    std::set<std::string> names;
    for (size_t k = 0; k < it->size(); ++k) {
      const oj& t = (*it)[k];
      const std::string tname = fmt::format("tools[{}]", k);
      if (!t.is_object()) bad_param(tname, "'{}' must be an object, not {}", tname, t.type_name());
      if (!t.contains("type") || t["type"] != "function")
        bad_param(tname + ".type", "'{}.type' must be \"function\"", tname);
      if (!t.contains("function") || !t["function"].is_object())
        bad_param(tname + ".function", "'{}.function' must be an object", tname);
      const oj& f = t["function"];
      if (!f.contains("name") || !f["name"].is_string() || f["name"].get<std::string>().empty())
        bad_param(tname + ".function.name", "'{}.function.name' must be a non-empty string", tname);
      if (!names.insert(f["name"].get<std::string>()).second)
        bad_param(tname + ".function.name", "two tools are named '{}'", f["name"].get<std::string>());
      if (f.contains("description") && !f["description"].is_string() && !f["description"].is_null())
        bad_param(tname + ".function.description", "'{}.function.description' must be a string", tname);
      if (f.contains("parameters") && !f["parameters"].is_object() && !f["parameters"].is_null())
        bad_param(tname + ".function.parameters", "'{}.function.parameters' must be an object (a JSON schema)", tname);
    }
    if (!it->empty()) r.tools = *it;
  }
  auto tc = body.find("tool_choice");
  r.tool_choice = r.tools.is_null() ? ToolChoice::None : ToolChoice::Auto;
  if (tc == body.end() || tc->is_null()) return;
  if (tc->is_string()) {
    const std::string c = tc->get<std::string>();
    if (c == "none")
      r.tool_choice = ToolChoice::None;
    else if (c == "auto")
      r.tool_choice = ToolChoice::Auto;
    else if (c == "required")
      r.tool_choice = ToolChoice::Required;
    else
      bad_param("tool_choice", "'tool_choice' must be none, auto, required or {{\"type\": \"function\", ...}} (got '{}')", c);
  } else if (tc->is_object()) {
    const auto type = tc->find("type");
    const auto f = tc->find("function");
    if (type == tc->end() || *type != "function" || f == tc->end() || !f->is_object() || !f->contains("name") ||
        !(*f)["name"].is_string())
      bad_param("tool_choice", "'tool_choice' as an object must be {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}");
    r.tool_choice = ToolChoice::Named;
    r.tool_name = (*f)["name"].get<std::string>();
  } else {
    bad_param("tool_choice", "'tool_choice' must be a string or an object, not {}", tc->type_name());
  }
  if (r.tool_choice != ToolChoice::None && r.tools.is_null())
    bad_param("tool_choice", "'tool_choice' needs 'tools'");
  if (r.tool_choice == ToolChoice::Named) {
    bool found = false;
    for (const auto& t : r.tools) found = found || t["function"]["name"] == r.tool_name;
    if (!found) bad_param("tool_choice", "'tool_choice' names '{}', which is not in 'tools'", r.tool_name);
  }
}

void parse_prompt(const json& body, GenerationRequest& r) {
  const json* v = field(body, "prompt");
  if (!v) bad_param("prompt", "'prompt' is required");
  auto token_list = [&](const json& a, const std::string& name) {
    if (a.empty()) bad_param(name, "'{}' is an empty token list", name);
    for (size_t i = 0; i < a.size(); ++i)
      r.prompt_tokens.push_back((int32_t)to_int(a[i], fmt::format("{}[{}]", name, i), 0, std::numeric_limits<int32_t>::max()));
    r.prompt_is_tokens = true;
  };
  if (v->is_string()) {
    r.prompt = v->get<std::string>();
  } else if (v->is_array() && !v->empty() && (*v)[0].is_string()) {
    if (v->size() != 1) unsupported("prompt", "more than one prompt per request");
    r.prompt = (*v)[0].get<std::string>();
  } else if (v->is_array() && !v->empty() && (*v)[0].is_array()) {
    if (v->size() != 1) unsupported("prompt", "more than one prompt per request");
    token_list((*v)[0], "prompt[0]");
  } else if (v->is_array() && !v->empty()) {
    token_list(*v, "prompt");
  } else {
    bad_param("prompt", "'prompt' must be a string, an array of one string, or an array of token ids (got {})",
              v->is_array() ? "an empty array" : type_name(*v));
  }
}

std::vector<std::string> parse_stop(const json& body) {
  const json* v = field(body, "stop");
  if (!v) return {};
  std::vector<std::string> out;
  if (v->is_string()) {
    out.push_back(v->get<std::string>());
  } else if (v->is_array()) {
    if (v->size() > kMaxStopStrings) bad_param("stop", "'stop' holds {} strings, more than {}", v->size(), kMaxStopStrings);
    for (size_t i = 0; i < v->size(); ++i) {
      if (!(*v)[i].is_string()) bad_param("stop", "'stop[{}]' must be a string, not {}", i, type_name((*v)[i]));
      out.push_back((*v)[i].get<std::string>());
    }
  } else {
    bad_param("stop", "'stop' must be a string or an array of strings, not {}", type_name(*v));
  }
  for (const auto& s : out) {
    if (s.empty()) bad_param("stop", "stop strings must not be empty");
    if (s.size() > kMaxStopLength) bad_param("stop", "a stop string is {} bytes long, more than {}", s.size(), kMaxStopLength);
  }
  return out;
}

GateMatrix parse_inline_pattern(const json& v) {
  if (!v.is_array() || v.empty())
    bad_param("pattern", "'pattern' must be a pattern name or a non-empty array of layers of gate values");
  GateMatrix g;
  for (size_t l = 0; l < v.size(); ++l) {
    const json& row = v[l];
    if (!row.is_array() || row.empty()) bad_param("pattern", "'pattern[{}]' must be a non-empty array of gate values", l);
    if (l == 0) g.n_kv_heads = (int)row.size();
    if ((int)row.size() != g.n_kv_heads)
      bad_param("pattern", "'pattern[{}]' has {} gates, but the first layer has {}", l, row.size(), g.n_kv_heads);
    for (size_t h = 0; h < row.size(); ++h) {
      if (!row[h].is_number()) bad_param("pattern", "'pattern[{}][{}]' must be a number, not {}", l, h, type_name(row[h]));
      const double x = row[h].get<double>();
      if (!(x >= 0.0 && x <= 1.0)) bad_param("pattern", "'pattern[{}][{}]' = {} is outside [0, 1]", l, h, row[h].dump());
      g.values.push_back((float)x);
    }
    ++g.n_layers;
  }
  return g;
}

void parse_duo_options(const json& body, GenerationRequest& r) {
  if (auto a = get_string(body, "attention")) {
    if (*a == "full")
      r.attention = AttentionMode::Full;
    else if (*a == "streaming")
      r.attention = AttentionMode::Streaming;
    else if (*a == "duo")
      r.attention = AttentionMode::Duo;
    else
      bad_param("attention", "'attention' must be full, streaming or duo (got '{}')", *a);
  }
  if (auto s = get_int(body, "sink", 0, kMaxWindow)) r.sink = (int)*s;
  if (auto s = get_int(body, "recent", 1, kMaxWindow)) r.recent = (int)*s;
  if (const json* p = field(body, "pattern")) {
    if (p->is_string()) {
      r.pattern_name = p->get<std::string>();
      if (r.pattern_name->empty()) bad_param("pattern", "'pattern' must not be an empty name");
    } else {
      r.pattern_gates = parse_inline_pattern(*p);
    }
  }
  if (auto x = get_number(body, "retrieval_ratio", 0.0, 1.0)) r.retrieval_ratio = *x;
  if (auto x = get_number(body, "threshold", 0.0, 1.0)) r.threshold = (float)*x;
  if (r.retrieval_ratio && r.threshold) bad_param("threshold", "give either 'retrieval_ratio' or 'threshold', not both");
  const bool has_pattern_opts = r.pattern_name || r.pattern_gates || r.retrieval_ratio || r.threshold;
  if (has_pattern_opts && r.attention && *r.attention != AttentionMode::Duo)
    bad_param("pattern", "a head pattern needs \"attention\": \"duo\" (got '{}')", to_string(*r.attention));
}

}  // namespace

const char* endpoint_path(Endpoint e) {
  return e == Endpoint::Completions ? "/v1/completions" : "/v1/chat/completions";
}

namespace {
json parse_body(const std::string& body) {
  if (nesting_depth(body) > kMaxDepth)
    throw ApiError(400, "invalid_request_error", fmt::format("the JSON body is nested more than {} levels deep", kMaxDepth));
  json j;
  try {
    j = json::parse(body);
  } catch (const json::exception& e) {
    throw ApiError(400, "invalid_request_error", fmt::format("the body is not valid JSON: {}", e.what()), "",
                   "invalid_json");
  }
  if (!j.is_object())
    throw ApiError(400, "invalid_request_error", fmt::format("the body must be a JSON object, not {}", type_name(j)));
  return j;
}
}  // namespace

TokenizeRequest parse_tokenize(const std::string& body) {
  const json j = parse_body(body);
  TokenizeRequest t;
  auto c = get_string(j, "content");
  if (!c) bad_param("content", "'content' is required");
  t.content = *c;
  t.add_special = get_bool(j, "add_special").value_or(t.add_special);
  t.parse_special = get_bool(j, "parse_special").value_or(t.parse_special);
  t.with_pieces = get_bool(j, "with_pieces").value_or(t.with_pieces);
  return t;
}

std::vector<int32_t> parse_detokenize(const std::string& body, int32_t n_vocab) {
  const json j = parse_body(body);
  const json* v = field(j, "tokens");
  if (!v) bad_param("tokens", "'tokens' is required");
  if (!v->is_array()) bad_param("tokens", "'tokens' must be an array of token ids, not {}", type_name(*v));
  std::vector<int32_t> ids;
  for (size_t i = 0; i < v->size(); ++i) ids.push_back((int32_t)to_int((*v)[i], fmt::format("tokens[{}]", i), 0, n_vocab - 1));
  return ids;
}

GenerationRequest parse_request(Endpoint endpoint, const std::string& body) {
  if (nesting_depth(body) > kMaxDepth)
    throw ApiError(400, "invalid_request_error", fmt::format("the JSON body is nested more than {} levels deep", kMaxDepth));
  json j;
  try {
    j = json::parse(body);
  } catch (const json::exception& e) {  // parse_error, or out_of_range for a number like 1e999
    throw ApiError(400, "invalid_request_error", fmt::format("the body is not valid JSON: {}", e.what()), "",
                   "invalid_json");
  }
  if (!j.is_object())
    throw ApiError(400, "invalid_request_error", fmt::format("the body must be a JSON object, not {}", type_name(j)));
  check_defaults_only(j, endpoint);

  GenerationRequest r;
  r.endpoint = endpoint;
  r.ignored_fields = unknown_fields(j, endpoint);
  auto model = get_string(j, "model");
  if (!model) bad_param("model", "'model' is required");
  r.model = *model;
  if (endpoint == Endpoint::Completions) {
    parse_prompt(j, r);
    r.parse_special = get_bool(j, "parse_special").value_or(false);
  } else {
    r.messages = parse_messages(j);
    if (field(j, "tools") || field(j, "tool_choice")) parse_tools(nlohmann::ordered_json::parse(body), r);
  }

  const int64_t kMaxTokens = 1 << 30;
  r.max_tokens = get_int(j, "max_tokens", 1, kMaxTokens);
  if (endpoint == Endpoint::ChatCompletions)
    if (auto m = get_int(j, "max_completion_tokens", 1, kMaxTokens)) r.max_tokens = m;
  if (auto t = get_number(j, "temperature", 0.0, 2.0)) r.sampling.temperature = (float)*t;
  if (auto p = get_number(j, "top_p", 0.0, 1.0, true)) r.sampling.top_p = (float)*p;
  if (auto k = get_int(j, "top_k", 0, 1 << 20)) r.sampling.top_k = (int)*k;
  if (auto x = get_number(j, "min_p", 0.0, 1.0)) r.sampling.min_p = (float)*x;
  if (auto x = get_number(j, "repetition_penalty", 0.0, 10.0, true)) r.sampling.adjust.repetition_penalty = (float)*x;
  if (auto x = get_number(j, "presence_penalty", -2.0, 2.0)) r.sampling.adjust.presence_penalty = (float)*x;
  if (auto x = get_number(j, "frequency_penalty", -2.0, 2.0)) r.sampling.adjust.frequency_penalty = (float)*x;
  r.sampling.adjust.logit_bias = parse_logit_bias(j);
  r.n = (int)get_int(j, "n", 1, kMaxChoices).value_or(1);
  if (endpoint == Endpoint::ChatCompletions)
    if (const json* rf = field(j, "response_format")) {
      const auto type = get_string(*rf, "type");
      r.json_object = type == "json_object";
      if (r.json_object) r.json_schema = any_json_object_schema();
      if (type == "json_schema") r.json_schema = parse_json_schema_format(*rf);
    }
  if (r.tool_choice == ToolChoice::Required || r.tool_choice == ToolChoice::Named) {
    if (r.json_schema) bad_param("tool_choice", "a forced 'tool_choice' and a JSON 'response_format' cannot be combined");
    try {
      r.json_schema = forced_tool_schema(r);
    } catch (const SchemaError& e) {
      throw ApiError(400, "invalid_request_error", fmt::format("'tools': {} (at {})", e.what(), e.where), "tools",
                     "unsupported_schema");
    }
  }
  if (endpoint == Endpoint::Completions) {
    if (auto k = get_int(j, "logprobs", 0, kMaxTopLogprobs)) r.top_logprobs = (int)*k;
  } else {
    const bool want = get_bool(j, "logprobs").value_or(false);
    auto k = get_int(j, "top_logprobs", 0, kMaxTopLogprobs);
    if (k && !want) bad_param("top_logprobs", "'top_logprobs' needs \"logprobs\": true");
    if (want) r.top_logprobs = (int)k.value_or(0);
  }
  if (const json* s = field(j, "seed")) {
    if (!s->is_number_integer() && !s->is_number_unsigned())
      bad_param("seed", "'seed' must be an integer, not {}", type_name(*s));
    r.sampling.seed = s->is_number_unsigned() ? s->get<uint64_t>() : (uint64_t)s->get<int64_t>();
    r.seed_given = true;
  }
  r.stop = parse_stop(j);
  r.ignore_eos = get_bool(j, "ignore_eos").value_or(false);
  r.stream = get_bool(j, "stream").value_or(false);
  if (const json* so = field(j, "stream_options")) {
    if (!so->is_object()) bad_param("stream_options", "'stream_options' must be an object, not {}", type_name(*so));
    if (!r.stream) bad_param("stream_options", "'stream_options' is only allowed with \"stream\": true");
    r.include_usage = get_bool(*so, "include_usage").value_or(false);
  }
  parse_duo_options(j, r);
  return r;
}

}  // namespace duo::serve
