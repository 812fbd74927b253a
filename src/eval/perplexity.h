// Perplexity of the model on the project's generated prose (eval/haystack.h): the cost of an
// attention mode or KV cache type measured as next-token log-likelihood, not only retrieval.
// The text is fed in pre-fill chunks exactly as inference runs it (streaming heads pruned to
// sink + recent between chunks), and each chunk's logits score the tokens that follow.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace duo {

class Engine;
class Tokenizer;

// The scored text: BOS (where the vocabulary has one), then generated prose, `length` tokens.
std::vector<int32_t> perplexity_tokens(const Tokenizer& tok, int64_t length, uint64_t seed);

struct PerplexityOptions {
  int64_t length = 4096;   // tokens of text (BOS included where the vocabulary has one)
  int64_t chunk = 512;     // tokens a forward pass (also bounds the logits buffer: chunk x n_vocab floats)
  int64_t tail_from = 0;   // tokens at positions >= tail_from are also scored separately (0: length / 2)
  uint64_t seed = 1;       // haystack text seed
};

struct PerplexityResult {
  int64_t scored = 0, tail_scored = 0;  // predicted tokens (length - 1) and those past tail_from
  int64_t tail_from = 0;
  double nll = 0.0, tail_nll = 0.0;     // mean negative log-likelihood (nats a token)
  double ppl = 0.0, tail_ppl = 0.0;     // exp(nll)
  double seconds = 0.0;
  size_t kv_bytes = 0;
};

// `progress(done, total)` is called after every chunk (tokens fed so far, length).
PerplexityResult run_perplexity(Engine& engine, const PerplexityOptions& opts,
                                const std::function<void(int64_t, int64_t)>& progress = {});

// The same on given tokens (a user's own text, tokenized): opts.length and opts.seed are unused,
// the length is ids.size().
PerplexityResult run_perplexity(Engine& engine, const std::vector<int32_t>& ids, const PerplexityOptions& opts,
                                const std::function<void(int64_t, int64_t)>& progress = {});

// The result as one JSON object (model, mode, length, ppl, nll, scored, tail_*, kv_bytes, seconds).
void write_perplexity_json(const PerplexityResult& r, const std::string& model, const std::string& mode,
                           int64_t length, const std::string& path);

}  // namespace duo
