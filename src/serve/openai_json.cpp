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

json completion_body(Endpoint e, const ResponseMeta& m, const std::string& text, FinishReason r, int64_t prompt_tokens,
                     int64_t completion_tokens) {
  json body;
  if (e == Endpoint::Completions) {
    body = envelope("text_completion", m);
    body["choices"] = json::array(
        {{{"index", 0}, {"text", text}, {"logprobs", nullptr}, {"finish_reason", finish_reason_json(r)}}});
  } else {
    body = envelope("chat.completion", m);
    body["choices"] = json::array({{{"index", 0},
                                    {"message", {{"role", "assistant"}, {"content", text}}},
                                    {"logprobs", nullptr},
                                    {"finish_reason", finish_reason_json(r)}}});
  }
  body["usage"] = usage_json(prompt_tokens, completion_tokens);
  return body;
}

json stream_chunk(Endpoint e, const ResponseMeta& m, const std::string& text, FinishReason r) {
  json body;
  if (e == Endpoint::Completions) {
    body = envelope("text_completion", m);
    body["choices"] = json::array(
        {{{"index", 0}, {"text", text}, {"logprobs", nullptr}, {"finish_reason", finish_reason_json(r)}}});
  } else {
    body = envelope("chat.completion.chunk", m);
    json delta = json::object();
    if (r == FinishReason::None) delta["content"] = text;
    body["choices"] = json::array(
        {{{"index", 0}, {"delta", delta}, {"logprobs", nullptr}, {"finish_reason", finish_reason_json(r)}}});
  }
  return body;
}

json role_chunk(const ResponseMeta& m) {
  json body = envelope("chat.completion.chunk", m);
  body["choices"] = json::array({{{"index", 0},
                                  {"delta", {{"role", "assistant"}, {"content", ""}}},
                                  {"logprobs", nullptr},
                                  {"finish_reason", nullptr}}});
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
