#include "eval/ruler.h"

#include <fmt/core.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <limits>
#include <map>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "duo/engine.h"
#include "engine/backend.h"
#include "engine/utf8_stream.h"
#include "model/model.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace duo {

namespace {
std::string lower(std::string s) {
  for (char& c : s) c = (char)std::tolower((unsigned char)c);
  return s;
}
}  // namespace

double ruler_score(const std::vector<std::string>& expected, const std::string& output) {
  if (expected.empty()) return 0.0;
  const std::string out = lower(output);
  int found = 0;
  for (const auto& e : expected) found += out.find(lower(e)) != std::string::npos;
  return (double)found / (double)expected.size();
}

RulerGridKind parse_ruler_grid(const std::string& s) {
  if (s == "dev") return RulerGridKind::Dev;
  if (s == "report") return RulerGridKind::Report;
  fail("unknown grid '{}' (expected dev or report)", s);
}
const char* to_string(RulerGridKind g) { return g == RulerGridKind::Dev ? "dev" : "report"; }

std::vector<RulerCell> ruler_cells(const RulerGrid& g) {
  DUO_CHECK(!g.lengths.empty(), "the RULER grid needs lengths");
  DUO_CHECK(g.samples > 0, "the RULER grid needs at least one sample a cell");
  std::vector<std::string> tasks = g.tasks;
  if (tasks.empty())
    for (const auto& t : ruler_tasks()) tasks.push_back(t.name);
  // Far-apart seed bases: no dev prompt shares a seed with a report prompt.
  const uint64_t base = (g.kind == RulerGridKind::Dev ? 0x0de70000ull : 0x7e900000000ull) + g.seed * 1000003ull;
  RulerHaystack varied = g.kind == RulerGridKind::Dev ? RulerHaystack::Code : RulerHaystack::Prose;
  if (!g.haystack.empty()) {
    varied = parse_ruler_haystack(g.haystack);
    DUO_CHECK(varied == RulerHaystack::Prose || varied == RulerHaystack::Code || varied == RulerHaystack::Repeat,
              "--haystack takes repeat, prose or code");
  }
  std::vector<RulerCell> cells;
  for (size_t ti = 0; ti < tasks.size(); ++ti) {
    const RulerTaskInfo& info = ruler_task(tasks[ti]);
    for (size_t li = 0; li < g.lengths.size(); ++li)
      for (int s = 0; s < g.samples; ++s) {
        RulerCell c;
        c.task = info.name;
        c.length = g.lengths[li];
        c.sample = s;
        // Default depths are the middles of equal slices (0.5; 0.25, 0.75; ...): never 0 or 1,
        // where a needle would sit in a streaming head's sink or recent window.
        if (info.uses_depth)
          c.depth = !g.depths.empty() ? g.depths[(size_t)s % g.depths.size()]
                                      : ((double)s + 0.5) / (double)g.samples;
        c.haystack = info.varied_haystack ? varied : info.haystack;
        c.seed = base + (uint64_t)ti * 100000ull + (uint64_t)li * 1000ull + (uint64_t)s;
        cells.push_back(c);
      }
  }
  return cells;
}

RulerPrompt build_ruler_prompt(Engine& engine, const RulerGrid& grid, const RulerCell& c) {
  std::unique_ptr<ChatTemplate> tmpl;
  if (grid.use_chat_template) tmpl = std::make_unique<ChatTemplate>(chat_template_of(engine.model(), engine.tokenizer(), grid.chat_template_file));
  return build_ruler_prompt(engine.tokenizer(), tmpl.get(), c.task, c.length, c.depth < 0 ? 0.5 : c.depth,
                            c.haystack, c.seed);
}

std::vector<RulerResult> run_ruler(Engine& engine, const RulerGrid& grid, const std::vector<RulerMode>& modes,
                                   const std::function<void(size_t, size_t, const RulerResult&)>& progress) {
  DUO_CHECK(!modes.empty(), "no attention mode to run");
  const std::vector<RulerCell> cells = ruler_cells(grid);
  std::unique_ptr<ChatTemplate> tmpl;
  if (grid.use_chat_template) tmpl = std::make_unique<ChatTemplate>(chat_template_of(engine.model(), engine.tokenizer(), grid.chat_template_file));
  const Tokenizer& tok = engine.tokenizer();
  std::vector<RulerPrompt> prompts;
  for (const auto& c : cells) {
    const int answer = ruler_task(c.task).max_new_tokens;
    DUO_CHECK(c.length + answer <= engine.max_context(),
              "context length {} (+{} answer tokens) exceeds the limit of {} tokens (raise --max-context)", c.length,
              answer, engine.max_context());
    prompts.push_back(build_ruler_prompt(tok, tmpl.get(), c.task, c.length, c.depth < 0 ? 0.5 : c.depth, c.haystack,
                                         c.seed));
  }
  using clock = std::chrono::steady_clock;
  ModelBackend& backend = engine.backend();
  const int64_t chunk = engine.options().chunk;
  std::vector<RulerResult> out;
  const size_t total = cells.size() * modes.size();
  for (const auto& mode : modes)
    for (size_t i = 0; i < cells.size(); ++i) {
      RulerResult r;
      r.mode = mode.name;
      r.cell = cells[i];
      r.expected = prompts[i].expected;
      r.prompt_tokens = (int64_t)prompts[i].tokens.size();
      // Greedy decoding as Session::generate does it, on a sequence of this mode's plan.
      auto state = backend.new_sequence(mode.plan, engine.max_context());
      Sampler greedy(SamplerConfig{});
      auto t0 = clock::now();
      int32_t id = backend.forward_pick(*state, prompts[i].tokens.data(), r.prompt_tokens, chunk, greedy);
      r.prefill_seconds = std::chrono::duration<double>(clock::now() - t0).count();
      t0 = clock::now();
      Utf8Stream utf8;
      const int max_new = ruler_task(r.cell.task).max_new_tokens;
      for (int n = 0; n < max_new && !tok.is_eog(id); ++n) {
        r.output += utf8.push(tok.token_to_piece(id));
        if (n + 1 == max_new || state->n_past() >= engine.max_context()) break;
        id = backend.forward_pick(*state, &id, 1, chunk, greedy);
      }
      r.output += utf8.flush();
      r.decode_seconds = std::chrono::duration<double>(clock::now() - t0).count();
      r.kv_bytes = state->kv_bytes();
      r.score = ruler_score(r.expected, r.output);
      out.push_back(std::move(r));
      if (progress) progress(out.size(), total, out.back());
    }
  return out;
}

RulerSummary summarize_ruler(const std::vector<RulerResult>& rs) {
  // Mean over samples per (mode, task, length) first; averages over tasks and lengths are
  // means of those cell means (every task weighs the same, as RULER averages tasks).
  std::vector<std::string> modes, tasks;
  std::vector<int64_t> lengths;
  std::map<std::tuple<std::string, std::string, int64_t>, std::pair<double, int>> cell;
  auto add_unique = [](auto& v, const auto& x) {
    if (std::find(v.begin(), v.end(), x) == v.end()) v.push_back(x);
  };
  for (const auto& r : rs) {
    add_unique(modes, r.mode);
    add_unique(tasks, r.cell.task);
    add_unique(lengths, r.cell.length);
    auto& c = cell[{r.mode, r.cell.task, r.cell.length}];
    c.first += r.score;
    c.second += 1;
  }
  std::sort(lengths.begin(), lengths.end());
  RulerSummary s;
  for (const auto& m : modes) {
    std::map<int64_t, std::pair<double, int>> per_len;
    double all = 0;
    int all_n = 0, all_samples = 0;
    for (const auto& t : tasks) {
      double sum = 0;
      int n = 0, samples = 0;
      for (int64_t L : lengths) {
        auto it = cell.find({m, t, L});
        if (it == cell.end()) continue;
        const double mean = 100.0 * it->second.first / it->second.second;
        s.entries.push_back({m, t, L, mean, it->second.second});
        sum += mean, ++n, samples += it->second.second;
        per_len[L].first += mean, per_len[L].second += 1;
        all += mean, ++all_n, all_samples += it->second.second;
      }
      if (n) s.entries.push_back({m, t, 0, sum / n, samples});
    }
    for (const auto& [L, v] : per_len) s.entries.push_back({m, "", L, v.first / v.second, v.second});
    if (all_n) s.entries.push_back({m, "", 0, all / all_n, all_samples});
  }
  return s;
}

double RulerSummary::get(const std::string& mode, const std::string& task, int64_t length) const {
  for (const auto& e : entries)
    if (e.mode == mode && e.task == task && e.length == length) return e.score;
  return std::numeric_limits<double>::quiet_NaN();
}

std::string RulerReportInfo::title() const {
  std::string t = fmt::format("RULER {} grid: {} on {}, KV {}", grid, model, device, kv_type);
  if (!pattern.empty())
    t += fmt::format(", duo pattern {}{}", pattern,
                     retrieval_ratio >= 0 ? fmt::format(" at ratio {:.2f}", retrieval_ratio) : std::string());
  t += fmt::format(", window {}+{}", sink, recent);
  return t;
}

namespace {
std::string csv_escape(const std::string& s) {
  std::string o = "\"";
  for (char c : s) {
    if (c == '"') o += '"';
    o += (c == '\n' || c == '\r') ? ' ' : c;
  }
  return o + "\"";
}
std::ofstream open_out(const std::string& path) {
  std::ofstream f(path);
  DUO_CHECK(f.good(), "cannot write '{}'", path);
  return f;
}
std::string join(const std::vector<std::string>& v, const char* sep) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? sep : "") + v[i];
  return s;
}
}  // namespace

void write_ruler_csv(const std::vector<RulerResult>& rs, const std::string& path) {
  auto f = open_out(path);
  f << "mode,task,length,sample,depth,haystack,seed,score,expected,output,prompt_tokens,prefill_s,decode_s,kv_bytes\n";
  for (const auto& r : rs)
    f << r.mode << ',' << r.cell.task << ',' << r.cell.length << ',' << r.cell.sample << ','
      << (r.cell.depth < 0 ? std::string() : fmt::format("{}", r.cell.depth)) << ',' << to_string(r.cell.haystack)
      << ',' << r.cell.seed << ',' << r.score << ',' << csv_escape(join(r.expected, "|")) << ','
      << csv_escape(r.output) << ',' << r.prompt_tokens << ',' << r.prefill_seconds << ',' << r.decode_seconds << ','
      << r.kv_bytes << '\n';
}

void write_ruler_json(const std::vector<RulerResult>& rs, const RulerReportInfo& info, const std::string& path) {
  nlohmann::json j;
  j["model"] = info.model;
  j["grid"] = info.grid;
  j["device"] = info.device;
  j["kv_type"] = info.kv_type;
  j["pattern"] = info.pattern;
  j["retrieval_ratio"] = info.retrieval_ratio;
  j["sink"] = info.sink;
  j["recent"] = info.recent;
  const RulerSummary s = summarize_ruler(rs);
  for (const auto& e : s.entries) {
    auto& m = j["summary"][e.mode];
    if (e.task.empty() && e.length == 0)
      m["average"] = e.score;
    else if (e.task.empty())
      m["by_length"][std::to_string(e.length)] = e.score;
    else if (e.length == 0)
      m["by_task"][e.task] = e.score;
    else
      m["cells"][e.task][std::to_string(e.length)] = e.score;
  }
  j["samples"] = nlohmann::json::array();
  for (const auto& r : rs)
    j["samples"].push_back({{"mode", r.mode},
                            {"task", r.cell.task},
                            {"length", r.cell.length},
                            {"sample", r.cell.sample},
                            {"depth", r.cell.depth < 0 ? nlohmann::json() : nlohmann::json(r.cell.depth)},
                            {"haystack", to_string(r.cell.haystack)},
                            {"seed", r.cell.seed},
                            {"score", r.score},
                            {"expected", r.expected},
                            {"output", r.output},
                            {"prompt_tokens", r.prompt_tokens},
                            {"prefill_s", r.prefill_seconds},
                            {"decode_s", r.decode_seconds},
                            {"kv_bytes", r.kv_bytes}});
  auto f = open_out(path);
  // A model's output is any bytes (a cut-off UTF-8 character, a random model's noise): they are
  // written as U+FFFD rather than the dump throwing.
  f << j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
}

namespace {
std::string xml_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '&') o += "&amp;";
    else if (c == '<') o += "&lt;";
    else if (c == '>') o += "&gt;";
    else if (c == '"') o += "&quot;";
    else o += c;
  }
  return o;
}
// Red (0%) through yellow to green (100%).
std::string colour(double pct) {
  const double x = std::clamp(pct / 100.0, 0.0, 1.0);
  const int r = x < 0.5 ? 215 : (int)std::lround(215 - (x - 0.5) * 2 * (215 - 40));
  const int g = x < 0.5 ? (int)std::lround(50 + x * 2 * (190 - 50)) : (int)std::lround(190 - (x - 0.5) * 2 * 20);
  return fmt::format("rgb({},{},60)", r, g);
}
}  // namespace

void write_ruler_svg(const std::vector<RulerResult>& rs, const RulerReportInfo& info, const std::string& path) {
  const RulerSummary s = summarize_ruler(rs);
  std::vector<std::string> modes, tasks;
  std::vector<int64_t> lengths;
  for (const auto& r : rs) {
    if (std::find(modes.begin(), modes.end(), r.mode) == modes.end()) modes.push_back(r.mode);
    if (std::find(tasks.begin(), tasks.end(), r.cell.task) == tasks.end()) tasks.push_back(r.cell.task);
    if (std::find(lengths.begin(), lengths.end(), r.cell.length) == lengths.end()) lengths.push_back(r.cell.length);
  }
  std::sort(lengths.begin(), lengths.end());
  const int cw = 58, ch = 24, left = 130, top = 70, gap = 40;
  const int cols = (int)lengths.size() + 1;  // lengths, then the average over lengths
  const int rows = (int)tasks.size() + 1;    // tasks, then the average over tasks
  const int panel = cw * cols;
  const std::string title = info.title();
  const std::string legend =
      "score (%): expected values found in the answer, mean over samples; columns: prompt length (tokens)";
  // Text widths at about 0.55 em a character.
  const int W = std::max({left + (int)modes.size() * (panel + gap) + 20, (int)title.size() * 8 + 40,
                          left + (int)legend.size() * 6 + 20});
  const int H = top + ch * rows + 100;
  auto f = open_out(path);
  f << fmt::format("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\">\n",
                   W, H);
  f << fmt::format("<rect width=\"{}\" height=\"{}\" fill=\"white\"/>\n", W, H);
  f << fmt::format("<text x=\"{}\" y=\"22\" font-size=\"15\" text-anchor=\"middle\">{}</text>\n", W / 2,
                   xml_escape(title));
  for (int y = 0; y < rows; ++y)
    f << fmt::format("<text x=\"{}\" y=\"{}\" font-size=\"12\" text-anchor=\"end\"{}>{}</text>\n", left - 6,
                     top + ch * y + ch / 2 + 4, y + 1 == rows ? " font-weight=\"bold\"" : "",
                     y + 1 == rows ? "average" : xml_escape(tasks[(size_t)y]));
  for (size_t m = 0; m < modes.size(); ++m) {
    const int x0 = left + (int)m * (panel + gap);
    f << fmt::format("<text x=\"{}\" y=\"{}\" font-size=\"13\" font-weight=\"bold\" text-anchor=\"middle\">{} "
                     "(average {:.1f})</text>\n",
                     x0 + panel / 2, top - 24, xml_escape(modes[m]), s.get(modes[m], "", 0));
    for (int x = 0; x < cols; ++x)
      f << fmt::format("<text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"middle\">{}</text>\n",
                       x0 + cw * x + cw / 2, top - 6, x + 1 == cols ? std::string("avg") : std::to_string(lengths[(size_t)x]));
    for (int y = 0; y < rows; ++y)
      for (int x = 0; x < cols; ++x) {
        const std::string task = y + 1 == rows ? "" : tasks[(size_t)y];
        const int64_t L = x + 1 == cols ? 0 : lengths[(size_t)x];
        const double v = s.get(modes[m], task, L);
        const bool none = std::isnan(v);
        f << fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{}\" stroke=\"white\"/>\n",
                         x0 + cw * x, top + ch * y, cw, ch, none ? std::string("rgb(200,200,200)") : colour(v));
        f << fmt::format("<text x=\"{}\" y=\"{}\" font-size=\"11\" fill=\"white\" text-anchor=\"middle\">{}</text>\n",
                         x0 + cw * x + cw / 2, top + ch * y + ch / 2 + 4, none ? std::string("-") : fmt::format("{:.0f}", v));
      }
  }
  // Legend: the colour scale and what a cell is.
  const int ly = top + ch * rows + 30;
  for (int i = 0; i <= 10; ++i)
    f << fmt::format("<rect x=\"{}\" y=\"{}\" width=\"24\" height=\"14\" fill=\"{}\"/>\n", left + 24 * i, ly,
                     colour(10.0 * i));
  f << fmt::format("<text x=\"{}\" y=\"{}\" font-size=\"11\">0</text>\n", left, ly + 28);
  f << fmt::format("<text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">100</text>\n", left + 24 * 11, ly + 28);
  f << fmt::format("<text x=\"{}\" y=\"{}\" font-size=\"11\">{}</text>\n", left, ly + 48, legend);
  f << "</svg>\n";
}

}  // namespace duo
