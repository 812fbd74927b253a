#include "duo/engine.h"

#include "core/error.h"
#include "core/thread_pool.h"
#include "engine/utf8_stream.h"
#include "io/gguf.h"
#include "io/head_pattern.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace duo {

AttentionMode parse_attention_mode(const std::string& s) {
  if (s == "full") return AttentionMode::Full;
  if (s == "streaming") return AttentionMode::Streaming;
  if (s == "duo") return AttentionMode::Duo;
  fail("unknown attention mode '{}' (expected full, streaming or duo)", s);
}

const char* to_string(AttentionMode m) {
  switch (m) {
    case AttentionMode::Full: return "full";
    case AttentionMode::Streaming: return "streaming";
    case AttentionMode::Duo: return "duo";
  }
  return "?";
}

Engine::Engine(const EngineOptions& opts) : opts_(opts) {
  DUO_CHECK(!opts.model_path.empty(), "no model given");
  model_ = Model::load(opts.model_path);
  tokenizer_ = Tokenizer::from_gguf(model_->gguf());
  pool_ = std::make_unique<ThreadPool>(opts.threads);
  const ModelConfig& c = model_->config();
  DUO_CHECK(opts.chunk > 0, "chunk size must be positive (got {})", opts.chunk);
  switch (opts.attention) {
    case AttentionMode::Full:
      plan_ = HeadPlan::uniform(c.n_layers, c.n_kv_heads, HeadKind::Retrieval, opts.window);
      break;
    case AttentionMode::Streaming:
      plan_ = HeadPlan::uniform(c.n_layers, c.n_kv_heads, HeadKind::Streaming, opts.window);
      break;
    case AttentionMode::Duo:
      DUO_CHECK(!opts.plan.kinds.empty(), "attention mode 'duo' needs a head pattern (--pattern FILE)");
      plan_ = make_head_plan(opts.plan.kinds, c.n_layers, c.n_kv_heads, opts.window, opts.pattern_origin);
      // Retrieval heads first in every layer (weights, cache and attention loops).
      plan_ = model_->reorder_heads(plan_);
      break;
  }
}

Engine::~Engine() = default;

int64_t Engine::max_context() const {
  return opts_.max_context > 0 ? opts_.max_context : model_->config().n_ctx_train;
}

std::unique_ptr<Session> Engine::new_session() { return std::make_unique<Session>(*this); }

Session::Session(Engine& engine) : engine_(engine), cache_(engine.model().new_cache(engine.plan())) {}
Session::~Session() = default;

int64_t Session::n_past() const { return cache_->n_past(); }

void Session::reset() { cache_->clear(); }

const std::vector<float>& Session::feed(const std::vector<int32_t>& tokens) {
  DUO_CHECK(!tokens.empty(), "nothing to feed: the token list is empty");
  const int64_t limit = engine_.max_context();
  DUO_CHECK(cache_->n_past() + (int64_t)tokens.size() <= limit,
            "sequence of {} tokens exceeds the context limit of {} tokens ({} already in the cache)",
            cache_->n_past() + (int64_t)tokens.size(), limit, cache_->n_past());
  logits_.resize(engine_.model().config().n_vocab);
  engine_.model().forward(*cache_, tokens.data(), (int64_t)tokens.size(), logits_.data(), engine_.pool(), false,
                          engine_.options().chunk);
  return logits_;
}

GenerationStats Session::generate(const std::vector<int32_t>& prompt, int max_tokens, Sampler& sampler,
                                  const TokenCallback& on_token) {
  using clock = std::chrono::steady_clock;
  GenerationStats st;
  st.prompt_tokens = (int64_t)prompt.size();
  const Tokenizer& tok = engine_.tokenizer();
  const int n_vocab = engine_.model().config().n_vocab;
  auto t0 = clock::now();
  feed(prompt);
  st.prefill_seconds = std::chrono::duration<double>(clock::now() - t0).count();
  Utf8Stream utf8;
  t0 = clock::now();
  for (int i = 0; i < max_tokens; ++i) {
    const int32_t id = sampler.sample(logits_.data(), n_vocab);
    if (tok.is_eog(id)) {
      st.stopped_by_eog = true;
      break;
    }
    ++st.generated_tokens;
    const bool go_on = on_token(id, utf8.push(tok.token_to_piece(id)));
    if (!go_on || i + 1 == max_tokens || cache_->n_past() >= engine_.max_context()) break;
    feed({id});
  }
  st.decode_seconds = std::chrono::duration<double>(clock::now() - t0).count();
  const std::string tail = utf8.flush();
  if (!tail.empty()) on_token(-1, tail);
  st.kv_bytes = cache_->bytes();
  st.kv_bytes_retrieval = cache_->bytes(HeadKind::Retrieval);
  st.kv_bytes_streaming = cache_->bytes(HeadKind::Streaming);
  return st;
}

}  // namespace duo
