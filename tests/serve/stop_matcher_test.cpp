// Stop strings over text that arrives in pieces: whatever the split, the shown text is the
// text up to the first occurrence of any stop string (found in the whole text at once).
#include <gtest/gtest.h>

#include <random>

#include "serve/stop_matcher.h"

namespace duo::serve {
namespace {

// Independent reference: search the complete text.
std::string reference(const std::string& text, const std::vector<std::string>& stops, bool& matched) {
  size_t first = std::string::npos;
  for (const auto& s : stops) first = std::min(first, text.find(s));
  matched = first != std::string::npos;
  return matched ? text.substr(0, first) : text;
}

std::string run(const std::vector<std::string>& pieces, const std::vector<std::string>& stops, bool& matched,
                std::string* shown_before_end = nullptr) {
  StopMatcher m(stops);
  std::string out;
  for (const auto& p : pieces) out += m.push(p);
  if (shown_before_end) *shown_before_end = out;
  out += m.flush();
  matched = m.matched();
  return out;
}

TEST(StopMatcher, Examples) {
  bool matched;
  EXPECT_EQ(run({"Hello", " wor", "ld\n", "more"}, {"\n"}, matched), "Hello world");
  EXPECT_TRUE(matched);
  // A stop string split across pieces.
  EXPECT_EQ(run({"abc<", "|e", "nd|>tail"}, {"<|end|>"}, matched), "abc");
  EXPECT_TRUE(matched);
  // A partial match that turns out not to be one is released.
  std::string early;
  EXPECT_EQ(run({"a<|e", "x"}, {"<|end|>"}, matched, &early), "a<|ex");
  EXPECT_FALSE(matched);
  EXPECT_EQ(early, "a<|ex");
  // Held back at the end of generation, then flushed.
  EXPECT_EQ(run({"value <|en"}, {"<|end|>"}, matched, &early), "value <|en");
  EXPECT_EQ(early, "value ");
  EXPECT_FALSE(matched);
  // The earliest of several stop strings wins, even when a later-listed one starts first.
  EXPECT_EQ(run({"xx", "BBB", "A"}, {"A", "BBBA"}, matched), "xx");
  EXPECT_TRUE(matched);
  // No stop strings: everything passes at once.
  EXPECT_EQ(run({"a", "b"}, {}, matched, &early), "ab");
  EXPECT_EQ(early, "ab");
  // Multi-byte characters.
  EXPECT_EQ(run({"caf\xC3\xA9", " \xE2\x82\xAC", "5"}, {"\xE2\x82\xAC"}, matched), "caf\xC3\xA9 ");
}

TEST(StopMatcher, NothingAfterAMatch) {
  StopMatcher m({"END"});
  EXPECT_EQ(m.push("oneEN"), "one");
  EXPECT_EQ(m.push("Dtwo"), "");
  EXPECT_TRUE(m.matched());
  EXPECT_EQ(m.push("three"), "");
  EXPECT_EQ(m.flush(), "");
}

TEST(StopMatcher, RandomSplitsAgreeWithTheReference) {
  std::mt19937 rng(7);
  const std::string alphabet = "ab<|>\n";
  auto random_string = [&](size_t lo, size_t hi) {
    std::string s(lo + rng() % (hi - lo + 1), ' ');
    for (char& c : s) c = alphabet[rng() % alphabet.size()];
    return s;
  };
  for (int iter = 0; iter < 5000; ++iter) {
    const std::string text = random_string(0, 60);
    std::vector<std::string> stops;
    for (int k = (int)(rng() % 3); k >= 0; --k) stops.push_back(random_string(1, 5));
    std::vector<std::string> pieces;
    for (size_t i = 0; i < text.size();) {
      const size_t n = std::min(text.size() - i, (size_t)(rng() % 5));
      pieces.push_back(text.substr(i, n));
      i += n;
    }
    bool want_matched, got_matched;
    const std::string want = reference(text, stops, want_matched);
    std::string early;
    EXPECT_EQ(run(pieces, stops, got_matched, &early), want) << "text '" << text << "'";
    EXPECT_EQ(got_matched, want_matched);
    // What was shown before the end never runs ahead of the answer.
    EXPECT_EQ(want.compare(0, early.size(), early), 0);
  }
}

}  // namespace
}  // namespace duo::serve
