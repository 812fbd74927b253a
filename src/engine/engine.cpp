#include "duo/engine.h"

#include "core/error.h"
#include "core/thread_pool.h"
#include "engine/backend.h"
#include "engine/utf8_stream.h"
#include "io/head_pattern.h"
#include "model/model.h"
#include "tokenizer/model_tokenizer.h"
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
  tokenizer_ = tokenizer_of(*model_);
  pool_ = std::make_unique<ThreadPool>(opts.threads);
  const ModelConfig& c = model_->config();
  DUO_CHECK(opts.chunk > 0, "chunk size must be positive (got {})", opts.chunk);
  DUO_CHECK(c.sliding_window == 0 || max_context() <= c.sliding_window,
            "a context of {} tokens is beyond the model's sliding window of {} (sliding-window attention is not "
            "implemented: the context is limited to the window)",
            max_context(), c.sliding_window);
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
  plan_.kv_type = opts.kv_type;
  // Checked whatever the device (the CPU backend checks it again).
  DUO_CHECK(opts.act_bits == 16 || opts.act_bits == 8, "activation bits must be 16 or 8 (got {})", opts.act_bits);
  // The CUDA backend copies the (reordered) weights to the GPU once, here.
  backend_ = opts.device == Device::Cuda ? make_cuda_backend(*model_, opts.gpu_weights)
                                          : make_cpu_backend(*model_, *pool_, opts.act_bits);
}

Engine::~Engine() = default;

int64_t Engine::max_context() const {
  return opts_.max_context > 0 ? opts_.max_context : model_->config().n_ctx_train;
}

HeadPlan Engine::to_slot_order(const HeadPlan& plan) const { return model_->to_slot_order(plan); }

std::unique_ptr<Session> Engine::new_session() { return std::make_unique<Session>(*this); }

namespace {
void check_room(const SequenceState& s, const std::vector<int32_t>& tokens, int64_t limit) {
  DUO_CHECK(!tokens.empty(), "nothing to feed: the token list is empty");
  DUO_CHECK(s.n_past() + (int64_t)tokens.size() <= limit,
            "sequence of {} tokens exceeds the context limit of {} tokens ({} already in the cache)",
            s.n_past() + (int64_t)tokens.size(), limit, s.n_past());
}
}  // namespace

Session::Session(Engine& engine)
    : engine_(engine), state_(engine.backend().new_sequence(engine.plan(), engine.max_context())) {}
Session::~Session() = default;

int64_t Session::n_past() const { return state_->n_past(); }

void Session::reset() { state_->clear(); }

const std::vector<float>& Session::feed(const std::vector<int32_t>& tokens) {
  check_room(*state_, tokens, engine_.max_context());
  logits_.resize(engine_.model().config().n_vocab);
  engine_.backend().forward(*state_, tokens.data(), (int64_t)tokens.size(), logits_.data(), engine_.options().chunk);
  return logits_;
}

// Feeds tokens and picks the next one (on the device for CUDA: no logits copied to the host).
int32_t Session::pick(const std::vector<int32_t>& tokens, Sampler& sampler) {
  check_room(*state_, tokens, engine_.max_context());
  return engine_.backend().forward_pick(*state_, tokens.data(), (int64_t)tokens.size(), engine_.options().chunk,
                                        sampler);
}

GenerationStats Session::generate(const std::vector<int32_t>& prompt, int max_tokens, Sampler& sampler,
                                  const TokenCallback& on_token, const PrefillCallback& on_prefill) {
  using clock = std::chrono::steady_clock;
  GenerationStats st;
  st.prompt_tokens = (int64_t)prompt.size();
  const Tokenizer& tok = engine_.tokenizer();
  auto t0 = clock::now();
  // With a progress callback the prompt is fed here chunk by chunk (the backend splits at the
  // same boundaries, so the result is the same) and the last chunk goes to pick() below.
  std::vector<int32_t> rest;
  const std::vector<int32_t>* last = &prompt;
  const int64_t n = (int64_t)prompt.size(), chunk = engine_.options().chunk;
  if (on_prefill && n > chunk) {
    check_room(*state_, prompt, engine_.max_context());
    int64_t done = 0;
    for (; n - done > chunk; done += chunk) {
      engine_.backend().forward(*state_, prompt.data() + done, chunk, nullptr, chunk);
      if (!on_prefill(done + chunk, n)) {
        st.prefill_stopped = true;
        st.prompt_tokens = done + chunk;
        st.prefill_seconds = std::chrono::duration<double>(clock::now() - t0).count();
        return st;
      }
    }
    rest.assign(prompt.begin() + done, prompt.end());
    last = &rest;
  }
  int32_t id = -1;
  if (max_tokens > 0)
    id = pick(*last, sampler);
  else
    feed(*last);
  st.prefill_seconds = std::chrono::duration<double>(clock::now() - t0).count();
  if (on_prefill) on_prefill(n, n);
  Utf8Stream utf8;
  t0 = clock::now();
  for (int i = 0; i < max_tokens; ++i) {
    if (tok.is_eog(id)) {
      st.stopped_by_eog = true;
      break;
    }
    ++st.generated_tokens;
    const bool go_on = on_token(id, utf8.push(tok.token_to_piece(id)));
    if (!go_on || i + 1 == max_tokens || state_->n_past() >= engine_.max_context()) break;
    id = pick({id}, sampler);
  }
  st.decode_seconds = std::chrono::duration<double>(clock::now() - t0).count();
  const std::string tail = utf8.flush();
  if (!tail.empty()) on_token(-1, tail);
  st.kv_bytes = state_->kv_bytes();
  st.kv_bytes_retrieval = state_->kv_bytes(HeadKind::Retrieval);
  st.kv_bytes_streaming = state_->kv_bytes(HeadKind::Streaming);
  return st;
}

}  // namespace duo
