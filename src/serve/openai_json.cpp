#include "serve/openai_json.h"

#include <chrono>
#include <random>

#include <fmt/format.h>

namespace duo::serve {

using nlohmann::json;

ResponseMeta new_response_meta(Endpoint e, const std::string& model) {
  static thread_local std::mt19937_64 rng(std::random_device{}());
  ResponseMeta m;
  m.id = fmt::format("{}-{:016x}{:08x}", e == Endpoint::Completions ? "cmpl" : "chatcmpl", rng(), (uint32_t)rng());
  m.created = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  m.model = model;
  return m;
}

json finish_reason_json(FinishReason r) {
  switch (r) {
    case FinishReason::Stop: return "stop";
    case FinishReason::Length: return "length";
    default: return nullptr;
  }
}

json usage_json(int64_t prompt_tokens, int64_t completion_tokens) {
  return {{"prompt_tokens", prompt_tokens},
          {"completion_tokens", completion_tokens},
          {"total_tokens", prompt_tokens + completion_tokens}};
}

namespace {
json envelope(const char* object, const ResponseMeta& m) {
  return {{"id", m.id}, {"object", object}, {"created", m.created}, {"model", m.model}};
}
}  // namespace

namespace {
json bytes_json(const std::string& s) {
  json b = json::array();
  for (unsigned char c : s) b.push_back((int)c);
  return b;
}
}  // namespace

json logprobs_json(Endpoint e, const std::vector<TokenLogprobEntry>& tokens, size_t text_offset) {
  if (e == Endpoint::ChatCompletions) {
    json content = json::array();
    for (const auto& t : tokens) {
      json top = json::array();
      for (const auto& [piece, lp] : t.top)
        top.push_back({{"token", piece}, {"logprob", lp}, {"bytes", bytes_json(piece)}});
      content.push_back({{"token", t.piece}, {"logprob", t.logprob}, {"bytes", bytes_json(t.piece)}, {"top_logprobs", top}});
    }
    return {{"content", content}, {"refusal", nullptr}};
  }
  json toks = json::array(), lps = json::array(), tops = json::array(), offs = json::array();
  for (const auto& t : tokens) {
    toks.push_back(t.piece);
    lps.push_back(t.logprob);
    json top = json::object();
    for (const auto& [piece, lp] : t.top)
      if (!top.contains(piece)) top[piece] = lp;  // pieces with the same text: the likelier one
    tops.push_back(top);
    offs.push_back(text_offset);
    text_offset += t.piece.size();
  }
  return {{"tokens", toks}, {"token_logprobs", lps}, {"top_logprobs", tops}, {"text_offset", offs}};
}

json completion_body(Endpoint e, const ResponseMeta& m, const std::vector<ChoiceOut>& choices, int64_t prompt_tokens,
                     int64_t completion_tokens) {
  json body = envelope(e == Endpoint::Completions ? "text_completion" : "chat.completion", m);
  body["choices"] = json::array();
  for (size_t i = 0; i < choices.size(); ++i) {
    const ChoiceOut& c = choices[i];
    json choice = {{"index", i}};
    if (e == Endpoint::Completions)
      choice["text"] = c.text;
    else
      choice["message"] = {{"role", "assistant"}, {"content", c.content_null ? json(nullptr) : json(c.text)}};
    if (!c.tool_calls.is_null()) choice["message"]["tool_calls"] = c.tool_calls;
    choice["logprobs"] = c.logprobs;
    choice["finish_reason"] = c.tool_calls.is_null() ? finish_reason_json(c.reason) : json("tool_calls");
    body["choices"].push_back(std::move(choice));
  }
  body["usage"] = usage_json(prompt_tokens, completion_tokens);
  return body;
}

json completion_body(Endpoint e, const ResponseMeta& m, const std::string& text, FinishReason r, int64_t prompt_tokens,
                     int64_t completion_tokens) {
  return completion_body(e, m, std::vector<ChoiceOut>{{text, r, nullptr}}, prompt_tokens, completion_tokens);
}

json stream_chunk(Endpoint e, const ResponseMeta& m, const std::string& text, FinishReason r, int index,
                  const json& logprobs) {
  json body;
  if (e == Endpoint::Completions) {
    body = envelope("text_completion", m);
    body["choices"] = json::array(
        {{{"index", index}, {"text", text}, {"logprobs", logprobs}, {"finish_reason", finish_reason_json(r)}}});
  } else {
    body = envelope("chat.completion.chunk", m);
    json delta = json::object();
    if (r == FinishReason::None) delta["content"] = text;
    body["choices"] = json::array(
        {{{"index", index}, {"delta", delta}, {"logprobs", logprobs}, {"finish_reason", finish_reason_json(r)}}});
  }
  return body;
}

json role_chunk(const ResponseMeta& m, int index) {
  json body = envelope("chat.completion.chunk", m);
  body["choices"] = json::array({{{"index", index},
                                  {"delta", {{"role", "assistant"}, {"content", ""}}},
                                  {"logprobs", nullptr},
                                  {"finish_reason", nullptr}}});
  return body;
}

namespace {
json tool_call_delta_chunk(const ResponseMeta& m, int index, json call) {
  json body = envelope("chat.completion.chunk", m);
  body["choices"] = json::array({{{"index", index},
                                  {"delta", {{"tool_calls", json::array({std::move(call)})}}},
                                  {"logprobs", nullptr},
                                  {"finish_reason", nullptr}}});
  return body;
}
}  // namespace

json tool_call_start_chunk(const ResponseMeta& m, int index, int call, const std::string& id, const std::string& name) {
  return tool_call_delta_chunk(
      m, index, {{"index", call}, {"id", id}, {"type", "function"}, {"function", {{"name", name}, {"arguments", ""}}}});
}

json tool_call_arguments_chunk(const ResponseMeta& m, int index, int call, const std::string& arguments) {
  return tool_call_delta_chunk(m, index, {{"index", call}, {"function", {{"arguments", arguments}}}});
}

json tool_calls_end_chunk(const ResponseMeta& m, int index) {
  json body = envelope("chat.completion.chunk", m);
  body["choices"] = json::array(
      {{{"index", index}, {"delta", json::object()}, {"logprobs", nullptr}, {"finish_reason", "tool_calls"}}});
  return body;
}

json usage_chunk(Endpoint e, const ResponseMeta& m, int64_t prompt_tokens, int64_t completion_tokens) {
  json body = envelope(e == Endpoint::Completions ? "text_completion" : "chat.completion.chunk", m);
  body["choices"] = json::array();
  body["usage"] = usage_json(prompt_tokens, completion_tokens);
  return body;
}

json model_object(const std::string& model_id, int64_t created) {
  return {{"id", model_id}, {"object", "model"}, {"created", created}, {"owned_by", "duo"}};
}

json models_body(const std::string& model_id, int64_t created) {
  return {{"object", "list"}, {"data", json::array({model_object(model_id, created)})}};
}

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string sse_event(const json& j) { return "data: " + dump(j) + "\n\n"; }

}  // namespace duo::serve
