// Turns a parsed request into a scheduler Job for one loaded model: checks the model name,
// renders the chat template, tokenizes, applies the context limit, builds the request's head
// plan (attention mode, window, pattern) and sampling settings. Errors are ApiErrors.
#pragma once
#include <map>
#include <optional>
#include <string>

#include "duo/engine.h"
#include "io/head_pattern.h"
#include "serve/request.h"
#include "serve/scheduler.h"
#include "tokenizer/chat_template.h"

namespace duo::serve {

// What the server was started with, beyond the Engine's options.
struct ServeContext {
  Engine* engine = nullptr;
  std::string model_id;                      // the name clients must ask for
  std::optional<ChatTemplate> chat;          // empty: the model's template is not one duo renders
  std::string chat_error;                    // why not
  int64_t default_max_tokens = 256;          // when a request gives none (capped by the context)
  std::map<std::string, GateMatrix> patterns;  // duo patterns requests may name
  std::string default_pattern;               // name in `patterns` used by duo requests that name none
  double default_retrieval_ratio = -1;       // < 0: binarize by threshold
  RatioPolicy ratio_policy;                  // how a retrieval ratio picks heads (--ratio-policy)
  float default_threshold = 0.5f;
};

// The prompt as token ids, as `duo generate` makes them (chat: the template's markers are the
// only special tokens, message content is text, no extra BOS; completion: the vocabulary's BOS
// rule, special-token text stays text unless the request sets parse_special). A prompt whose
// bytes alone prove it cannot fit the context is refused before it is tokenized (the same 400
// context_length_exceeded as after tokenizing).
std::vector<int32_t> prompt_tokens(const GenerationRequest& r, const ServeContext& ctx);

Job prepare_job(const GenerationRequest& r, const ServeContext& ctx);

}  // namespace duo::serve
