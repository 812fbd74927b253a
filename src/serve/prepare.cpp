#include "serve/prepare.h"

#include <random>

#include "core/error.h"
#include "serve/api_error.h"
#include "serve/tool_calls.h"
#include "tokenizer/tokenizer.h"

namespace duo::serve {

namespace {

using ojson = nlohmann::ordered_json;
const ojson kNoTools;

HeadPlan request_kinds(const GenerationRequest& r, const ServeContext& ctx) {
  Engine& engine = *ctx.engine;
  const ModelConfig& c = engine.backend().config();
  const AttentionMode mode = r.attention.value_or(engine.options().attention);
  StreamingWindow w = engine.options().window;
  if (r.sink) w.sink = *r.sink;
  if (r.recent) w.recent = *r.recent;
  switch (mode) {
    case AttentionMode::Full: return HeadPlan::uniform(c.n_layers, c.n_kv_heads, HeadKind::Retrieval, w);
    case AttentionMode::Streaming: return HeadPlan::uniform(c.n_layers, c.n_kv_heads, HeadKind::Streaming, w);
    case AttentionMode::Duo: break;
  }
  const bool own_pattern = r.pattern_name || r.pattern_gates || r.retrieval_ratio || r.threshold;
  if (!own_pattern && engine.options().attention == AttentionMode::Duo) {
    HeadPlan p = engine.plan();  // the server's pattern, already in slot order
    p.window = w;
    return p;
  }
  const GateMatrix* gates = nullptr;
  std::string origin;
  if (r.pattern_gates) {
    gates = &*r.pattern_gates;
    origin = "request pattern";
  } else {
    const std::string name = r.pattern_name.value_or(ctx.default_pattern);
    if (name.empty())
      bad_param("pattern", "\"attention\": \"duo\" needs a head pattern: give 'pattern' (a name the server loaded, "
                           "or a gate matrix); this server has no default");
    auto it = ctx.patterns.find(name);
    if (it == ctx.patterns.end()) {
      std::string known;
      for (const auto& [n, g] : ctx.patterns) known += (known.empty() ? "" : ", ") + n;
      bad_param("pattern", "unknown pattern '{}' (this server has: {})", name, known.empty() ? "none" : known);
    }
    gates = &it->second;
    origin = "pattern '" + name + "'";
  }
  try {
    const double ratio = r.retrieval_ratio ? *r.retrieval_ratio : (r.threshold ? -1.0 : ctx.default_retrieval_ratio);
    const float threshold = r.threshold.value_or(ctx.default_threshold);
    const auto kinds = ratio >= 0 ? binarize_ratio(*gates, ratio, ctx.ratio_policy) : binarize_threshold(*gates, threshold);
    return engine.to_slot_order(make_head_plan(kinds, c.n_layers, c.n_kv_heads, w, origin));
  } catch (const Error& e) {
    bad_param("pattern", "{}", e.what());
  }
}

// The request's head plan, stored as the server's KV type says.
HeadPlan request_plan(const GenerationRequest& r, const ServeContext& ctx) {
  HeadPlan p = request_kinds(r, ctx);
  p.kv_type = ctx.engine->options().kv_type;
  return p;
}

const char* prompt_param(const GenerationRequest& r) {
  return r.endpoint == Endpoint::ChatCompletions ? "messages" : "prompt";
}

// The context-length refusals. `at_least`: P is a lower bound on the prompt's length, found
// before tokenizing it (the same refusal, cheaper).
void check_context(const GenerationRequest& r, int64_t P, int64_t limit, bool at_least) {
  const char* has = at_least ? "at least " : "";
  if (P >= limit)
    throw ApiError(400, "invalid_request_error",
                   fmt::format("the prompt has {}{} tokens; this model's context limit is {} tokens, which leaves no "
                               "room to generate",
                               has, P, limit),
                   prompt_param(r), "context_length_exceeded");
  if (r.max_tokens && P + *r.max_tokens > limit)
    throw ApiError(400, "invalid_request_error",
                   fmt::format("this model's context limit is {} tokens, but the prompt has {}{} tokens and "
                               "max_tokens asks for {} more",
                               limit, has, P, *r.max_tokens),
                   "max_tokens", "context_length_exceeded");
}

}  // namespace

std::vector<int32_t> prompt_tokens(const GenerationRequest& r, const ServeContext& ctx) {
  const Tokenizer& tok = ctx.engine->tokenizer();
  const int n_vocab = ctx.engine->backend().config().n_vocab;
  const int64_t limit = ctx.engine->max_context();
  // Text that cannot fit whatever its tokens turn out to be is refused before tokenizing it
  // (tokenizing megabytes costs seconds): Tokenizer::min_tokens never overestimates.
  auto refuse_early = [&](std::string_view text, int64_t extra) {
    check_context(r, (int64_t)tok.min_tokens(text) + extra, limit, true);
  };
  std::vector<int32_t> ids;
  if (r.endpoint == Endpoint::ChatCompletions) {
    if (!ctx.chat)
      throw ApiError(400, "invalid_request_error",
                     fmt::format("this model has no chat template duo can render ({}); use /v1/completions",
                                 ctx.chat_error),
                     "messages");
    std::vector<PromptPart> parts;
    try {
      // Tools go to a template that renders them; one that does not gets them (and the tool
      // turns) folded into its plain messages in the Hermes format. tool_choice none: no tools.
      const ojson& tools = r.tool_choice == ToolChoice::None ? kNoTools : r.tools;
      bool tool_turns = false;
      for (const auto& m : r.messages) tool_turns = tool_turns || m.role == "tool" || !m.tool_calls.is_null();
      if ((!tools.is_null() || tool_turns) && !template_knows_tools(*ctx.chat))
        parts = render_chat_template(*ctx.chat, hermes_messages(r.messages, tools), true);
      else
        parts = render_chat_template(*ctx.chat, r.messages, true, tools);
    } catch (const Error& e) {
      bad_param("messages", "{}", e.what());
    }
    std::string text;
    for (const auto& p : parts) text += p.text;
    refuse_early(text, 0);
    // Only the template's markers become special tokens; message content is text.
    ids = tok.encode_parts(parts, false);
  } else if (r.prompt_is_tokens) {
    for (size_t i = 0; i < r.prompt_tokens.size(); ++i)
      if (r.prompt_tokens[i] >= n_vocab)
        bad_param("prompt", "token id {} at index {} is outside the vocabulary (0..{})", r.prompt_tokens[i], i,
                  n_vocab - 1);
    ids = r.prompt_tokens;
  } else {
    const bool bos = tok.vocab().add_bos && tok.vocab().bos >= 0;
    refuse_early(r.prompt, bos ? 1 : 0);
    ids = tok.encode(r.prompt, tok.vocab().add_bos, r.parse_special);
  }
  if (ids.empty()) bad_param(prompt_param(r), "the prompt is empty");
  return ids;
}

Job prepare_job(const GenerationRequest& r, const ServeContext& ctx) {
  if (r.model != ctx.model_id)
    throw ApiError(404, "invalid_request_error",
                   fmt::format("the model '{}' does not exist; this server has '{}'", r.model, ctx.model_id), "model",
                   "model_not_found");
  Job job;
  job.prompt = prompt_tokens(r, ctx);
  const int64_t limit = ctx.engine->max_context(), P = (int64_t)job.prompt.size();
  check_context(r, P, limit, false);
  job.max_tokens = r.max_tokens ? *r.max_tokens : std::min(ctx.default_max_tokens, limit - P);
  job.plan = request_plan(r, ctx);
  job.sampling = r.sampling;
  if (!r.seed_given) {
    std::random_device rd;
    job.sampling.seed = (uint64_t)rd() << 32 | rd();
  }
  const int n_vocab = ctx.engine->backend().config().n_vocab;
  for (const auto& [id, b] : job.sampling.adjust.logit_bias)
    if (id >= n_vocab)
      bad_param("logit_bias", "'logit_bias' names token id {}, outside the vocabulary (0..{})", id, n_vocab - 1);
  job.top_logprobs = r.top_logprobs;
  job.json = r.json_schema;
  job.ignore_eos = r.ignore_eos;
  job.stop = r.stop;
  return job;
}

}  // namespace duo::serve
