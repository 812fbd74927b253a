#include "eval/head_ranking.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "duo/engine.h"
#include "engine/attention_observer.h"
#include "engine/backend.h"
#include "eval/needle.h"
#include "model/model.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace duo {

namespace {

class NeedleMassObserver : public AttentionObserver {
 public:
  NeedleMassObserver(int n_layers, int n_heads, const NeedlePrompt& p)
      : n_heads_(n_heads), mass_((size_t)n_layers * n_heads, 0.0), p_(p) {}

  void on_attention(const ObservedAttention& a) override {
    const int d = a.head_dim, g = a.n_heads / a.n_kv_heads;
    const double scale = 1.0 / std::sqrt((double)d);
    for (int64_t t = 0; t < a.n; ++t) {
      const int64_t pos = a.pos0 + t;
      if (pos < p_.question_begin) continue;
      for (int h = 0; h < a.n_heads; ++h) {
        const int kvh = h / g;
        const float* q = a.q + (t * a.n_heads + h) * d;
        // Softmax over every visible key; mass on the needle's positions.
        double mx = -1e300, on_needle = 0.0, total = 0.0;
        std::vector<std::pair<double, bool>> sc;
        a.keys(kvh, pos, [&](int64_t j0, int64_t m, const float* k, int64_t stride) {
          for (int64_t r = 0; r < m; ++r) {
            const float* kr = k + r * stride;
            double dot = 0.0;
            for (int c = 0; c < d; ++c) dot += (double)q[c] * kr[c];
            const int64_t j = j0 + r;
            sc.push_back({dot * scale, j >= p_.needle_begin && j < p_.needle_end});
            mx = std::max(mx, dot * scale);
          }
        });
        for (const auto& [v, in] : sc) {
          const double e = std::exp(v - mx);
          total += e;
          if (in) on_needle += e;
        }
        mass_[(size_t)a.layer * n_heads_ + h] += on_needle / total;
      }
    }
  }
  const std::vector<double>& mass() const { return mass_; }

 private:
  int n_heads_;
  std::vector<double> mass_;
  const NeedlePrompt& p_;
};

}  // namespace

NeedleMass measure_needle_mass(Engine& engine, const HeadRankingOptions& o,
                               const std::function<void(size_t, size_t)>& progress) {
  DUO_CHECK(engine.options().attention == AttentionMode::Full, "head ranking must run with full attention");
  ModelBackend& backend = engine.backend();
  DUO_CHECK(backend.observes_attention(),
            "head ranking observes attention, which device '{}' does not show: use --device cpu",
            to_string(backend.device()));
  const ModelConfig& c = engine.model().config();
  NeedleMass m;
  m.n_layers = c.n_layers, m.n_heads = c.n_heads, m.n_kv_heads = c.n_kv_heads;
  m.query.assign((size_t)c.n_layers * c.n_heads, 0.0);
  const ChatTemplate tmpl = chat_template_of(engine.model(), engine.tokenizer());
  const size_t total = o.lengths.size() * o.depths.size();
  size_t done = 0;
  for (int64_t L : o.lengths)
    for (double depth : o.depths) {
      const NeedlePrompt p =
          build_needle_prompt(engine.tokenizer(), &tmpl, NeedleTask::Niah, L, depth, o.seed + done);
      NeedleMassObserver obs(c.n_layers, c.n_heads, p);
      backend.set_attention_observer(&obs);
      auto session = engine.new_session();
      try {
        session->feed(p.tokens);
      } catch (...) {
        backend.set_attention_observer(nullptr);
        throw;
      }
      backend.set_attention_observer(nullptr);
      for (size_t i = 0; i < m.query.size(); ++i) m.query[i] += obs.mass()[i];
      if (progress) progress(++done, total);
    }
  return m;
}

namespace {
// The KV head (layer-major index) that query head q (layer-major index) reads.
size_t kv_of(const NeedleMass& m, size_t q) {
  const size_t g = (size_t)(m.n_heads / m.n_kv_heads);
  return q / (size_t)m.n_heads * (size_t)m.n_kv_heads + q % (size_t)m.n_heads / g;
}
// Each KV head's group total.
std::vector<double> kv_mass(const NeedleMass& m) {
  std::vector<double> kv((size_t)m.n_layers * m.n_kv_heads, 0.0);
  for (size_t q = 0; q < m.query.size(); ++q) kv[kv_of(m, q)] += m.query[q];
  return kv;
}
// Indices of v from largest to smallest (ties: lower index first).
std::vector<size_t> by_mass(const std::vector<double>& v) {
  std::vector<size_t> idx(v.size());
  for (size_t i = 0; i < idx.size(); ++i) idx[i] = i;
  std::stable_sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return v[a] > v[b]; });
  return idx;
}
}  // namespace

GateMatrix gates_of(const NeedleMass& m) {
  GateMatrix g;
  g.n_layers = m.n_layers;
  g.n_kv_heads = m.n_kv_heads;
  const std::vector<double> kv = kv_mass(m);
  const double mx = kv.empty() ? 0.0 : *std::max_element(kv.begin(), kv.end());
  for (double v : kv) g.values.push_back(mx > 0 ? (float)(v / mx) : 0.0f);
  return g;
}

GqaCoverage gqa_coverage(const NeedleMass& m, double fraction) {
  DUO_CHECK(fraction >= 0.0 && fraction <= 1.0, "gqa_coverage: fraction {} outside [0, 1]", fraction);
  const std::vector<double> kv = kv_mass(m);
  double sum = 0;
  for (double v : m.query) sum += v;
  GqaCoverage c;
  c.kv_kept = (int)std::lround(fraction * (double)kv.size());
  c.query_kept = (int)std::lround(fraction * (double)m.query.size());
  if (sum <= 0) return c;
  const std::vector<size_t> kv_order = by_mass(kv), q_order = by_mass(m.query);
  for (int i = 0; i < c.kv_kept; ++i) c.kv_share += kv[kv_order[(size_t)i]] / sum;
  std::vector<char> holds(kv.size(), 0);
  for (int i = 0; i < c.query_kept; ++i) {
    const size_t q = q_order[(size_t)i];
    c.query_share += m.query[q] / sum;
    holds[kv_of(m, q)] = 1;
  }
  for (char h : holds) c.kv_holding_top_queries += h;
  for (double held = 0; c.kv_for_query_share < (int)kv.size() && held < c.query_share * (1 - 1e-12);)
    held += kv[kv_order[(size_t)c.kv_for_query_share++]] / sum;
  return c;
}

GateMatrix rank_heads_by_needle_mass(Engine& engine, const HeadRankingOptions& o,
                                     const std::function<void(size_t, size_t)>& progress) {
  return gates_of(measure_needle_mass(engine, o, progress));
}

}  // namespace duo
