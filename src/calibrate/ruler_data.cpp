#include "calibrate/ruler_data.h"

#include <algorithm>

#include "core/error.h"
#include "eval/ruler_tasks.h"
#include "tokenizer/tokenizer.h"

namespace duo {

namespace {

// The answer's tokens: each expected value after its separator (" " before the first, ", "
// before the others), and the token range of each value within them.
struct Answer {
  std::vector<int32_t> tokens;
  std::vector<std::pair<int64_t, int64_t>> spans;
};

Answer answer_tokens(const Tokenizer& tok, const std::vector<std::string>& values) {
  Answer a;
  for (size_t i = 0; i < values.size(); ++i) {
    // Separator and value encoded together, as the model would write them (" amber" is one
    // token in byte-level BPE); the value's span starts at the last token from which on the
    // decoded text still holds the whole value, so it leaves out a separator-only token.
    const std::vector<int32_t> ids = tok.encode((i == 0 ? " " : ", ") + values[i], false, false);
    DUO_CHECK(!ids.empty(), "internal: the answer '{}' encodes to no tokens", values[i]);
    size_t from = 0;
    for (size_t j = ids.size(); j-- > 0;)
      if (tok.decode(std::vector<int32_t>(ids.begin() + (int64_t)j, ids.end())).find(values[i]) != std::string::npos) {
        from = j;
        break;
      }
    const int64_t base = (int64_t)a.tokens.size();
    a.tokens.insert(a.tokens.end(), ids.begin(), ids.end());
    a.spans.push_back({base + (int64_t)from, (int64_t)a.tokens.size()});
  }
  return a;
}

}  // namespace

const std::vector<std::string>& default_calibration_tasks() {
  static const std::vector<std::string> t = {"niah_single_1",   "niah_single_2",   "niah_single_3",
                                             "niah_multikey_1", "niah_multikey_2", "niah_multikey_3",
                                             "niah_multivalue", "niah_multiquery", "vt"};
  return t;
}

void RulerDataConfig::validate() const {
  DUO_CHECK(min_len >= 0 && max_len >= std::max<int64_t>(1, min_len), "sample lengths: need min ({}) <= max ({})",
            min_len, max_len);
  DUO_CHECK(length_intervals >= 1, "length intervals must be >= 1 (got {})", length_intervals);
  DUO_CHECK(min_depth >= 0 && min_depth <= max_depth && max_depth <= 1,
            "needle depths: need 0 <= min ({}) <= max ({}) <= 1", min_depth, max_depth);
  DUO_CHECK(depth_intervals >= 1, "depth intervals must be >= 1 (got {})", depth_intervals);
  for (const auto& t : tasks) ruler_task(t);  // unknown names fail
  for (RulerHaystack h : haystacks)
    DUO_CHECK(h == RulerHaystack::Repeat || h == RulerHaystack::Prose || h == RulerHaystack::Code,
              "calibration haystacks are repeat, prose or code (got {})", to_string(h));
}

RulerSampleSource::RulerSampleSource(const Tokenizer& tok, const ChatTemplate* tmpl, RulerDataConfig cfg)
    : tok_(tok), cfg_(std::move(cfg)) {
  if (tmpl) tmpl_ = std::make_unique<ChatTemplate>(*tmpl);
  if (cfg_.tasks.empty()) cfg_.tasks = default_calibration_tasks();
  if (cfg_.haystacks.empty()) cfg_.haystacks = {RulerHaystack::Prose, RulerHaystack::Code};
  if (cfg_.min_len == 0) cfg_.min_len = std::min(RulerDataConfig::kAutoMinLen, cfg_.max_len);
  cfg_.validate();
  // The shortest sample of each task, so that a minimum too short for one fails now.
  for (const auto& t : cfg_.tasks) {
    try {
      build({t, cfg_.min_len, 0.5, cfg_.haystacks[0], kRulerCalibrationSeedBase});
    } catch (const Error& e) {
      fail("--min-len {} is too short for the RULER task {}: {}", cfg_.min_len, t, e.what());
    }
  }
}

RulerDraw RulerSampleSource::draw(std::mt19937_64& rng) const {
  const RulerDataConfig& c = cfg_;
  RulerDraw d;
  d.task = c.tasks[uniform_below(rng, c.tasks.size())];
  d.length = draw_sample_length(rng, c.min_len, c.max_len, c.length_intervals);
  const uint64_t slot = uniform_below(rng, (uint64_t)c.depth_intervals);
  d.depth = c.depth_intervals == 1 ? c.min_depth
                                   : c.min_depth + (c.max_depth - c.min_depth) * (double)slot / (c.depth_intervals - 1);
  d.haystack = c.haystacks[uniform_below(rng, c.haystacks.size())];
  d.seed = kRulerCalibrationSeedBase + uniform_below(rng, kRulerCalibrationSeedSpan);
  return d;
}

PasskeySample RulerSampleSource::build(const RulerDraw& d) const {
  // The prompt takes what the answer leaves; the answer's values come from the prompt. Needle
  // and vt values and cwe's common words are drawn before the haystack, so they do not depend on
  // the length: a probe at the minimum length gives the answer, one more build the sample. fwe's
  // answer is counted in the list and may change with the length: try a few times.
  const RulerPrompt probe =
      build_ruler_prompt(tok_, tmpl_.get(), d.task, std::min(cfg_.min_len, d.length), d.depth, d.haystack, d.seed);
  int64_t answer_len = (int64_t)answer_tokens(tok_, probe.expected).tokens.size();
  for (int tries = 0; tries < 8; ++tries) {
    DUO_CHECK(d.length > answer_len, "a {}-token sample has no room for its {}-token answer", d.length, answer_len);
    const RulerPrompt p =
        build_ruler_prompt(tok_, tmpl_.get(), d.task, d.length - answer_len, d.depth, d.haystack, d.seed);
    const Answer a = answer_tokens(tok_, p.expected);
    if ((int64_t)a.tokens.size() != answer_len) {
      answer_len = (int64_t)a.tokens.size();
      continue;
    }
    PasskeySample s;
    s.tokens = p.tokens;
    const int64_t at = (int64_t)s.tokens.size();
    s.tokens.insert(s.tokens.end(), a.tokens.begin(), a.tokens.end());
    s.passkeys = p.expected;
    for (const auto& [b, e] : a.spans) s.answer_spans.push_back({at + b, at + e});
    const double body = (double)std::max<int64_t>(1, p.body_end - p.body_begin);
    for (const auto& [b, e] : p.answer_spans) {  // context order
      s.needle_positions.push_back(b);
      s.depths.push_back((double)(b - p.body_begin) / body);
    }
    mark_answers(s, cfg_.loss_rows, p.question_begin);  // one answer a value
    DUO_CHECK((int64_t)s.tokens.size() == d.length, "internal: {} sample of {} tokens, expected {}", d.task,
              s.tokens.size(), d.length);
    return s;
  }
  fail("internal: the {} sample of {} tokens (seed {}) found no stable answer length", d.task, d.length, d.seed);
}

}  // namespace duo
