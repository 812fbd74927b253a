#include "eval/perplexity.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <vector>

#include "core/error.h"
#include "duo/engine.h"
#include "engine/backend.h"
#include "eval/haystack.h"
#include "tokenizer/tokenizer.h"

namespace duo {

std::vector<int32_t> perplexity_tokens(const Tokenizer& tok, int64_t length, uint64_t seed) {
  std::vector<int32_t> ids = tok.encode("", tok.vocab().add_bos, false);
  for (uint64_t s = seed; (int64_t)ids.size() < length; ++s)
    for (const auto& text : haystack_sentences(64, s)) {
      const auto piece = tok.encode(" " + text, false, false);
      ids.insert(ids.end(), piece.begin(), piece.end());
    }
  ids.resize((size_t)length);
  return ids;
}

namespace {

// -log softmax(logits)[target], in double.
double token_nll(const float* logits, int64_t n_vocab, int32_t target) {
  const float mx = *std::max_element(logits, logits + n_vocab);
  double sum = 0.0;
  for (int64_t i = 0; i < n_vocab; ++i) sum += std::exp((double)logits[i] - mx);
  return std::log(sum) - ((double)logits[target] - mx);
}

}  // namespace

PerplexityResult run_perplexity(Engine& engine, const PerplexityOptions& o,
                                const std::function<void(int64_t, int64_t)>& progress) {
  DUO_CHECK(o.length >= 2, "perplexity: need at least 2 tokens (got --length {})", o.length);
  DUO_CHECK(o.length <= engine.max_context(), "perplexity: --length {} is longer than the context limit {}", o.length,
            engine.max_context());
  return run_perplexity(engine, perplexity_tokens(engine.tokenizer(), o.length, o.seed), o, progress);
}

PerplexityResult run_perplexity(Engine& engine, const std::vector<int32_t>& ids, const PerplexityOptions& opts,
                                const std::function<void(int64_t, int64_t)>& progress) {
  PerplexityOptions o = opts;
  o.length = (int64_t)ids.size();
  DUO_CHECK(o.length >= 2, "perplexity: need at least 2 tokens (the text has {})", o.length);
  DUO_CHECK(o.chunk >= 1, "perplexity: chunk must be positive");
  DUO_CHECK(o.length <= engine.max_context(), "perplexity: the text's {} tokens are longer than the context limit {}",
            o.length, engine.max_context());
  const int64_t n_vocab = engine.backend().config().n_vocab;
  PerplexityResult r;
  r.tail_from = o.tail_from > 0 ? o.tail_from : o.length / 2;
  auto session = engine.new_session();
  std::vector<float> logits;
  double sum = 0.0, tail_sum = 0.0;
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t p = 0; p < o.length; p += o.chunk) {
    const int64_t n = std::min(o.chunk, o.length - p);
    logits.resize((size_t)(n * n_vocab));
    engine.backend().forward(session->state(), ids.data() + p, n, logits.data(), o.chunk, true);
    // logits row i predicts token p + i + 1.
    for (int64_t i = 0; i < n && p + i + 1 < o.length; ++i) {
      const int64_t target_pos = p + i + 1;
      const double nll = token_nll(logits.data() + i * n_vocab, n_vocab, ids[(size_t)target_pos]);
      DUO_CHECK(std::isfinite(nll), "perplexity: non-finite log-likelihood at position {}", target_pos);
      sum += nll, ++r.scored;
      if (target_pos >= r.tail_from) tail_sum += nll, ++r.tail_scored;
    }
    if (progress) progress(p + n, o.length);
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.kv_bytes = session->state().kv_bytes();
  r.nll = sum / r.scored;
  r.ppl = std::exp(r.nll);
  if (r.tail_scored) r.tail_nll = tail_sum / r.tail_scored, r.tail_ppl = std::exp(r.tail_nll);
  return r;
}

void write_perplexity_json(const PerplexityResult& r, const std::string& model, const std::string& mode,
                           int64_t length, const std::string& path) {
  const nlohmann::json j = {{"model", model},           {"mode", mode},
                            {"length", length},         {"ppl", r.ppl},
                            {"nll", r.nll},             {"scored", r.scored},
                            {"tail_from", r.tail_from}, {"tail_ppl", r.tail_ppl},
                            {"tail_nll", r.tail_nll},   {"tail_scored", r.tail_scored},
                            {"kv_bytes", r.kv_bytes},   {"seconds", r.seconds}};
  std::ofstream f(path);
  DUO_CHECK(f.good(), "cannot write '{}'", path);
  f << j.dump(2) << "\n";
}

}  // namespace duo
