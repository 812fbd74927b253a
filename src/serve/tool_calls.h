// Tool calling on /v1/chat/completions: what the model is shown, what constrains a forced
// call, and how its answer becomes OpenAI `tool_calls`.
//
// The call format is Hermes / Qwen2.5's, which the Qwen templates render themselves:
//   <tool_call>
//   {"name": "get_weather", "arguments": {"city": "Paris"}}
//   </tool_call>
// A template that knows nothing of tools (SmolLM2's prints only role and content) gets the same
// format folded into plain messages (hermes_messages): the tool list and its instructions in
// the system message (Qwen2.5's wording), earlier calls as <tool_call> text of the assistant's
// turn, tool results as a user turn of <tool_response> blocks.
//
// tool_choice "required" / a named function: generation is constrained to a JSON schema, as
// vLLM does it. Named: the function's parameters (the text is the arguments object). Required:
// {"name": <one of the tools>, "arguments": <that tool's parameters>}. Parameters that leave
// additionalProperties out get it false at their top level (a small model otherwise invents keys
// until max_tokens).
#pragma once
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "serve/json_schema.h"
#include "serve/request.h"
#include "tokenizer/chat_template.h"

namespace duo::serve {

// The schema a forced tool_choice (Required, Named) constrains the answer to. Throws
// SchemaError for a tool's parameters the recogniser does not support.
std::shared_ptr<const CompiledSchema> forced_tool_schema(const GenerationRequest& r);

// Whether a chat template renders tools itself (it reads the `tools` variable).
bool template_knows_tools(const ChatTemplate& t);

// The conversation with tools and tool turns folded into system / user / assistant text in
// the Hermes format, for templates that do not know tools. `tools` may be null (no tool list).
std::vector<ChatMessage> hermes_messages(const std::vector<ChatMessage>& messages, const nlohmann::ordered_json& tools);

// A choice's answer, shaped: tool calls (OpenAI's [{"id": "call_...", "type": "function",
// "function": {"name", "arguments": JSON text}}]) and the text outside them (content_null when
// there is none), or, when the answer holds no well-formed call, the text as it came.
struct ToolAnswer {
  bool is_call = false;
  std::string content;
  bool content_null = false;
  nlohmann::json tool_calls;  // array when is_call
};

// Hermes-format calls in `text` (Auto). Every <tool_call> block must hold a JSON object with a
// string "name" among `names` and object "arguments"; otherwise the text is plain content.
// Without tags, an answer that is only such an object (bare or in a ```json fence) is a call.
ToolAnswer parse_hermes_calls(const std::string& text, const std::vector<std::string>& names);

// One <tool_call> block's body (blanks around it allowed) as a call, or null when it is not
// one: what parse_hermes_calls accepts for each block.
nlohmann::json parse_call_body(const std::string& body, const std::vector<std::string>& names);

// The answer of a request with tools: parsed as its tool_choice says. `complete`: generation
// ended by itself (a forced call cut by max_tokens is not a call).
ToolAnswer shape_tool_answer(const GenerationRequest& r, const std::string& text, bool complete);

// "call_" and 24 random hex digits, as OpenAI's ids look.
std::string new_tool_call_id();

}  // namespace duo::serve
