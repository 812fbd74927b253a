#include "serve/request.h"

#include <cmath>
#include <limits>
#include <set>

#include "serve/api_error.h"

namespace duo::serve {

using nlohmann::json;

namespace {

// JSON nesting a valid request never comes near (a response_format schema of nested objects
// written inline takes two levels per object).
constexpr int kMaxDepth = 64;
constexpr size_t kMaxMessages = 4096;
constexpr int64_t kMaxWindow = 1 << 24;

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
    for (const char* k : {"tools", "functions"})
      if (const json* v = field(body, k)) {
        if (!v->is_array()) bad_param(k, "'{}' must be an array, not {}", k, type_name(*v));
        if (!v->empty()) unsupported(k, "tool calling");
      }
    for (const char* k : {"tool_choice", "function_call"})
      if (const json* v = field(body, k); v && !(v->is_string() && v->get<std::string>() == "none"))
        unsupported(k, "tool calling");
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
    if (*role == "tool" || *role == "function") unsupported(name + ".role", "tool messages");
    if (*role != "system" && *role != "user" && *role != "assistant")
      bad_param(name + ".role", "'{}.role' must be system, developer, user or assistant (got '{}')", name, *role);
    if (const json* tc = field(m, "tool_calls"); tc && !(tc->is_array() && tc->empty()))
      unsupported(name + ".tool_calls", "tool calls");
    const json* content = field(m, "content");
    if (!content) bad_param(name + ".content", "'{}.content' is required", name);
    get_string(m, "name");
    out.push_back({*role, message_content(*content, i)});
  }
  return out;
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
