#include "duo/sampler.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace duo {

Sampler::Sampler(SamplerConfig cfg) : cfg_(cfg), rng_(cfg.seed) {
  DUO_CHECK(std::isfinite(cfg.temperature), "temperature must be a finite number");
  DUO_CHECK(cfg.top_k >= 0, "top-k must be >= 0 (got {})", cfg.top_k);
  DUO_CHECK(cfg.top_p > 0.0f && cfg.top_p <= 1.0f, "top-p must be in (0, 1] (got {})", cfg.top_p);
  DUO_CHECK(cfg.min_p >= 0.0f && cfg.min_p <= 1.0f, "min-p must be in [0, 1] (got {})", cfg.min_p);
  DUO_CHECK(std::isfinite(cfg.adjust.repetition_penalty) && cfg.adjust.repetition_penalty > 0.0f,
            "the repetition penalty must be positive (got {})", cfg.adjust.repetition_penalty);
}

int32_t Sampler::argmax(const float* logits, int n) {
  int32_t best = 0;
  for (int i = 1; i < n; ++i)
    if (logits[i] > logits[best]) best = i;
  return best;
}

double Sampler::uniform01() { return std::uniform_real_distribution<double>(0.0, 1.0)(rng_); }

int32_t Sampler::sample(const float* logits, int n_vocab) {
  if (cfg_.adjust.active()) {
    adjusted_.assign(logits, logits + n_vocab);
    apply_logit_adjust(cfg_.adjust, history_, adjusted_.data(), n_vocab);
    const int32_t id = pick(adjusted_.data(), n_vocab);
    history_.add_output(id);
    return id;
  }
  return pick(logits, n_vocab);
}

int32_t Sampler::pick(const float* logits, int n_vocab) {
  if (cfg_.temperature <= 0.0f) return argmax(logits, n_vocab);
  cand_.resize(n_vocab);
  for (int i = 0; i < n_vocab; ++i) cand_[i] = {logits[i] / cfg_.temperature, i};
  auto by_logit = [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); };
  size_t n = cand_.size();
  if (cfg_.top_k > 0 && (size_t)cfg_.top_k < n) {
    std::partial_sort(cand_.begin(), cand_.begin() + cfg_.top_k, cand_.end(), by_logit);
    n = cfg_.top_k;
  } else {
    std::sort(cand_.begin(), cand_.end(), by_logit);
  }
  const float mx = cand_[0].first;
  double total = 0.0;
  std::vector<double> p(n);
  for (size_t i = 0; i < n; ++i) total += p[i] = std::exp((double)cand_[i].first - mx);
  if (cfg_.top_p < 1.0f) {
    // Keep the smallest prefix whose probability mass reaches top_p.
    double cum = 0.0;
    size_t keep = n;
    for (size_t i = 0; i < n; ++i) {
      cum += p[i] / total;
      if (cum >= cfg_.top_p) {
        keep = i + 1;
        break;
      }
    }
    n = keep;
    total = 0.0;
    for (size_t i = 0; i < n; ++i) total += p[i];
  }
  if (cfg_.min_p > 0.0f) {
    // p[0] is the top token's weight (exp(0) = 1): keep the prefix of weights >= min_p of it
    // (sorted, so the cut is a prefix; the top token always stays).
    size_t keep = 1;
    while (keep < n && p[keep] >= cfg_.min_p) ++keep;
    n = keep;
    total = 0.0;
    for (size_t i = 0; i < n; ++i) total += p[i];
  }
  std::uniform_real_distribution<double> uni(0.0, total);
  double r = uni(rng_);
  for (size_t i = 0; i < n; ++i) {
    r -= p[i];
    if (r <= 0.0) return cand_[i].second;
  }
  return cand_[n - 1].second;
}

}  // namespace duo
