#include "io/head_pattern.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <numeric>
#include <sstream>

#include "core/error.h"

namespace duo {

namespace {
constexpr float kClampSlack = 0.01f;
}

GateMatrix parse_gates_tsv(const std::string& text, const std::string& origin) {
  GateMatrix g;
  std::istringstream in(text);
  std::string line;
  int line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;  // blank line
    std::vector<float> row;
    std::istringstream ls(line);
    std::string cell;
    int col = 0;
    while (std::getline(ls, cell, '\t')) {
      ++col;
      const size_t b = cell.find_first_not_of(' '), e = cell.find_last_not_of(' ');
      DUO_CHECK(b != std::string::npos, "{}:{}: column {} is empty", origin, line_no, col);
      cell = cell.substr(b, e - b + 1);
      char* end = nullptr;
      errno = 0;
      const float v = std::strtof(cell.c_str(), &end);
      DUO_CHECK(end == cell.c_str() + cell.size() && errno == 0, "{}:{}: column {}: '{}' is not a number", origin,
                line_no, col, cell);
      // Published patterns carry tiny negative values (~-1e-3: saved before the last clamp);
      // those are clamped, anything further out is an error.
      DUO_CHECK(std::isfinite(v) && v >= -kClampSlack && v <= 1.0f + kClampSlack,
                "{}:{}: column {}: gate {} is outside [0, 1]", origin, line_no, col, cell);
      row.push_back(std::clamp(v, 0.0f, 1.0f));
    }
    if (g.n_layers == 0) g.n_kv_heads = (int)row.size();
    DUO_CHECK((int)row.size() == g.n_kv_heads, "{}:{}: {} columns, but the first row has {}", origin, line_no,
              row.size(), g.n_kv_heads);
    g.values.insert(g.values.end(), row.begin(), row.end());
    ++g.n_layers;
  }
  DUO_CHECK(g.n_layers > 0, "{}: no gate values (expected one row per layer, one column per KV head)", origin);
  return g;
}

GateMatrix load_gates_tsv(const std::string& path) {
  std::ifstream f(path);
  DUO_CHECK(f.good(), "cannot open head pattern '{}'", path);
  std::stringstream ss;
  ss << f.rdbuf();
  return parse_gates_tsv(ss.str(), path);
}

void save_gates_tsv(const GateMatrix& g, const std::string& path) {
  std::ofstream f(path);
  DUO_CHECK(f.good(), "cannot write head pattern '{}'", path);
  char buf[64];
  for (int l = 0; l < g.n_layers; ++l) {
    for (int h = 0; h < g.n_kv_heads; ++h) {
      std::snprintf(buf, sizeof buf, "%.18e", (double)g.at(l, h));
      f << (h ? "\t" : "") << buf;
    }
    f << "\n";
  }
  DUO_CHECK(f.good(), "error writing head pattern '{}'", path);
}

std::vector<std::vector<HeadKind>> binarize_threshold(const GateMatrix& g, float threshold) {
  std::vector<std::vector<HeadKind>> k(g.n_layers, std::vector<HeadKind>(g.n_kv_heads));
  for (int l = 0; l < g.n_layers; ++l)
    for (int h = 0; h < g.n_kv_heads; ++h)
      k[l][h] = g.at(l, h) >= threshold ? HeadKind::Retrieval : HeadKind::Streaming;
  return k;
}

std::vector<std::vector<HeadKind>> binarize_ratio(const GateMatrix& g, double retrieval_ratio) {
  DUO_CHECK(retrieval_ratio >= 0.0 && retrieval_ratio <= 1.0, "retrieval ratio {} is outside [0, 1]",
            retrieval_ratio);
  const size_t n = g.values.size();
  const size_t keep = (size_t)std::llround(retrieval_ratio * (double)n);
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return g.values[a] > g.values[b]; });
  std::vector<std::vector<HeadKind>> k(g.n_layers, std::vector<HeadKind>(g.n_kv_heads, HeadKind::Streaming));
  for (size_t i = 0; i < keep; ++i) k[order[i] / g.n_kv_heads][order[i] % g.n_kv_heads] = HeadKind::Retrieval;
  return k;
}

RatioPolicy parse_ratio_policy(const std::string& s) {
  RatioPolicy p;
  if (s == "global") return p;
  if (s == "per-layer") {
    p.kind = RatioPolicy::Kind::PerLayer;
    return p;
  }
  const std::string prefix = "min-per-layer=";
  if (s.rfind(prefix, 0) == 0) {
    const std::string k = s.substr(prefix.size());
    const bool digits = !k.empty() && k.size() <= 6 && std::all_of(k.begin(), k.end(), [](char c) { return c >= '0' && c <= '9'; });
    DUO_CHECK(digits, "ratio policy '{}': K in min-per-layer=K must be a whole number of heads", s);
    p.kind = RatioPolicy::Kind::MinPerLayer;
    p.min_per_layer = std::stoi(k);
    return p;
  }
  fail("unknown ratio policy '{}' (global, per-layer or min-per-layer=K)", s);
}

std::string to_string(const RatioPolicy& p) {
  switch (p.kind) {
    case RatioPolicy::Kind::Global: return "global";
    case RatioPolicy::Kind::PerLayer: return "per-layer";
    case RatioPolicy::Kind::MinPerLayer: return "min-per-layer=" + std::to_string(p.min_per_layer);
  }
  return "?";
}

std::vector<std::vector<HeadKind>> binarize_ratio(const GateMatrix& g, double retrieval_ratio,
                                                  const RatioPolicy& policy) {
  if (policy.kind == RatioPolicy::Kind::Global) return binarize_ratio(g, retrieval_ratio);
  DUO_CHECK(retrieval_ratio >= 0.0 && retrieval_ratio <= 1.0, "retrieval ratio {} is outside [0, 1]",
            retrieval_ratio);
  const int L = g.n_layers, H = g.n_kv_heads;
  const size_t keep = (size_t)std::llround(retrieval_ratio * (double)g.values.size());  // the global count
  // Each layer's heads by gate, best first (stable: earlier heads first on ties).
  std::vector<std::vector<int>> order((size_t)L);
  for (int l = 0; l < L; ++l) {
    order[l].resize((size_t)H);
    std::iota(order[l].begin(), order[l].end(), 0);
    std::stable_sort(order[l].begin(), order[l].end(), [&](int a, int b) { return g.at(l, a) > g.at(l, b); });
  }
  std::vector<int> taken((size_t)L, 0);  // heads kept per layer: each layer's top taken[l]
  size_t total = 0;
  if (policy.kind == RatioPolicy::Kind::PerLayer) {
    const int base = (int)std::min<size_t>(keep / (size_t)std::max(L, 1), (size_t)H);
    for (int l = 0; l < L; ++l) taken[l] = base;
    total = (size_t)base * (size_t)L;
  } else {
    DUO_CHECK(policy.min_per_layer >= 0, "min-per-layer K must be >= 0");
    const int k = std::min(policy.min_per_layer, H);
    for (int l = 0; l < L; ++l) taken[l] = k;
    total = (size_t)k * (size_t)L;
  }
  // The remaining heads one at a time to the layer whose next head has the largest gate
  // (per-layer: at most one extra a layer; ties: the earlier layer).
  std::vector<int> cap((size_t)L, H);
  if (policy.kind == RatioPolicy::Kind::PerLayer)
    for (int l = 0; l < L; ++l) cap[l] = std::min(H, taken[l] + 1);
  while (total < keep) {
    int best = -1;
    for (int l = 0; l < L; ++l)
      if (taken[l] < cap[l] &&
          (best < 0 || g.at(l, order[l][taken[l]]) > g.at(best, order[best][taken[best]])))
        best = l;
    if (best < 0) break;  // (cannot happen: keep <= L x H)
    ++taken[best], ++total;
  }
  std::vector<std::vector<HeadKind>> kinds((size_t)L, std::vector<HeadKind>((size_t)H, HeadKind::Streaming));
  for (int l = 0; l < L; ++l)
    for (int i = 0; i < taken[l]; ++i) kinds[l][order[l][i]] = HeadKind::Retrieval;
  return kinds;
}

HeadPlan make_head_plan(const std::vector<std::vector<HeadKind>>& kinds, int n_layers, int n_kv_heads,
                        StreamingWindow window, const std::string& origin) {
  const int rows = (int)kinds.size(), cols = kinds.empty() ? 0 : (int)kinds[0].size();
  DUO_CHECK(rows == n_layers && cols == n_kv_heads,
            "{}: the pattern is {} layers x {} KV heads but the model has {} layers x {} KV heads (a pattern fits "
            "only the model it was calibrated for; `duo calibrate` makes one for this model)",
            origin, rows, cols, n_layers, n_kv_heads);
  HeadPlan p;
  p.window = window;
  p.kinds = kinds;
  return p;
}

double retrieval_fraction(const std::vector<std::vector<HeadKind>>& kinds) {
  size_t total = 0, ret = 0;
  for (const auto& row : kinds)
    for (HeadKind k : row) total++, ret += k == HeadKind::Retrieval;
  return total ? (double)ret / (double)total : 0.0;
}

}  // namespace duo
