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
