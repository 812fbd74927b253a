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
  NeedleMassObserver(int n_layers, int n_kv, const NeedlePrompt& p)
      : n_kv_(n_kv), mass_((size_t)n_layers * n_kv, 0.0), p_(p) {}

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
        mass_[(size_t)a.layer * n_kv_ + kvh] += on_needle / total / g;
      }
    }
  }
  const std::vector<double>& mass() const { return mass_; }

 private:
  int n_kv_;
  std::vector<double> mass_;
  const NeedlePrompt& p_;
};

}  // namespace

GateMatrix rank_heads_by_needle_mass(Engine& engine, const HeadRankingOptions& o,
                                     const std::function<void(size_t, size_t)>& progress) {
  DUO_CHECK(engine.options().attention == AttentionMode::Full, "head ranking must run with full attention");
  ModelBackend& backend = engine.backend();
  DUO_CHECK(backend.observes_attention(),
            "head ranking observes attention, which device '{}' does not show: use --device cpu",
            to_string(backend.device()));
  const ModelConfig& c = engine.model().config();
  std::vector<double> mass((size_t)c.n_layers * c.n_kv_heads, 0.0);
  const ChatTemplate tmpl = chat_template_of(engine.model(), engine.tokenizer());
  const size_t total = o.lengths.size() * o.depths.size();
  size_t done = 0;
  for (int64_t L : o.lengths)
    for (double depth : o.depths) {
      const NeedlePrompt p =
          build_needle_prompt(engine.tokenizer(), &tmpl, NeedleTask::Niah, L, depth, o.seed + done);
      NeedleMassObserver obs(c.n_layers, c.n_kv_heads, p);
      backend.set_attention_observer(&obs);
      auto session = engine.new_session();
      try {
        session->feed(p.tokens);
      } catch (...) {
        backend.set_attention_observer(nullptr);
        throw;
      }
      backend.set_attention_observer(nullptr);
      for (size_t i = 0; i < mass.size(); ++i) mass[i] += obs.mass()[i];
      if (progress) progress(++done, total);
    }
  GateMatrix g;
  g.n_layers = c.n_layers;
  g.n_kv_heads = c.n_kv_heads;
  const double mx = *std::max_element(mass.begin(), mass.end());
  for (double m : mass) g.values.push_back(mx > 0 ? (float)(m / mx) : 0.0f);
  return g;
}

}  // namespace duo
