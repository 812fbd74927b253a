// An OpenAI-style generation request (/v1/completions or /v1/chat/completions), parsed from
// its JSON body and checked field by field: wrong types, out-of-range values and options this
// server does not implement are ApiErrors naming the field. Fields it does not know at all are
// ignored and listed (ignored_fields), as vLLM and llama.cpp accept them.
//
// duo's own options ride along as extra top-level fields (the openai client's `extra_body`):
//   attention        "full" | "streaming" | "duo"
//   sink, recent     streaming-head window (attention sinks, recent tokens)
//   pattern          duo head pattern: the name of one the server loaded, or an inline gate
//                    matrix (array of layers, each an array of KV-head gates in [0, 1])
//   retrieval_ratio  binarize the pattern keeping this fraction of heads as retrieval heads
//   threshold        or: gates >= threshold are retrieval heads
//   top_k            sampling cut (0: off)
//   min_p, repetition_penalty   as vLLM and llama.cpp take them
//   ignore_eos       as vLLM takes it: an end-of-generation token is counted (not shown) and
//                    generation goes on to max_tokens (benchmarks of a fixed output length)
//   parse_special    completions only: true makes special-token text in the prompt (e.g.
//                    "<|im_start|>") those tokens; by default (false) it is plain text. Chat
//                    requests have no such option: there the template's own markers are the
//                    only special tokens and message content is always text.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "duo/engine.h"
#include "io/head_pattern.h"
#include "duo/sampler.h"
#include "serve/json_schema.h"
#include "tokenizer/chat_template.h"

namespace duo::serve {

enum class Endpoint { Completions, ChatCompletions };

// tool_choice: None (the default without tools: no tools in the prompt, no parsing), Auto (the
// default with tools: the model decides, calls in its template's format are parsed), Required
// (one call of some tool, its JSON constrained) and Named (one call of `tool_name`).
enum class ToolChoice { None, Auto, Required, Named };
const char* endpoint_path(Endpoint e);

struct GenerationRequest {
  Endpoint endpoint = Endpoint::Completions;
  std::string model;
  // Completions: the prompt as text, or as token ids when prompt_is_tokens.
  std::string prompt;
  std::vector<int32_t> prompt_tokens;
  bool prompt_is_tokens = false;
  bool parse_special = false;  // completions: special-token text in `prompt` becomes those tokens
  // Chat completions: the conversation.
  std::vector<ChatMessage> messages;

  std::optional<int64_t> max_tokens;
  SamplerConfig sampling;
  bool seed_given = false;
  std::vector<std::string> stop;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  int n = 1;                   // choices, each its own sequence
  int top_logprobs = -1;       // -1: no logprobs; else the chosen token's and this many alternatives
  bool json_object = false;    // chat response_format {"type": "json_object"}
  // The schema generation must follow: {"type": "json_schema"}'s schema, or any object for
  // json_object; null for plain text.
  std::shared_ptr<const CompiledSchema> json_schema;
  // Chat tools as the request gave them, key order kept (the template prints them): an array
  // of {"type": "function", "function": {"name", "description", "parameters"}}; null: none.
  nlohmann::ordered_json tools;
  ToolChoice tool_choice = ToolChoice::None;
  std::string tool_name;       // ToolChoice::Named
  bool ignore_eos = false;     // end-of-generation tokens do not end the generation
  std::vector<std::string> ignored_fields;  // top-level fields this server does not know

  // duo options (unset: the server's defaults)
  std::optional<AttentionMode> attention;
  std::optional<int> sink, recent;
  std::optional<std::string> pattern_name;
  std::optional<GateMatrix> pattern_gates;
  std::optional<double> retrieval_ratio;
  std::optional<float> threshold;
};

// Limits on what a body may ask for (beyond the model's context, checked later).
constexpr size_t kMaxStopStrings = 16;
constexpr size_t kMaxStopLength = 256;
constexpr int kMaxChoices = 16;
constexpr int kMaxTopLogprobs = 20;

// Parses and validates a request body. Throws ApiError (400) with the offending field.
GenerationRequest parse_request(Endpoint endpoint, const std::string& body);

// llama.cpp's /tokenize body: {"content": text, "add_special": false, "parse_special": true,
// "with_pieces": false} (its defaults).
struct TokenizeRequest {
  std::string content;
  bool add_special = false;
  bool parse_special = true;
  bool with_pieces = false;
};
TokenizeRequest parse_tokenize(const std::string& body);
// /detokenize: {"tokens": [ids]}, each id checked against the vocabulary size.
std::vector<int32_t> parse_detokenize(const std::string& body, int32_t n_vocab);

}  // namespace duo::serve
