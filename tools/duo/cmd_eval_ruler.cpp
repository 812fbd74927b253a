// `duo eval ruler`: the RULER-style grid (src/eval/ruler.h) for one or more attention modes on
// one loaded model, with a progress bar, CSV/JSON/SVG reports and a summary line per mode.
#include <fmt/core.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <sstream>

#include "commands.h"
#include "duo/kv_type.h"
#include "engine/backend.h"
#include "core/error.h"
#include "eval/ruler.h"
#include "io/head_pattern.h"
#include "model/model.h"
#include "progress.h"

namespace duo::cli {

namespace {

template <typename T>
std::vector<T> parse_list(const std::string& s, const char* what) {
  std::vector<T> v;
  for (const auto& item : split_commas(s)) {
    std::istringstream is(item);
    T x{};
    is >> x;
    DUO_CHECK(!is.fail() && is.eof(), "bad {} '{}' in '{}'", what, item, s);
    v.push_back(x);
  }
  DUO_CHECK(!v.empty(), "no {} given", what);
  return v;
}

// "duo" uses --retrieval-ratio (or --threshold); "duoNN" the ratio NN% of the same pattern.
double duo_ratio_of(const std::string& mode) {
  if (mode == "duo") return -2.0;
  DUO_CHECK(mode.size() > 3 && mode.rfind("duo", 0) == 0 && mode.find_first_not_of("0123456789", 3) == std::string::npos,
            "unknown mode '{}' (expected full, streaming, duo or duoNN, e.g. duo25)", mode);
  const int pct = std::stoi(mode.substr(3));
  DUO_CHECK(pct >= 0 && pct <= 100, "mode '{}': the ratio must be 0-100%", mode);
  return pct / 100.0;
}

// A mode as written on the command line: BASE[@PATTERN.tsv][+KV], e.g. duo25@random.tsv+q4.
// Its report name is the same with the pattern's file stem in place of the path.
struct ModeSpec {
  std::string base, pattern, kv, name;
};
ModeSpec parse_mode(const std::string& s, const std::string& default_pattern) {
  ModeSpec m;
  std::string rest = s;
  if (const auto plus = rest.rfind('+'); plus != std::string::npos && rest.find('/', plus) == std::string::npos) {
    m.kv = rest.substr(plus + 1);
    rest = rest.substr(0, plus);
  }
  if (const auto at = rest.find('@'); at != std::string::npos) {
    m.pattern = rest.substr(at + 1);
    rest = rest.substr(0, at);
    DUO_CHECK(!m.pattern.empty(), "mode '{}': no pattern file after '@'", s);
    DUO_CHECK(rest != "full" && rest != "streaming", "mode '{}': only duo modes take a pattern", s);
  }
  m.base = rest;
  m.name = rest;
  if (!m.pattern.empty()) m.name += "@" + std::filesystem::path(m.pattern).stem().string();
  if (m.pattern.empty()) m.pattern = default_pattern;
  if (!m.kv.empty()) m.name += "+" + m.kv;
  return m;
}

// Head plans of the modes, for sequences of the one engine (duo plans in its slot order).
std::vector<RulerMode> make_modes(Engine& engine, const ModelOptions& mo, const std::vector<std::string>& names) {
  const ModelConfig& c = engine.model().config();
  const StreamingWindow w{mo.sink, mo.recent};
  std::vector<RulerMode> modes;
  for (const auto& spec : names) {
    const ModeSpec ms = parse_mode(spec, mo.pattern);
    const std::string& n = ms.base;
    RulerMode m{ms.name, {}};
    if (n == "full") {
      m.plan = HeadPlan::uniform(c.n_layers, c.n_kv_heads, HeadKind::Retrieval, w);
    } else if (n == "streaming") {
      m.plan = HeadPlan::uniform(c.n_layers, c.n_kv_heads, HeadKind::Streaming, w);
    } else {
      const double r = duo_ratio_of(n);
      if (r == -2.0) {
        DUO_CHECK(ms.pattern == mo.pattern, "mode '{}': 'duo' is the --retrieval-ratio plan of --pattern; give "
                  "a ratio (duoNN@FILE) to use another pattern", spec);
        m.plan = engine.plan();  // as --retrieval-ratio / --threshold built it
      } else {
        DUO_CHECK(!ms.pattern.empty(), "mode '{}' needs a pattern (--pattern or {}@FILE)", spec, n);
        const GateMatrix g = load_gates_tsv(ms.pattern);
        m.plan = engine.to_slot_order(make_head_plan(binarize_ratio(g, r, parse_ratio_policy(mo.ratio_policy)),
                                                     c.n_layers, c.n_kv_heads, w, ms.pattern));
      }
    }
    m.plan.kv_type = ms.kv.empty() ? engine.options().kv_type : parse_kv_type(ms.kv);
    modes.push_back(std::move(m));
  }
  return modes;
}

}  // namespace

void add_ruler_eval(CLI::App& eval) {
  struct Opts {
    ModelOptions model;
    std::string modes, tasks = "all", lengths = "2048,4096", depths, grid = "dev", haystack, out;
    int samples = 4;
    uint64_t seed = 0;
    bool plain = false;
    std::string chat_template;
  };
  auto o = std::make_shared<Opts>();
  auto* cmd = eval.add_subcommand(
      "ruler", "RULER-style long-context suite: needle retrieval (single, multi-key, multi-value, multi-query), "
               "variable tracking, common- and frequent-words extraction");
  add_model_options(*cmd, o->model);
  cmd->add_option("--modes", o->modes,
                  "comma-separated attention modes run on the one loaded model: full, streaming, duo (the "
                  "--retrieval-ratio/--threshold plan) or duoNN (NN% retrieval heads of --pattern); duoNN@FILE "
                  "takes the pattern FILE instead, and a suffix +q8 / +q4 / +bf16 the KV cache type (e.g. "
                  "duo50@random.tsv+q4); default: --attention");
  cmd->add_option("--tasks", o->tasks, "comma-separated tasks, or 'all'");
  cmd->add_option("--lengths", o->lengths, "comma-separated prompt lengths (tokens)");
  cmd->add_option("--samples", o->samples, "samples a task and length")->check(CLI::Range(1, 100000));
  cmd->add_option("--depths", o->depths, "needle depths of the samples, in [0, 1] (default: (s + 0.5) / samples for sample s)");
  cmd->add_option("--grid", o->grid, "dev (choose settings here) or report (seeds and haystacks of its own)")
      ->check(CLI::IsMember({"dev", "report"}));
  cmd->add_option("--haystack", o->haystack, "haystack of the varied-haystack tasks: repeat, prose or code "
                                             "(default: code on the dev grid, prose on the report grid)")
      ->check(CLI::IsMember({"repeat", "prose", "code"}));
  cmd->add_option("--seed", o->seed, "added to the grid's seeds");
  cmd->add_option("-o,--out", o->out, "output prefix: writes PREFIX.csv, PREFIX.json and PREFIX.svg");
  cmd->add_flag("--no-chat", o->plain, "plain prompts without the chat template");
  add_chat_template_option(*cmd, o->chat_template);
  cmd->callback([o] {
    RulerGrid grid;
    grid.kind = parse_ruler_grid(o->grid);
    if (o->tasks != "all") grid.tasks = split_commas(o->tasks);
    for (const auto& t : grid.tasks) ruler_task(t);  // unknown names fail before the model loads
    grid.lengths = parse_list<int64_t>(o->lengths, "length");
    grid.samples = o->samples;
    if (!o->depths.empty()) grid.depths = parse_list<double>(o->depths, "depth");
    for (double d : grid.depths) DUO_CHECK(d >= 0.0 && d <= 1.0, "needle depth {} is outside [0, 1]", d);
    grid.haystack = o->haystack;
    grid.seed = o->seed;
    grid.use_chat_template = !o->plain;
    grid.chat_template_file = o->chat_template;
    const std::vector<std::string> names = o->modes.empty() ? std::vector<std::string>{o->model.attention} : split_commas(o->modes);
    bool any_duo = false;
    for (const auto& n : names) {
      const ModeSpec ms = parse_mode(n, o->model.pattern);
      if (ms.base != "full" && ms.base != "streaming") duo_ratio_of(ms.base), any_duo = true;
      if (!ms.kv.empty()) parse_kv_type(ms.kv);
    }
    DUO_CHECK(!any_duo || !o->model.pattern.empty(),
              "duo modes need --pattern FILE (a gate matrix TSV; it also orders the heads of every mode)");
    // The engine is built for duo when any mode is (its weights go into the pattern's head
    // order, which the other plans follow); full and streaming plans are order-free.
    ModelOptions mo = o->model;
    mo.attention = any_duo ? "duo" : names.front();
    // The engine's own duo plan (the "duo" mode) is --retrieval-ratio or --threshold of the
    // pattern; duoNN modes build theirs from the same pattern below.
    // --ratio-policy shapes the ratio plans: duoNN's, and "duo"'s when --retrieval-ratio is given.
    bool any_ratio_mode = mo.retrieval_ratio >= 0;
    for (const auto& n : names) {
      const std::string base = parse_mode(n, o->model.pattern).base;
      any_ratio_mode |= base != "full" && base != "streaming" && duo_ratio_of(base) >= 0;
    }
    DUO_CHECK(mo.ratio_policy == "global" || any_ratio_mode,
              "--ratio-policy applies to ratio plans: give --retrieval-ratio or duoNN modes");
    ModelOptions engine_mo = mo;
    if (mo.retrieval_ratio < 0) engine_mo.ratio_policy = "global";  // (the engine's plan is by --threshold)
    Engine engine(engine_options(engine_mo));
    const std::vector<RulerMode> modes = make_modes(engine, mo, names);
    const size_t total = ruler_cells(grid).size() * modes.size();
    const std::string model_name = engine.model().config().name;
    fmt::print(stderr, "ruler eval: {} | {} grid | modes {} | {} prompts\n", model_name, o->grid, o->modes.empty() ? names.front() : o->modes, total);
    const bool tty = isatty(2);
    const auto t0 = std::chrono::steady_clock::now();
    auto results = run_ruler(engine, grid, modes, [&](size_t done, size_t n, const RulerResult& r) {
      const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const std::string what = fmt::format("{} {} L={} score {:.0f}%", r.mode, r.cell.task, r.cell.length, 100 * r.score);
      if (tty) {
        const int width = 24, filled = (int)(width * done / std::max<size_t>(1, n));
        fmt::print(stderr, "\r\033[K[{}{}] {}/{} {} | {} elapsed, ~{} left", std::string(filled, '#'),
                   std::string(width - filled, '.'), done, n, what, format_seconds(el),
                   format_seconds(el / (double)done * (double)(n - done)));
        if (done == n) fmt::print(stderr, "\n");
      }
    });
    RulerReportInfo info;
    info.model = model_name;
    info.grid = o->grid;
    info.device = o->model.device;
    info.kv_type = to_string(engine.backend().kv_type(engine.options().kv_type));
    if (any_duo) {
      info.pattern = o->model.pattern;
      if (std::find(names.begin(), names.end(), "duo") != names.end()) info.retrieval_ratio = mo.retrieval_ratio;
    }
    info.sink = o->model.sink;
    info.recent = o->model.recent;
    const RulerSummary s = summarize_ruler(results);
    std::vector<std::string> tasks;
    for (const auto& r : results)
      if (std::find(tasks.begin(), tasks.end(), r.cell.task) == tasks.end()) tasks.push_back(r.cell.task);
    fmt::print("{:<18}", "task");
    for (const auto& m : modes) fmt::print(" {:>10}", m.name);
    fmt::print("\n");
    for (const auto& t : tasks) {
      fmt::print("{:<18}", t);
      for (const auto& m : modes) fmt::print(" {:>10.1f}", s.get(m.name, t, 0));
      fmt::print("\n");
    }
    if (!o->out.empty()) {
      const auto parent = std::filesystem::path(o->out).parent_path();
      if (!parent.empty()) std::filesystem::create_directories(parent);
      write_ruler_csv(results, o->out + ".csv");
      write_ruler_json(results, info, o->out + ".json");
      write_ruler_svg(results, info, o->out + ".svg");
      fmt::print("wrote {0}.csv {0}.json {0}.svg\n", o->out);
    }
    for (const auto& m : modes) {
      std::string per_len;
      for (int64_t L : grid.lengths) per_len += fmt::format(" {}: {:.1f}", L, s.get(m.name, "", L));
      fmt::print("ruler {} {}: average {:.1f} over {} tasks x {} lengths x {} samples |{}\n", info.grid, m.name,
                 s.get(m.name, "", 0), tasks.size(), grid.lengths.size(), grid.samples, per_len);
    }
    fmt::print("{}, peak RSS {:.0f} MiB\n", info.title(), peak_rss_mib());
  });
}

}  // namespace duo::cli
