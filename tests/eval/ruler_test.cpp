// RULER-style prompts and scoring (src/eval/ruler_tasks.cpp, ruler.cpp): exact token lengths,
// needles where the depth asks, every expected value where the prompt says it is and nowhere
// else, word lists whose counts are what the answer claims, RULER's containment scoring, the
// report shapes, and a tiny grid on the real model. On the byte-level tokenizer (a token per
// byte) and on SmolLM2's BPE tokenizer and chat template (when the model is fetched).
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "duo/engine.h"
#include "engine/backend.h"
#include "eval/byte_model.h"
#include "eval/ruler.h"
#include "eval/ruler_tasks.h"
#include "io/gguf.h"
#include "model/model.h"
#include "test_support.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace duo {
namespace {

size_t count(const std::string& hay, const std::string& needle) {
  size_t n = 0;
  for (size_t at = hay.find(needle); at != std::string::npos; at = hay.find(needle, at + 1)) ++n;
  return n;
}

std::string decode(const Tokenizer& tok, const std::vector<int32_t>& ids, int64_t from, int64_t to) {
  return tok.decode(std::vector<int32_t>(ids.begin() + from, ids.begin() + to));
}

// Needle and variable-tracking prompts: each expected value occurs in the context only inside
// the answer spans (once a value, twice for a VT variable that is assigned and then read), the
// distractor spans hold none of them, and the first expected value's needle sits where the
// depth asks.
void check_needles(const Tokenizer& tok, const RulerPrompt& p, const std::string& task, double depth,
                   int64_t slack) {
  const std::string context = decode(tok, p.tokens, p.body_begin, p.body_end);
  ASSERT_FALSE(p.expected.empty());
  ASSERT_FALSE(p.answer_spans.empty());
  std::string answers, distractors;
  for (const auto& s : p.answer_spans) answers += decode(tok, p.tokens, s.first, s.second) + "\n";
  for (const auto& s : p.distractor_spans) distractors += decode(tok, p.tokens, s.first, s.second) + "\n";
  std::set<std::string> distinct(p.expected.begin(), p.expected.end());
  EXPECT_EQ(distinct.size(), p.expected.size()) << "expected values are distinct";
  for (const auto& v : p.expected) {
    const size_t times = task == "vt" && v != p.expected.back() ? 2 : 1;
    EXPECT_EQ(count(context, v), times) << v;
    EXPECT_EQ(count(answers, v), times) << v << " must be in the answer sentences";
    EXPECT_EQ(count(distractors, v), 0u) << v << " must not be in a distractor";
    EXPECT_EQ(count(decode(tok, p.tokens, 0, p.body_begin), v), 0u) << "instruction holds " << v;
  }
  const int64_t needle_tokens = [&] {
    int64_t n = 0;
    for (const auto& s : p.answer_spans) n += s.second - s.first;
    if (p.haystack != RulerHaystack::Needles)
      for (const auto& s : p.distractor_spans) n += s.second - s.first;
    return n;
  }();
  if (task.rfind("niah_", 0) == 0) {
    // Distractor needles: same sentence shape, other keys and values.
    const size_t want = task == "niah_multikey_1" ? 3u : task.find("multikey_") != std::string::npos ? 2u : 0u;
    EXPECT_GE(p.distractor_spans.size(), want);
    // Depth: the first answer needle starts within `slack` of depth x filler tokens.
    // The needle of the first expected value (spans are in prompt order); other needles placed
    // before it (distractors, other values) push it back by their length.
    int64_t first = -1;
    for (const auto& s : p.answer_spans)
      if (decode(tok, p.tokens, s.first, s.second).find(p.expected[0]) != std::string::npos) first = s.first;
    ASSERT_GE(first, 0);
    int64_t before = 0;
    for (const auto& s : p.answer_spans)
      if (s.second <= first) before += s.second - s.first;
    if (p.haystack != RulerHaystack::Needles)
      for (const auto& s : p.distractor_spans)
        if (s.second <= first) before += s.second - s.first;
    const double filler = (double)(p.body_end - p.body_begin - needle_tokens);
    // In a needles haystack the pieces are needles (two UUIDs: longer than a sentence).
    int64_t half_piece = slack;
    if (p.haystack == RulerHaystack::Needles)
      for (const auto& s : p.distractor_spans) half_piece = std::max(half_piece, (s.second - s.first) / 2 + 1);
    EXPECT_NEAR((double)(first - p.body_begin - before), depth * filler, (double)half_piece);
  }
  if (task == "vt") {
    // The chain reads in order: X1 = value, X2 = X1, ...
    ASSERT_EQ(p.answer_spans.size(), 5u);
    for (size_t i = 0; i < 5; ++i) {
      const std::string s = decode(tok, p.tokens, p.answer_spans[i].first, p.answer_spans[i].second);
      EXPECT_NE(s.find("VAR " + p.expected[i] + " = " + (i ? "VAR " + p.expected[i - 1] : std::string())),
                std::string::npos)
          << s;
      if (i) {
        EXPECT_GT(p.answer_spans[i].first, p.answer_spans[i - 1].first);
      }
    }
  }
}

// Word lists: the counts read back from the decoded context are the prompt's claim, and the
// expected words are the most frequent (strictly, so the answer is unambiguous).
void check_words(const Tokenizer& tok, const RulerPrompt& p, const std::string& task) {
  const std::string context = decode(tok, p.tokens, p.body_begin, p.body_end);
  std::map<std::string, int> counts;
  std::istringstream is(context);
  std::string w;
  int64_t next_number = 1;
  while (is >> w) {
    if (task == "cwe" && std::isdigit((unsigned char)w[0])) {
      EXPECT_EQ(w, std::to_string(next_number++) + ".") << "entries are numbered in order";
      continue;
    }
    ++counts[w];
  }
  EXPECT_EQ(counts, p.word_counts);
  const size_t k = task == "cwe" ? 10 : 3;
  ASSERT_EQ(p.expected.size(), k);
  int least_expected = 1 << 30, most_other = 0;
  for (const auto& [word, c] : counts) {
    const bool exp = std::find(p.expected.begin(), p.expected.end(), word) != p.expected.end();
    if (exp) least_expected = std::min(least_expected, c);
    else most_other = std::max(most_other, c);
  }
  EXPECT_GT(least_expected, most_other);
  if (task == "cwe") {
    EXPECT_GE(least_expected, 3 * std::max(1, most_other)) << "common words stand out";
  }
  for (const auto& e : p.expected) EXPECT_EQ(count(decode(tok, p.tokens, 0, p.body_begin), e), 0u);
}

void check_all(const Tokenizer& tok, const ChatTemplate* tmpl, const std::vector<int64_t>& lengths,
               int64_t slack) {
  for (const auto& info : ruler_tasks())
    for (RulerHaystack hay : {RulerHaystack::Prose, RulerHaystack::Code, RulerHaystack::Repeat})
      for (int64_t L : lengths)
        for (double depth : {0.0, 0.3, 0.77, 1.0}) {
          if (!info.uses_depth && depth != 0.3) continue;
          if (!info.varied_haystack && hay != RulerHaystack::Prose) continue;
          const std::string task = info.name;
          SCOPED_TRACE(task + " " + to_string(hay) + " length " + std::to_string(L) + " depth " + std::to_string(depth));
          const RulerPrompt p = build_ruler_prompt(tok, tmpl, task, L, depth, hay, 42);
          ASSERT_EQ((int64_t)p.tokens.size(), L);
          EXPECT_EQ(p.haystack, info.varied_haystack ? hay : info.haystack);
          EXPECT_EQ(p.body_end, p.question_begin);
          EXPECT_LT(p.body_begin, p.body_end);
          // Seeded: the same seed gives the same prompt, another seed another one.
          const RulerPrompt again = build_ruler_prompt(tok, tmpl, task, L, depth, hay, 42);
          EXPECT_EQ(again.tokens, p.tokens);
          EXPECT_EQ(again.expected, p.expected);
          EXPECT_NE(build_ruler_prompt(tok, tmpl, task, L, depth, hay, 43).tokens, p.tokens);
          if (task == "cwe" || task == "fwe")
            check_words(tok, p, task);
          else
            check_needles(tok, p, task, depth, slack);
        }
  EXPECT_THROW(build_ruler_prompt(tok, tmpl, "niah_single_1", 60, 0.5, RulerHaystack::Prose, 1), std::runtime_error);
  EXPECT_THROW(build_ruler_prompt(tok, tmpl, "niah_single_1", 2000, 1.5, RulerHaystack::Prose, 1), std::runtime_error);
  EXPECT_THROW(build_ruler_prompt(tok, tmpl, "nope", 2000, 0.5, RulerHaystack::Prose, 1), std::runtime_error);
}

struct ByteTokenizer {
  test::TempFile file{"duo_ruler_bytes.gguf"};
  std::unique_ptr<GgufFile> gguf;
  std::unique_ptr<Tokenizer> tok;
  ByteTokenizer() {
    test::write_byte_model(file.path);
    gguf = GgufFile::open(file.path);
    tok = Tokenizer::from_gguf(*gguf);
  }
};

// A byte per token: a needle lands at a piece boundary, so within half the longest haystack
// piece (a prose sentence or a needle of the needles haystack, under 140 bytes).
TEST(RulerPrompt, TasksOnBytes) {
  ByteTokenizer b;
  check_all(*b.tok, nullptr, {1500, 4001}, 70);
  const ChatTemplate chatml = ChatTemplate::from_jinja(kChatMLTemplate, ChatTokens::from_tokenizer(*b.tok));
  check_all(*b.tok, &chatml, {2500}, 70);
}

TEST(RulerPrompt, TasksOnSmolLM2) {
  DUO_REQUIRE_MODEL(path, test::kSmolLM2);
  auto g = GgufFile::open(path);
  auto tok = Tokenizer::from_gguf(*g);
  const ChatTemplate tmpl = ChatTemplate::from_gguf(*g);
  check_all(*tok, &tmpl, {700, 3000}, 30);
  check_all(*tok, nullptr, {1111}, 30);
}

TEST(RulerPrompt, HaystackTextsHoldNoValues) {
  // Values are digits, hyphenated words, UUIDs and upper-case names: no haystack text may
  // contain any of those shapes, or "nowhere else" could fail by chance.
  for (RulerHaystack h : {RulerHaystack::Repeat, RulerHaystack::Prose, RulerHaystack::Code})
    for (const auto& s : ruler_filler(h, 500, 9)) {
      EXPECT_EQ(s.find_first_of("0123456789-"), std::string::npos) << s;
      int upper_run = 0;
      for (char c : s) {
        upper_run = std::isupper((unsigned char)c) ? upper_run + 1 : 0;
        EXPECT_LT(upper_run, 2) << s;
      }
    }
  EXPECT_THROW(ruler_filler(RulerHaystack::Needles, 1, 1), std::runtime_error);
  EXPECT_EQ(ruler_filler(RulerHaystack::Code, 50, 3), ruler_filler(RulerHaystack::Code, 50, 3));
  EXPECT_NE(ruler_filler(RulerHaystack::Code, 50, 3), ruler_filler(RulerHaystack::Code, 50, 4));
}

// RULER's string_match_all: the fraction of expected values found, case-insensitively.
TEST(RulerScore, ContainmentAndRecall) {
  EXPECT_DOUBLE_EQ(ruler_score({"1234567"}, "The number is 1234567."), 1.0);
  EXPECT_DOUBLE_EQ(ruler_score({"1234567"}, "The number is 1234568."), 0.0);
  EXPECT_DOUBLE_EQ(ruler_score({"1234567"}, ""), 0.0);
  EXPECT_DOUBLE_EQ(ruler_score({"ABCDE", "FGHIJ", "KLMNO", "PQRST"}, "abcde, FGHIJ and xyz"), 0.5);
  EXPECT_DOUBLE_EQ(ruler_score({"amber-falcon", "x"}, "AMBER-FALCON"), 0.5);
  EXPECT_DOUBLE_EQ(ruler_score({"a", "b", "c"}, "c b a"), 1.0);
  EXPECT_DOUBLE_EQ(ruler_score({}, "anything"), 0.0);
}

std::vector<RulerResult> stub_results() {
  // Two modes, two tasks, two lengths, two samples: scores chosen so every mean is known.
  std::vector<RulerResult> rs;
  const char* modes[] = {"full", "streaming"};
  const char* tasks[] = {"niah_single_1", "vt"};
  for (int m = 0; m < 2; ++m)
    for (int t = 0; t < 2; ++t)
      for (int64_t L : {1000, 2000})
        for (int s = 0; s < 2; ++s) {
          RulerResult r;
          r.mode = modes[m];
          r.cell.task = tasks[t];
          r.cell.length = L;
          r.cell.sample = s;
          r.cell.depth = t == 0 ? 0.25 + 0.5 * s : -1.0;
          r.expected = {"111", "222"};
          // full: everything found except vt at 2000, sample 1 (half); streaming: half of niah.
          if (m == 0) r.output = (t == 1 && L == 2000 && s == 1) ? "111" : "111 222";
          else r.output = t == 0 ? "222, \"quoted\"\nnew line" : "";
          r.score = ruler_score(r.expected, r.output);
          rs.push_back(r);
        }
  return rs;
}

TEST(RulerSummary, MeansOverSamplesThenTasksAndLengths) {
  const RulerSummary s = summarize_ruler(stub_results());
  EXPECT_DOUBLE_EQ(s.get("full", "vt", 2000), 75.0);
  EXPECT_DOUBLE_EQ(s.get("full", "vt", 1000), 100.0);
  EXPECT_DOUBLE_EQ(s.get("full", "vt", 0), 87.5);
  EXPECT_DOUBLE_EQ(s.get("full", "", 2000), 87.5);
  EXPECT_DOUBLE_EQ(s.get("full", "", 0), 93.75);
  EXPECT_DOUBLE_EQ(s.get("streaming", "niah_single_1", 0), 50.0);
  EXPECT_DOUBLE_EQ(s.get("streaming", "", 0), 25.0);
  EXPECT_TRUE(std::isnan(s.get("duo", "", 0)));
}

TEST(RulerReports, CsvJsonSvgShapes) {
  const auto rs = stub_results();
  RulerReportInfo info;
  info.model = "m";
  info.grid = "report";
  info.device = "cpu";
  info.kv_type = "f32";
  info.pattern = "p.tsv";
  info.retrieval_ratio = 0.5;
  test::TempFile csv("duo_ruler.csv"), json("duo_ruler.json"), svg("duo_ruler.svg");
  write_ruler_csv(rs, csv.path);
  std::ifstream c(csv.path);
  std::string header, line;
  std::getline(c, header);
  EXPECT_EQ(header, "mode,task,length,sample,depth,haystack,seed,score,expected,output,prompt_tokens,prefill_s,"
                    "decode_s,kv_bytes");
  int lines = 0;
  while (std::getline(c, line)) {
    ++lines;
    if (lines == 9) {
      EXPECT_EQ(line.rfind("streaming,niah_single_1,1000,0,0.25,repeat,0,0.5,\"111|222\",\"222, \"\"quoted\"\" new line\",", 0),
                0u)
          << line;
    }
  }
  EXPECT_EQ(lines, (int)rs.size()) << "one row a sample, newlines in outputs escaped";

  write_ruler_json(rs, info, json.path);
  const auto j = nlohmann::json::parse(std::ifstream(json.path));
  EXPECT_EQ(j["grid"], "report");
  EXPECT_DOUBLE_EQ(j["retrieval_ratio"].get<double>(), 0.5);
  EXPECT_DOUBLE_EQ(j["summary"]["full"]["average"].get<double>(), 93.75);
  EXPECT_DOUBLE_EQ(j["summary"]["full"]["by_length"]["2000"].get<double>(), 87.5);
  EXPECT_DOUBLE_EQ(j["summary"]["streaming"]["by_task"]["niah_single_1"].get<double>(), 50.0);
  EXPECT_DOUBLE_EQ(j["summary"]["full"]["cells"]["vt"]["2000"].get<double>(), 75.0);
  ASSERT_EQ(j["samples"].size(), rs.size());
  EXPECT_TRUE(j["samples"][2 * 4]["depth"].is_null() == false);
  EXPECT_TRUE(j["samples"][4]["depth"].is_null()) << "vt has no depth";
  EXPECT_EQ(j["samples"][8]["expected"], nlohmann::json({"111", "222"}));

  write_ruler_svg(rs, info, svg.path);
  std::stringstream s;
  s << std::ifstream(svg.path).rdbuf();
  const std::string text = s.str();
  EXPECT_NE(text.find("full (average 93.8)"), std::string::npos);
  EXPECT_NE(text.find("streaming (average 25.0)"), std::string::npos);
  EXPECT_NE(text.find("duo pattern p.tsv at ratio 0.50"), std::string::npos) << "settings in the title";
  EXPECT_NE(text.find(">niah_single_1<"), std::string::npos);
  EXPECT_NE(text.find(">2000<"), std::string::npos);
  EXPECT_NE(text.find("score (%)"), std::string::npos) << "legend";
}

TEST(RulerGrid, DevAndReportDiffer) {
  RulerGrid dev;
  dev.lengths = {1000, 2000};
  dev.samples = 3;
  RulerGrid report = dev;
  report.kind = RulerGridKind::Report;
  const auto a = ruler_cells(dev), b = ruler_cells(report);
  ASSERT_EQ(a.size(), ruler_tasks().size() * 2 * 3);
  ASSERT_EQ(a.size(), b.size());
  std::set<uint64_t> seeds;
  for (const auto& c : a) seeds.insert(c.seed);
  EXPECT_EQ(seeds.size(), a.size()) << "every cell its own seed";
  for (const auto& c : b) EXPECT_EQ(seeds.count(c.seed), 0u) << "no report seed on the dev grid";
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].task, b[i].task);
    if (ruler_task(a[i].task).varied_haystack) {
      EXPECT_EQ(a[i].haystack, RulerHaystack::Code);
      EXPECT_EQ(b[i].haystack, RulerHaystack::Prose);
    } else {
      EXPECT_EQ(a[i].haystack, b[i].haystack);
    }
    if (ruler_task(a[i].task).uses_depth)
      EXPECT_DOUBLE_EQ(a[i].depth, (a[i].sample + 0.5) / 3.0);
    else
      EXPECT_EQ(a[i].depth, -1.0);
  }
  dev.depths = {0.0, 1.0};
  dev.tasks = {"niah_multikey_1"};
  dev.haystack = "repeat";
  const auto c = ruler_cells(dev);
  ASSERT_EQ(c.size(), 6u);
  EXPECT_EQ(c[2].depth, 0.0);
  EXPECT_EQ(c[1].depth, 1.0);
  EXPECT_EQ(c[0].haystack, RulerHaystack::Repeat);
  dev.tasks = {"bogus"};
  EXPECT_THROW(ruler_cells(dev), std::runtime_error);
}

// The grid end to end on the real model, two modes on one engine: each score is RULER's score
// of that output against the prompt the grid's seed builds, and streaming keeps less KV.
TEST(RulerRun, TinyGridOnSmolLM2) {
  DUO_REQUIRE_MODEL(path, test::kSmolLM2);
  EngineOptions o;
  o.model_path = path;
  o.threads = 2;
  o.window = {16, 32};
  Engine e(o);
  RulerGrid g;
  g.tasks = {"niah_single_1", "vt"};
  g.lengths = {200};
  g.samples = 1;
  const ModelConfig& c = e.model().config();
  std::vector<RulerMode> modes = {{"full", HeadPlan::uniform(c.n_layers, c.n_kv_heads, HeadKind::Retrieval, o.window)},
                                  {"streaming", HeadPlan::uniform(c.n_layers, c.n_kv_heads, HeadKind::Streaming, o.window)}};
  size_t calls = 0;
  const auto rs = run_ruler(e, g, modes, [&](size_t done, size_t total, const RulerResult&) {
    EXPECT_EQ(done, ++calls);
    EXPECT_EQ(total, 4u);
  });
  ASSERT_EQ(rs.size(), 4u);
  const auto cells = ruler_cells(g);
  for (size_t i = 0; i < rs.size(); ++i) {
    const RulerResult& r = rs[i];
    EXPECT_EQ(r.mode, i < 2 ? "full" : "streaming");
    EXPECT_EQ(r.cell.task, cells[i % 2].task);
    const RulerPrompt p = build_ruler_prompt(e, g, cells[i % 2]);
    EXPECT_EQ(r.expected, p.expected);
    EXPECT_EQ(r.prompt_tokens, 200);
    EXPECT_DOUBLE_EQ(r.score, ruler_score(p.expected, r.output)) << r.output;
    std::printf("  %s %s: expected %s, output %s\n", r.mode.c_str(), r.cell.task.c_str(), p.expected[0].c_str(),
                r.output.c_str());
  }
  EXPECT_LT(rs[2].kv_bytes, rs[0].kv_bytes);
}

}  // namespace
}  // namespace duo
