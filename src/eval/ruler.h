// A RULER-style grid (tasks x lengths x samples, eval/ruler_tasks.h) run on one loaded model
// for one or more attention modes, scored as RULER scores (each expected value looked up in
// the answer; a sample's score is the fraction found), with CSV, JSON and SVG reports.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "eval/ruler_tasks.h"
#include "duo/head_plan.h"

namespace duo {

class Engine;

// RULER's string_match_all for one sample: the fraction of expected values that occur in the
// output, compared case-insensitively.
double ruler_score(const std::vector<std::string>& expected, const std::string& output);

// Development and report grids differ in seeds and in the haystack of the varied-haystack
// tasks (dev: code, report: prose), so settings chosen on one are measured on the other.
enum class RulerGridKind { Dev, Report };
RulerGridKind parse_ruler_grid(const std::string& s);  // "dev" | "report"
const char* to_string(RulerGridKind g);

struct RulerGrid {
  RulerGridKind kind = RulerGridKind::Dev;
  std::vector<std::string> tasks;  // empty: every task
  std::vector<int64_t> lengths;
  int samples = 4;
  // Needle depth of sample s: depths[s % size]; empty: (s + 0.5) / samples.
  std::vector<double> depths;
  std::string haystack;  // override of the grid's varied haystack ("prose" or "code"); empty: the grid's
  uint64_t seed = 0;     // added to the grid's own seed
  bool use_chat_template = true;
  std::string chat_template_file;  // instead of the model's own template ("" = the model's)
};

struct RulerCell {  // one sample of one task at one length
  std::string task;
  int64_t length = 0;
  int sample = 0;
  double depth = -1.0;  // -1: the task has no depth
  RulerHaystack haystack = RulerHaystack::Repeat;
  uint64_t seed = 0;
};
// The grid's cells in run order (task, length, sample), with their seeds and haystacks.
std::vector<RulerCell> ruler_cells(const RulerGrid& grid);
// The prompt of one cell, as the run builds it.
RulerPrompt build_ruler_prompt(Engine& engine, const RulerGrid& grid, const RulerCell& cell);

// One attention mode the grid runs: a name for the reports and the head plan of its sequences
// (in the engine's cache-slot order).
struct RulerMode {
  std::string name;
  HeadPlan plan;
};

struct RulerResult {
  std::string mode;
  RulerCell cell;
  std::vector<std::string> expected;
  std::string output;
  double score = 0.0;  // in [0, 1]
  int64_t prompt_tokens = 0;
  double prefill_seconds = 0.0, decode_seconds = 0.0;
  size_t kv_bytes = 0;
};

// Runs every cell for every mode with greedy decoding (prompts are built once). `progress`
// is called after each cell.
std::vector<RulerResult> run_ruler(Engine& engine, const RulerGrid& grid, const std::vector<RulerMode>& modes,
                                   const std::function<void(size_t, size_t, const RulerResult&)>& progress);

// Summary: mean score per (mode, task, length), per (mode, length) over tasks, and per mode
// (the average over tasks and lengths), in percent.
struct RulerSummary {
  struct Entry {
    std::string mode, task;  // task "" : the average over tasks
    int64_t length = 0;      // 0: over lengths
    double score = 0.0;
    int samples = 0;
  };
  std::vector<Entry> entries;
  double get(const std::string& mode, const std::string& task, int64_t length) const;  // NaN when absent
};
RulerSummary summarize_ruler(const std::vector<RulerResult>& r);

// Settings written into the reports and the plot's title.
struct RulerReportInfo {
  std::string model, grid, device, kv_type, pattern;
  double retrieval_ratio = -1.0;
  int sink = 0, recent = 0;
  std::string title() const;
};
void write_ruler_csv(const std::vector<RulerResult>& r, const std::string& path);
void write_ruler_json(const std::vector<RulerResult>& r, const RulerReportInfo& info, const std::string& path);
// One heat map (task rows plus the average, length columns) per mode, side by side.
void write_ruler_svg(const std::vector<RulerResult>& r, const RulerReportInfo& info, const std::string& path);

}  // namespace duo
