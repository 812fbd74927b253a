// The RULER-style calibration samples (calibrate/ruler_data.h): each is the RULER generator's
// prompt followed by the expected values as the answer, exactly as long as drawn, the same for
// the same generator state; the loss rows mean what they mean for passkeys; the prompt seeds
// never meet the dev or report grid's; and a short CPU calibration runs on them.
#include <gtest/gtest.h>

#include <algorithm>
#include <set>

#include "calibrate/calibrator.h"
#include "calibrate/devices/calibration_devices.h"
#include "calibrate/ruler_data.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "eval/ruler.h"
#include "eval/ruler_tasks.h"
#include "io/gguf.h"
#include "model/model.h"
#include "test_support.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace duo {
namespace {

std::vector<int32_t> slice(const std::vector<int32_t>& v, int64_t b, int64_t e) {
  return std::vector<int32_t>(v.begin() + b, v.begin() + e);
}

std::string join(const std::vector<std::string>& v, const std::string& sep) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? sep : "") + v[i];
  return s;
}

struct Smol {
  std::unique_ptr<GgufFile> gguf;
  std::unique_ptr<Tokenizer> tok;
  ChatTemplate tmpl;
  explicit Smol(const std::string& path)
      : gguf(GgufFile::open(path)), tok(Tokenizer::from_gguf(*gguf)), tmpl(ChatTemplate::from_gguf(*gguf)) {}
};

// What every sample must hold, checked against the RULER generator itself: the tokens are its
// prompt (for the drawn task, depth, haystack and seed, at the length the answer leaves), then
// " v1, v2, ..." whose value spans decode to the expected values; the mask is those spans.
void check_sample(const Smol& m, const RulerDraw& d, const PasskeySample& s) {
  ASSERT_EQ((int64_t)s.tokens.size(), d.length) << d.task;
  ASSERT_FALSE(s.passkeys.empty());
  ASSERT_EQ(s.answer_spans.size(), s.passkeys.size());
  // The answer's tokens: the shortest tail that decodes to it.
  std::string answer_text = " ";
  answer_text += join(s.passkeys, ", ");
  const int64_t answer_tokens = [&] {
    for (int64_t n = 1; n < d.length; ++n)
      if (m.tok->decode(slice(s.tokens, d.length - n, d.length)) == answer_text) return n;
    return (int64_t)-1;
  }();
  ASSERT_GT(answer_tokens, 0) << d.task << ": the sample does not end with '" << answer_text << "'";
  const RulerPrompt ref = build_ruler_prompt(*m.tok, &m.tmpl, d.task, d.length - answer_tokens, d.depth, d.haystack, d.seed);
  EXPECT_EQ(ref.expected, s.passkeys) << d.task;
  EXPECT_EQ(slice(s.tokens, 0, (int64_t)ref.tokens.size()), ref.tokens) << d.task;
  for (size_t i = 0; i < s.passkeys.size(); ++i) {
    const auto& sp = s.answer_spans[i];
    ASSERT_GE(sp[0], (int64_t)ref.tokens.size());
    std::string text = m.tok->decode(slice(s.tokens, sp[0], sp[1]));
    text.erase(0, text.find_first_not_of(" ,"));  // a token may carry the separator
    EXPECT_EQ(text, s.passkeys[i]) << d.task << " value " << i;
    if (i > 0) {
      EXPECT_GE(sp[0], s.answer_spans[i - 1][1]);
    }
  }
  EXPECT_EQ(s.answer_spans.back()[1], d.length);  // ends with the last answer token
  std::vector<int64_t> masked;
  for (size_t p = 0; p < s.answer_mask.size(); ++p)
    if (s.answer_mask[p]) masked.push_back((int64_t)p);
  EXPECT_EQ(masked, s.loss_rows);  // (answers: the default rows)
  // The needles holding the answers are in the context, in order.
  EXPECT_EQ(s.needle_positions.size(), ref.answer_spans.size());
  EXPECT_TRUE(std::is_sorted(s.needle_positions.begin(), s.needle_positions.end()));
  for (int64_t p : s.needle_positions) EXPECT_LT(p, ref.body_end);
}

TEST(CalibRulerData, SamplesAreTheGeneratorsPromptsWithTheirAnswersAndReproducible) {
  DUO_REQUIRE_MODEL(path, test::kSmolLM2);
  Smol m(path);
  RulerDataConfig c;
  c.min_len = 600;
  c.max_len = 900;
  c.length_intervals = 4;
  RulerSampleSource src(*m.tok, &m.tmpl, c);
  EXPECT_EQ(src.config().tasks, default_calibration_tasks());
  ASSERT_EQ(src.config().haystacks.size(), 2u);
  std::mt19937_64 r1(7), r2(7), r3(8);
  std::set<std::string> tasks;
  std::set<int64_t> lengths;
  std::set<RulerHaystack> hays;
  for (int i = 0; i < 12; ++i) {
    const RulerDraw d = src.draw(r1);
    const PasskeySample a = src.build(d), b = src.next(r2), other = src.next(r3);
    EXPECT_EQ(a.tokens, b.tokens);
    EXPECT_EQ(a.loss_rows, b.loss_rows);
    EXPECT_NE(a.tokens, other.tokens);
    // Lengths on the grid 600, 700, 800, 900; seeds in the calibration space.
    EXPECT_TRUE(d.length == 600 || d.length == 700 || d.length == 800 || d.length == 900) << d.length;
    EXPECT_GE(d.seed, kRulerCalibrationSeedBase);
    EXPECT_LT(d.seed - kRulerCalibrationSeedBase, kRulerCalibrationSeedSpan);
    EXPECT_GE(d.depth, 0.05);
    EXPECT_LE(d.depth, 0.95);
    check_sample(m, d, a);
    tasks.insert(d.task), lengths.insert(d.length), hays.insert(d.haystack);
  }
  EXPECT_GE(tasks.size(), 5u);
  EXPECT_GE(lengths.size(), 3u);
  EXPECT_EQ(hays.size(), 2u);
}

// Every task, including the aggregation ones, at two lengths and both varied haystacks.
TEST(CalibRulerData, EveryTaskBuildsAtExactLengths) {
  DUO_REQUIRE_MODEL(path, test::kSmolLM2);
  Smol m(path);
  RulerDataConfig c;
  for (const auto& t : ruler_tasks()) c.tasks.push_back(t.name);
  c.min_len = 700;
  c.max_len = 1100;
  RulerSampleSource src(*m.tok, &m.tmpl, c);
  uint64_t seed = kRulerCalibrationSeedBase + 12345;
  for (const auto& t : c.tasks)
    for (int64_t len : {700, 1100}) {
      const RulerDraw d{t, len, 0.4, len == 700 ? RulerHaystack::Prose : RulerHaystack::Code, seed++};
      check_sample(m, d, src.build(d));
    }
  // Plain text (no chat template) builds as well.
  RulerSampleSource plain(*m.tok, nullptr, c);
  const PasskeySample s = plain.build({"niah_multivalue", 800, 0.5, RulerHaystack::Prose, seed});
  EXPECT_EQ(s.tokens.size(), 800u);
  EXPECT_EQ(s.passkeys.size(), 4u);
  EXPECT_EQ(m.tok->decode(s.tokens).find("<|im_start|>"), std::string::npos);
}

// The rows of each LossRows choice on a 4-value sample, as for passkeys: predictions are the rows
// whose next token is an answer token, first one row a value (the one predicting its first
// token), questions everything from the question on (a contiguous run to the end).
TEST(CalibRulerData, LossRowsMeanWhatTheyMeanForPasskeys) {
  DUO_REQUIRE_MODEL(path, test::kSmolLM2);
  Smol m(path);
  const RulerDraw d{"niah_multivalue", 800, 0.3, RulerHaystack::Prose, kRulerCalibrationSeedBase + 99};
  std::vector<PasskeySample> by;
  for (LossRows r : {LossRows::Answers, LossRows::Predictions, LossRows::FirstWords, LossRows::Questions}) {
    RulerDataConfig c;
    c.min_len = c.max_len = 800;
    c.tasks = {"niah_multivalue"};
    c.loss_rows = r;
    by.push_back(RulerSampleSource(*m.tok, &m.tmpl, c).build(d));
  }
  const PasskeySample &ans = by[0], &pred = by[1], &first = by[2], &qs = by[3];
  ASSERT_EQ(ans.passkeys.size(), 4u);
  for (const auto& s : by) ASSERT_EQ(s.tokens, ans.tokens);
  std::vector<int32_t> predicted, answer;
  for (int64_t r : pred.loss_rows) predicted.push_back(pred.tokens[(size_t)r + 1]);
  for (int64_t r : ans.loss_rows) answer.push_back(ans.tokens[(size_t)r]);
  EXPECT_EQ(predicted, answer);
  ASSERT_EQ(first.loss_rows.size(), 4u);
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(first.loss_rows[i], first.answer_spans[i][0] - 1);
    // The token after the row starts the value (digits: the value's first digit).
    const std::string next = m.tok->decode(slice(first.tokens, first.loss_rows[i] + 1, first.loss_rows[i] + 2));
    EXPECT_EQ(first.passkeys[i].rfind(next.substr(next.find_first_not_of(' ')), 0), 0u) << next;
  }
  const int64_t q0 = qs.loss_rows.front();
  EXPECT_EQ((int64_t)qs.loss_rows.size(), (int64_t)qs.tokens.size() - q0);
  EXPECT_EQ(qs.loss_rows.back(), (int64_t)qs.tokens.size() - 1);
  EXPECT_GT(q0, qs.needle_positions.back());
  EXPECT_LT(q0, ans.loss_rows.front());
  EXPECT_EQ(m.tok->decode(slice(qs.tokens, q0, q0 + 12)).rfind("\nWhat are all the special magic numbers", 0), 0u);
}

// The calibration seeds and the haystack batches they read (seed, seed + 1, ...: a batch of 64
// pieces, some tens of tokens each, so a few thousand batches cover 128K tokens) never meet a
// dev or report cell's, for grid seeds up to far beyond any run's.
TEST(CalibRulerData, SeedsAreDisjointFromTheDevAndReportGrids) {
  constexpr uint64_t kBatches = 1u << 16;
  const uint64_t lo = kRulerCalibrationSeedBase, hi = kRulerCalibrationSeedBase + kRulerCalibrationSeedSpan;
  ASSERT_GT(hi + kBatches, lo);  // the space and the batches past its top do not wrap
  uint64_t most = 0;
  size_t cells = 0;
  for (RulerGridKind kind : {RulerGridKind::Dev, RulerGridKind::Report})
    for (uint64_t grid_seed : {0ull, 1ull, 2ull, 3ull, 17ull, 1000ull, 1000000ull, 1000000000ull, 1000000000000ull}) {
      RulerGrid g;
      g.kind = kind;
      g.seed = grid_seed;
      g.lengths = {1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072};
      g.samples = 100;
      for (const RulerCell& c : ruler_cells(g)) {
        ASSERT_LT(c.seed, lo) << to_string(kind) << " grid seed " << grid_seed;
        most = std::max(most, c.seed);
        ++cells;
      }
    }
  EXPECT_EQ(cells, 2u * 9 * 11 * 8 * 100);
  // A grid prompt's batches end before the first calibration seed.
  EXPECT_LT(most + kBatches, lo);
}

// Steps of `duo calibrate --data ruler` on SmolLM2 (the CLI's pieces: the CPU device, the RULER
// source, the calibrator) on short samples, with a window shorter than them so that the
// streaming branch differs and gates from 0.5 so that the first step already has a
// distillation loss: the loss compares the drawn sample's answer rows, and the gates move.
TEST(CalibRulerData, ShortCpuCalibrationRunsOnRulerSamples) {
  DUO_REQUIRE_MODEL(path, test::kSmolLM2);
  auto model = Model::load(path);
  auto tok = Tokenizer::from_gguf(model->gguf());
  const ChatTemplate tmpl = ChatTemplate::from_gguf(model->gguf());
  RulerDataConfig d;
  d.tasks = {"niah_multikey_1", "vt"};
  d.min_len = d.max_len = 240;
  RulerSampleSource src(*tok, &tmpl, d);
  ThreadPool pool(2);
  CalibrationDeviceOptions o;
  o.window = {4, 32};
  o.pool = &pool;
  auto dev = make_calibration_device("cpu", *model, o);
  CalibrationConfig cfg;
  cfg.steps = 2;
  cfg.window = o.window;
  cfg.init_gate = 0.5;
  cfg.seed = 3;
  Calibrator cal(model->config().n_layers, model->config().n_kv_heads, src, dev->loss_backend(cfg.lambda, cfg.distill),
                 cfg);
  // The samples the run draws: the source's, from the calibrator's seeded generator.
  std::mt19937_64 rng(cfg.seed);
  std::vector<int64_t> rows;
  for (int i = 0; i < 2; ++i) rows.push_back((int64_t)src.next(rng).loss_rows.size());
  while (!cal.done()) cal.step();
  ASSERT_EQ(cal.history().size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(cal.history()[i].tokens, 240);
    EXPECT_EQ(cal.history()[i].answer_tokens, rows[i]);
    EXPECT_GT(cal.history()[i].loss.distill, 0.0);
  }
  int moved = 0;
  for (double g : cal.state().gates) moved += g != 0.5;
  EXPECT_EQ(moved, (int)cal.state().gates.size());
}

}  // namespace
}  // namespace duo
