// RULER-style calibration samples (docs/calibration.md "Data"): prompts of the RULER task
// generator (eval/ruler_tasks.h: needles with several keys and distractor values, UUIDs,
// variable chains, varied haystacks) with the expected answer appended as the assistant's turn,
// so calibration sees the lookups the RULER grid scores. Each sample is one task of a mix at a
// length drawn as the passkey source draws them; the loss rows mean what they mean there
// (LossRows), with one answer span per expected value.
//
// Seeds: every prompt seed comes from a calibration seed space of its own, disjoint from the
// dev and report grids' seeds (eval/ruler.h ruler_cells) and from the haystack batches those
// seeds read (a prompt of seed s reads filler batches s, s + 1, ...), so no calibration sample
// shares keys, values or haystack text with a prompt the grids score.
#pragma once
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "calibrate/passkey_data.h"
#include "eval/ruler_text.h"
#include "tokenizer/chat_template.h"

namespace duo {

class Tokenizer;

// The calibration seed space: [base, base + span). The dev grid's seeds start at 0x0de70000
// and the report grid's at 0x7e900000000, each plus grid seed x 1000003 and a few million:
// both stay below the base for any grid seed under 10^13.
constexpr uint64_t kRulerCalibrationSeedBase = 0xCA1B000000000000ull;
constexpr uint64_t kRulerCalibrationSeedSpan = 1ull << 40;

struct RulerDataConfig {
  // Tasks drawn uniformly; empty: default_calibration_tasks().
  std::vector<std::string> tasks;
  // Haystack of the tasks with a varied haystack, drawn uniformly; empty: prose and code.
  std::vector<RulerHaystack> haystacks;
  // Total tokens of a sample (prompt and answer); min_len 0: kAutoMinLen.
  int64_t min_len = 0, max_len = 32000;
  int length_intervals = 50;  // lengths drawn from this many evenly spaced values
  double min_depth = 0.05, max_depth = 0.95;
  int depth_intervals = 20;   // first-needle depths drawn from this many evenly spaced values
  LossRows loss_rows = LossRows::Answers;
  static constexpr int64_t kAutoMinLen = 1024;
  void validate() const;
};

// The retrieval-heavy families: needle single / multi-key / multi-value / multi-query and
// variable tracking (cwe and fwe are aggregation, not lookup: opt in with --data-tasks).
const std::vector<std::string>& default_calibration_tasks();

// One drawn sample before it is built.
struct RulerDraw {
  std::string task;
  int64_t length = 0;
  double depth = 0.5;
  RulerHaystack haystack = RulerHaystack::Prose;  // for varied-haystack tasks (others use their own)
  uint64_t seed = 0;                              // in the calibration seed space
};

class RulerSampleSource : public SampleSource {
 public:
  // tmpl: the model's chat template, or null for plain text. Builds one sample of every task at
  // the minimum length, so a length too short for a task is an error here, not mid-run.
  RulerSampleSource(const Tokenizer& tok, const ChatTemplate* tmpl, RulerDataConfig cfg);

  RulerDraw draw(std::mt19937_64& rng) const;
  // A sample of exactly draw.length tokens: the task's prompt, then the expected values joined
  // by ", " as the assistant's answer; ends with the last answer token.
  PasskeySample build(const RulerDraw& draw) const;
  PasskeySample next(std::mt19937_64& rng) override { return build(draw(rng)); }

  const RulerDataConfig& config() const { return cfg_; }  // min_len, tasks and haystacks resolved

 private:
  const Tokenizer& tok_;
  std::unique_ptr<ChatTemplate> tmpl_;
  RulerDataConfig cfg_;
};

// Half the samples from one source, half from the other (a fair coin from the generator).
class MixedSampleSource : public SampleSource {
 public:
  MixedSampleSource(SampleSource& a, SampleSource& b) : a_(a), b_(b) {}
  PasskeySample next(std::mt19937_64& rng) override { return uniform_below(rng, 2) == 0 ? a_.next(rng) : b_.next(rng); }

 private:
  SampleSource &a_, &b_;
};

}  // namespace duo
