// Needle-in-a-haystack prompts (src/eval/needle.cpp, haystack.cpp): exact token lengths, the
// needle where the depth asks, the answer nowhere else, and the scoring and reports of a sweep.
// On a byte-level tokenizer (a token is a byte, so every length is checkable by hand) and on
// SmolLM2's real BPE tokenizer and chat template (when the model is fetched).
#include <gtest/gtest.h>

#include <fstream>
#include <set>
#include <nlohmann/json.hpp>
#include <sstream>

#include "duo/engine.h"
#include "eval/byte_model.h"
#include "eval/haystack.h"
#include "eval/needle.h"
#include "io/gguf.h"
#include "model/model.h"
#include "duo/sampler.h"
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

// Checks one task over lengths and depths. The filler starts where the depth-0 needle starts
// and ends where the depth-1 needle ends (the question follows it); the needle must start
// within half a filler sentence of depth * filler length (it goes at a sentence boundary).
void check_prompts(const Tokenizer& tok, const ChatTemplate* tmpl, NeedleTask task,
                   const std::vector<int64_t>& lengths, int64_t max_sentence_tokens) {
  const uint64_t seed = 5;
  for (int64_t L : lengths) {
    const NeedlePrompt first = build_needle_prompt(tok, tmpl, task, L, 0.0, seed);
    const NeedlePrompt last = build_needle_prompt(tok, tmpl, task, L, 1.0, seed);
    const int64_t needle_len = first.needle_end - first.needle_begin;
    const int64_t filler_begin = first.needle_begin;
    EXPECT_EQ(last.needle_end, last.question_begin) << "depth 1: the needle ends the filler";
    const int64_t filler = last.question_begin - filler_begin - needle_len;
    ASSERT_GE(filler, 16);
    for (double depth : {0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0}) {
      const NeedlePrompt p = build_needle_prompt(tok, tmpl, task, L, depth, seed);
      SCOPED_TRACE(std::string(to_string(task)) + " length " + std::to_string(L) + " depth " + std::to_string(depth));
      ASSERT_EQ((int64_t)p.tokens.size(), L);
      EXPECT_EQ(p.expected, first.expected) << "the answer depends on the seed only";
      EXPECT_EQ(p.needle_end - p.needle_begin, needle_len);
      EXPECT_EQ(p.question_begin, last.question_begin) << "the question always follows the same filler length";
      // Where the needle sits in the filler.
      const double at = (double)(p.needle_begin - filler_begin);
      EXPECT_NEAR(at, depth * (double)filler, max_sentence_tokens / 2.0 + 1);
      // The needle holds the answer; the rest of the prompt does not (the filler has no digits).
      const std::string needle = decode(tok, p.tokens, p.needle_begin, p.needle_end);
      EXPECT_NE(needle.find(p.expected), std::string::npos) << needle;
      const std::string before = decode(tok, p.tokens, 0, p.needle_begin);
      const std::string after = decode(tok, p.tokens, p.needle_end, L);
      EXPECT_EQ(count(before, p.expected) + count(after, p.expected), 0u);
      EXPECT_EQ(before.find_first_of("0123456789"), std::string::npos) << "digits before the needle";
      const std::string question = decode(tok, p.tokens, p.question_begin, L);
      EXPECT_NE(question.find(task == NeedleTask::Niah ? "magic number" : "pass key"), std::string::npos) << question;
    }
  }
  // Too short a prompt is an error, not a shorter prompt.
  EXPECT_THROW(build_needle_prompt(tok, tmpl, task, 40, 0.5, seed), std::runtime_error);
  EXPECT_THROW(build_needle_prompt(tok, tmpl, task, 2000, 1.5, seed), std::runtime_error);
}

// The byte-level tokenizer (tests/eval/byte_model.h): a token per byte.
struct ByteTokenizer {
  test::TempFile file{"duo_needle_bytes.gguf"};
  std::unique_ptr<GgufFile> gguf;
  std::unique_ptr<Tokenizer> tok;
  ByteTokenizer() {
    test::write_byte_model(file.path);
    gguf = GgufFile::open(file.path);
    tok = Tokenizer::from_gguf(*gguf);
  }
};

TEST(NeedlePrompt, ExactLengthsAndDepthOnBytes) {
  ByteTokenizer b;
  const std::string s = "The special magic number is 4242.";
  ASSERT_EQ(b.tok->encode(s, false, false).size(), s.size()) << "a token per byte";
  size_t longest = 0;  // over the sentences the prompts draw (seeds 5, 6, ... in batches of 64)
  for (uint64_t s = 5; s < 25; ++s)
    for (const auto& x : haystack_sentences(64, s)) longest = std::max(longest, x.size() + 1);
  for (NeedleTask task : {NeedleTask::Niah, NeedleTask::Passkey}) {
    check_prompts(*b.tok, nullptr, task, {400, 1000, 2501}, (int64_t)longest);
    const ChatTemplate chatml = ChatTemplate::from_jinja(kChatMLTemplate, ChatTokens::from_tokenizer(*b.tok));
    check_prompts(*b.tok, &chatml, task, {500}, (int64_t)longest);
  }
}

TEST(NeedlePrompt, ExactLengthsAndDepthOnSmolLM2) {
  DUO_REQUIRE_MODEL(path, test::kSmolLM2);
  auto g = GgufFile::open(path);
  auto tok = Tokenizer::from_gguf(*g);
  const ChatTemplate tmpl = ChatTemplate::from_gguf(*g);
  size_t longest = 0;
  for (uint64_t s = 5; s < 25; ++s)
    for (const auto& x : haystack_sentences(64, s)) longest = std::max(longest, tok->encode(" " + x, false, false).size());
  for (NeedleTask task : {NeedleTask::Niah, NeedleTask::Passkey}) {
    check_prompts(*tok, &tmpl, task, {200, 1024, 3000}, (int64_t)longest);
    check_prompts(*tok, nullptr, task, {333}, (int64_t)longest);
  }
  // The chat frame is there: the prompt starts with the template's opening of a user turn.
  const NeedlePrompt p = build_needle_prompt(*tok, &tmpl, NeedleTask::Niah, 300, 0.5, 1);
  EXPECT_EQ(tok->decode(std::vector<int32_t>(p.tokens.begin(), p.tokens.begin() + 3)).rfind("<|im_start|>", 0), 0u);
}

TEST(Haystack, SeededFillerWithoutDigits) {
  const auto a = haystack_sentences(200, 3), b = haystack_sentences(200, 3), c = haystack_sentences(200, 4);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  std::set<std::string> distinct(a.begin(), a.end());
  EXPECT_GT(distinct.size(), 150u) << "the filler must not repeat a few sentences";
  for (const auto& s : a) {
    EXPECT_EQ(s.find_first_of("0123456789{}"), std::string::npos) << s;  // no digits, every slot filled
    ASSERT_FALSE(s.empty());
    EXPECT_TRUE(s.back() == '.') << s;
  }
}

// Scoring: a cell is correct when the output contains the expected value; accuracy is the
// fraction correct; the reports carry the cells. Results stubbed here, as a sweep fills them.
TEST(NeedleScoring, AccuracyAndReports) {
  std::vector<NeedleResult> rs(4);
  const char* outputs[] = {" 1234567.", "The number is 1234568", "", "It is 7654321, I think"};
  const char* expected[] = {"1234567", "1234567", "1234567", "7654321"};
  for (int i = 0; i < 4; ++i) {
    rs[i].length = 1000 * (1 + i / 2);
    rs[i].depth = (i % 2) * 0.5;
    rs[i].expected = expected[i];
    rs[i].output = outputs[i];
    rs[i].correct = rs[i].output.find(rs[i].expected) != std::string::npos;
  }
  EXPECT_DOUBLE_EQ(needle_accuracy(rs), 0.5);
  EXPECT_DOUBLE_EQ(needle_accuracy({}), 0.0);
  test::TempFile json("duo_needle.json"), csv("duo_needle.csv"), svg("duo_needle.svg");
  write_needle_json(rs, "duo", "m", json.path);
  const auto j = nlohmann::json::parse(std::ifstream(json.path));
  EXPECT_DOUBLE_EQ(j["accuracy"].get<double>(), 0.5);
  ASSERT_EQ(j["cells"].size(), 4u);
  EXPECT_EQ(j["cells"][3]["output"], outputs[3]);
  EXPECT_EQ(j["cells"][1]["correct"], false);
  write_needle_csv(rs, csv.path);
  std::ifstream c(csv.path);
  std::string line;
  int lines = 0;
  while (std::getline(c, line)) ++lines;
  EXPECT_EQ(lines, 5);  // header + one row per cell
  write_needle_svg(rs, "t", svg.path);
  std::stringstream s;
  s << std::ifstream(svg.path).rdbuf();
  EXPECT_NE(s.str().find("accuracy 50%"), std::string::npos);
}

// A sweep end to end on the real model: each cell's verdict is whether its output holds the
// answer of the prompt the same seed builds, and the cells come in (length, depth) order.
TEST(NeedleSweep, ScoresWhatTheModelSays) {
  DUO_REQUIRE_MODEL(path, test::kSmolLM2);
  EngineOptions o;
  o.model_path = path;
  o.threads = 2;
  Engine e(o);
  NeedleSweep sw;
  sw.lengths = {256};
  sw.depths = {0.0, 0.5};
  sw.max_new_tokens = 10;
  const auto rs = run_needle_sweep(e, sw, nullptr);
  ASSERT_EQ(rs.size(), 2u);
  const ChatTemplate tmpl = ChatTemplate::from_gguf(e.model().gguf());
  int correct = 0;
  for (size_t i = 0; i < rs.size(); ++i) {
    const NeedlePrompt p = build_needle_prompt(e.tokenizer(), &tmpl, sw.task, 256, sw.depths[i], sw.seed + i);
    EXPECT_EQ(rs[i].expected, p.expected);
    EXPECT_EQ(rs[i].depth, sw.depths[i]);
    EXPECT_EQ(rs[i].correct, rs[i].output.find(p.expected) != std::string::npos) << rs[i].output;
    EXPECT_GT(rs[i].kv_bytes, 0u);
    correct += rs[i].correct;
    std::printf("  depth %.1f: expected %s, output %s\n", rs[i].depth, p.expected.c_str(), rs[i].output.c_str());
  }
  EXPECT_DOUBLE_EQ(needle_accuracy(rs), correct / 2.0);
}

}  // namespace
}  // namespace duo
