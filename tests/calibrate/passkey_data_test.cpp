// The synthetic passkey data: exact lengths, determinism under a seed, and an answer mask
// whose tokens decode to exactly the passkeys; needles where the depths say.
#include <gtest/gtest.h>

#include <algorithm>
#include <set>

#include "calibrate/passkey_data.h"
#include "core/error.h"
#include "io/gguf.h"
#include "test_support.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace duo {
namespace {

std::vector<int32_t> slice(const std::vector<int32_t>& v, int64_t b, int64_t e) {
  return std::vector<int32_t>(v.begin() + b, v.begin() + e);
}

void check_sample(const Tokenizer& tok, const PasskeySample& s, const PasskeyDataConfig& c, bool chat) {
  ASSERT_EQ((int)s.passkeys.size(), c.n_passkeys);
  ASSERT_EQ(s.answer_spans.size(), s.passkeys.size());
  ASSERT_EQ(s.answer_mask.size(), s.tokens.size());
  for (size_t i = 0; i < s.passkeys.size(); ++i) {
    // Passkeys are passkey_words NATO words.
    size_t words = std::count(s.passkeys[i].begin(), s.passkeys[i].end(), ' ') + 1;
    EXPECT_EQ((int)words, c.passkey_words);
    // The masked tokens of answer i decode to passkey i.
    const auto& sp = s.answer_spans[i];
    EXPECT_EQ(tok.decode(slice(s.tokens, sp[0], sp[1])), s.passkeys[i]) << "answer " << i;
    // ... and each answer follows its question (the chat's assistant turn, or "Passkey: ").
    const std::string before = tok.decode(slice(s.tokens, std::max<int64_t>(0, sp[0] - 40), sp[0]));
    const char* ordinals[] = {"first", "second", "third", "fourth", "fifth", "sixth"};
    if (i < 6) {
      EXPECT_NE(before.find(std::string("what is the ") + ordinals[i] + " passkey"), std::string::npos) << before;
    }
    EXPECT_TRUE(chat ? before.ends_with("assistant\n") : before.ends_with("Passkey: ")) << before;
    // The needle announcing passkey i holds it.
    const int64_t np = s.needle_positions[i];
    const std::string needle = tok.decode(slice(s.tokens, np, std::min<int64_t>(np + 400, (int64_t)s.tokens.size())));
    EXPECT_EQ(needle.rfind(std::string(" Remember this sequence of words, it's the ") + (i < 6 ? ordinals[i] : ""), 0),
              0u)
        << needle.substr(0, 80);
    EXPECT_NE(needle.find("passkey to the vault: " + s.passkeys[i] + "."), std::string::npos);
  }
  // The mask marks exactly the answer spans; rows list them in order; the sample ends with the
  // last answer token.
  std::vector<int64_t> rows;
  for (size_t p = 0; p < s.tokens.size(); ++p)
    if (s.answer_mask[p]) rows.push_back((int64_t)p);
  EXPECT_EQ(rows, s.loss_rows);
  int64_t span_total = 0;
  for (const auto& sp : s.answer_spans) span_total += sp[1] - sp[0];
  EXPECT_EQ((int64_t)rows.size(), span_total);
  EXPECT_EQ(s.loss_rows.back(), (int64_t)s.tokens.size() - 1);
  // Needles in order, before the first answer, spread as the depths say.
  EXPECT_TRUE(std::is_sorted(s.needle_positions.begin(), s.needle_positions.end()));
  EXPECT_LT(s.needle_positions.back(), s.answer_spans[0][0]);
}

TEST(CalibPasskeyData, ChatSamplesDecodeToTheirPasskeysAndAreReproducible) {
  DUO_REQUIRE_MODEL(path, test::kSmolLM2);
  auto g = GgufFile::open(path);
  auto tok = Tokenizer::from_gguf(*g);
  const ChatTemplate tmpl = ChatTemplate::from_gguf(*g);
  PasskeyDataConfig c;
  c.min_len = 1500;
  c.max_len = 3000;
  c.length_intervals = 4;
  c.n_passkeys = 4;
  c.passkey_words = 8;
  PasskeyGenerator gen(*tok, &tmpl, c);
  std::mt19937_64 r1(7), r2(7), r3(8);
  std::set<int64_t> lengths;
  for (int i = 0; i < 6; ++i) {
    const PasskeySample a = gen.next(r1), b = gen.next(r2), d = gen.next(r3);
    EXPECT_EQ(a.tokens, b.tokens);
    EXPECT_EQ(a.answer_mask, b.answer_mask);
    EXPECT_NE(a.tokens, d.tokens);
    // Lengths on the grid 1500, 2000, 2500, 3000, exactly.
    const int64_t n = (int64_t)a.tokens.size();
    EXPECT_TRUE(n == 1500 || n == 2000 || n == 2500 || n == 3000) << n;
    lengths.insert(n);
    check_sample(*tok, a, c, true);
    // The template's frame is there: the book is in the first user turn.
    const std::string text = tok->decode(a.tokens);
    EXPECT_EQ(text.rfind("<|im_start|>system\n", 0), 0u) << text.substr(0, 40);
    EXPECT_NE(text.find("<|im_start|>user\nThis is a very long story book: <book> "), std::string::npos);
  }
  EXPECT_GE(lengths.size(), 2u);
}

TEST(CalibPasskeyData, DepthsPlaceNeedlesAndPlainLayoutWorks) {
  DUO_REQUIRE_MODEL(path, test::kSmolLM2);
  auto g = GgufFile::open(path);
  auto tok = Tokenizer::from_gguf(*g);
  PasskeyDataConfig c;
  c.min_len = c.max_len = 2000;
  c.n_passkeys = 3;
  c.passkey_words = 5;
  PasskeyGenerator gen(*tok, nullptr, c);
  const std::vector<std::string> keys = {"alpha bravo charlie delta echo", "zulu yankee xray whiskey victor",
                                         "kilo lima mike november oscar"};
  const PasskeySample s = gen.build(2000, keys, {0.1, 0.5, 0.9}, 3);
  ASSERT_EQ(s.tokens.size(), 2000u);
  check_sample(*tok, s, c, false);
  // Needle token positions sit near depth * (haystack span) from the start of the book.
  const int64_t book0 = (int64_t)tok->encode("This is a very long story book: <book>", tok->vocab().add_bos, false).size();
  const int64_t book_len = s.answer_spans[0][0] - book0;  // upper bound of the book span
  for (int i = 0; i < 3; ++i) {
    const double rel = (double)(s.needle_positions[i] - book0) / (double)book_len;
    EXPECT_NEAR(rel, s.depths[i], 0.12) << i;
  }
  const std::string text = tok->decode(s.tokens);
  EXPECT_EQ(text.find("<|im_start|>"), std::string::npos);
  EXPECT_NE(text.find("</book>.\n\nBased on the content of the book, what is the first passkey to the vault?\nPasskey: "),
            std::string::npos);
}

// The row choices of the loss, checked on the decoded text: "predictions" are the rows whose
// next token is an answer token (the first one sits on the "assistant" turn's last template token,
// so its prediction is the passkey's first word), "first" only those, "questions" everything after
// the book.
TEST(CalibPasskeyData, LossRowsSelectTheComparedPositions) {
  DUO_REQUIRE_MODEL(path, test::kSmolLM2);
  auto g = GgufFile::open(path);
  auto tok = Tokenizer::from_gguf(*g);
  const ChatTemplate tmpl = ChatTemplate::from_gguf(*g);
  const std::vector<std::string> keys = {"alpha bravo charlie", "zulu yankee xray"};
  std::vector<PasskeySample> by_mode;
  for (LossRows m : {LossRows::Answers, LossRows::Predictions, LossRows::Questions, LossRows::FirstWords}) {
    PasskeyDataConfig c;
    c.min_len = c.max_len = 1200;
    c.n_passkeys = 2;
    c.passkey_words = 3;
    c.loss_rows = m;
    PasskeyGenerator gen(*tok, &tmpl, c);
    by_mode.push_back(gen.build(1200, keys, {0.3, 0.6}, 5));
  }
  const PasskeySample &ans = by_mode[0], &pred = by_mode[1], &qs = by_mode[2], &first = by_mode[3];
  ASSERT_EQ(ans.tokens, pred.tokens);  // the rows are the only difference
  ASSERT_EQ(ans.tokens, qs.tokens);
  ASSERT_EQ(pred.loss_rows.size(), ans.loss_rows.size());
  // Row r's next token is the answer token at r + 1: the answers' tokens, in order.
  std::vector<int32_t> predicted, answer_tokens;
  for (int64_t r : pred.loss_rows) predicted.push_back(pred.tokens[(size_t)r + 1]);
  for (int64_t r : ans.loss_rows) answer_tokens.push_back(ans.tokens[(size_t)r]);
  EXPECT_EQ(predicted, answer_tokens);
  EXPECT_TRUE(tok->decode(slice(pred.tokens, 0, pred.loss_rows[0] + 1)).ends_with("assistant\n"));
  EXPECT_EQ(tok->decode(slice(pred.tokens, pred.loss_rows[0] + 1, pred.loss_rows[0] + 2)), "alpha");
  // First: one row a passkey, the row before its answer (whose next token is the answer's first).
  ASSERT_EQ(first.loss_rows.size(), 2u);
  for (size_t i = 0; i < 2; ++i) EXPECT_EQ(first.loss_rows[i], first.answer_spans[i][0] - 1);
  EXPECT_EQ(tok->decode(slice(first.tokens, first.loss_rows[1] + 1, first.loss_rows[1] + 2)), "z");
  // Questions: one contiguous run from the book's end to the sample's end, holding both questions
  // and every answer row.
  ASSERT_FALSE(qs.loss_rows.empty());
  const int64_t q0 = qs.loss_rows.front();
  EXPECT_EQ(qs.loss_rows.back(), (int64_t)qs.tokens.size() - 1);
  EXPECT_EQ((int64_t)qs.loss_rows.size(), (int64_t)qs.tokens.size() - q0);
  EXPECT_GT(q0, qs.needle_positions.back());
  const std::string tail = tok->decode(slice(qs.tokens, q0, (int64_t)qs.tokens.size()));
  EXPECT_EQ(tail.rfind(" </book>.", 0), 0u) << tail.substr(0, 40);
  EXPECT_NE(tail.find("what is the first passkey"), std::string::npos);
  EXPECT_NE(tail.find("what is the second passkey"), std::string::npos);
  for (int64_t r : ans.loss_rows) EXPECT_GE(r, q0);
  EXPECT_EQ(parse_loss_rows("predictions"), LossRows::Predictions);
  EXPECT_STREQ(to_string(LossRows::Questions), "questions");
  EXPECT_THROW(parse_loss_rows("answer"), Error);
}

TEST(CalibPasskeyData, RejectsLengthsWithoutRoomForTheHaystack) {
  DUO_REQUIRE_MODEL(path, test::kSmolLM2);
  auto g = GgufFile::open(path);
  auto tok = Tokenizer::from_gguf(*g);
  const ChatTemplate tmpl = ChatTemplate::from_gguf(*g);
  PasskeyDataConfig c;  // 10 passkeys of 32 words need well over 500 tokens
  c.min_len = 500;
  c.max_len = 4000;
  try {
    PasskeyGenerator gen(*tok, &tmpl, c);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("too short for 10 passkeys of 32 words"), std::string::npos) << e.what();
  }
  c.n_passkeys = 21;
  EXPECT_THROW(c.validate(), Error);
  c.n_passkeys = 4;
  c.depth_intervals = 3;
  EXPECT_THROW(c.validate(), Error);
  c.depth_intervals = 20;
  c.max_len = 100;
  EXPECT_THROW(c.validate(), Error);
}

TEST(CalibPasskeyData, AutomaticMinimumLengthLeavesAThousandTokensOfHaystack) {
  DUO_REQUIRE_MODEL(path, test::kSmolLM2);
  auto g = GgufFile::open(path);
  auto tok = Tokenizer::from_gguf(*g);
  const ChatTemplate tmpl = ChatTemplate::from_gguf(*g);
  PasskeyDataConfig c;  // reference settings: 10 passkeys of 32 words, min_len 0 (auto)
  c.max_len = 8000;
  PasskeyGenerator gen(*tok, &tmpl, c);
  EXPECT_EQ(gen.config().min_len, gen.max_fixed_tokens() + 1000);
  EXPECT_GT(gen.max_fixed_tokens(), 10 * 2 * 32);  // each passkey twice, at least a token a word
  std::mt19937_64 rng(3);
  const PasskeySample s = gen.build(gen.config().min_len, std::vector<std::string>(10, "alpha bravo"),
                                    {0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9}, 1);
  EXPECT_EQ((int64_t)s.tokens.size(), gen.config().min_len);
  c.max_len = 2000;  // cannot hold 1000 tokens of haystack besides the passkeys
  EXPECT_THROW(PasskeyGenerator(*tok, &tmpl, c), Error);
}

TEST(CalibPasskeyData, UniformHelpersAreInRangeAndUnbiased) {
  std::mt19937_64 rng(1);
  std::vector<int> counts(7, 0);
  for (int i = 0; i < 70000; ++i) counts[uniform_below(rng, 7)]++;
  for (int c : counts) EXPECT_NEAR(c, 10000, 400);
  double mean = 0;
  for (int i = 0; i < 10000; ++i) {
    const double u = uniform_unit(rng);
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    mean += u / 10000;
  }
  EXPECT_NEAR(mean, 0.5, 0.01);
}

}  // namespace
}  // namespace duo
