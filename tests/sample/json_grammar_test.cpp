// JsonObjectMatcher against nlohmann::json as the reference parser:
//  - hand-picked valid objects are accepted and complete, invalid texts refused;
//  - differential fuzz: random short texts over JSON's alphabet are accepted-and-complete
//    exactly when the reference parses them as an object (no 'd' in the alphabet, so no \u
//    surrogate escape, which the matcher does not pair-check, can occur);
//  - constrained random walks (every step a byte the matcher allows) that complete are objects
//    the reference parses: what constrained sampling relies on.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <string>

#include "sample/json_grammar.h"

namespace duo {
namespace {

// Whole text accepted and the object complete.
bool matches(const std::string& s) {
  JsonObjectMatcher m;
  return m.feed(s) && m.done();
}

// The reference's answer, or nullopt where it cannot say: nlohmann stops at a number too
// large for a double ("1e999", valid syntax: RFC 8259 leaves the range to implementations)
// without reading the rest. Such texts are skipped.
std::optional<bool> reference(const std::string& s) {
  try {
    return nlohmann::json::parse(s).is_object();
  } catch (const nlohmann::json::out_of_range&) {
    return std::nullopt;
  } catch (const nlohmann::json::exception&) {
    return false;
  }
}

bool reference_object(const std::string& s) { return reference(s).value_or(false); }

TEST(JsonObjectMatcher, ValidAndInvalidExamples) {
  for (const char* ok : {"{}", " {\"a\": 1}", "{\"a\":[1,2.5,-0.5e+3,true,false,null,{}]}", "{\"k\":\"\\u00e9\\n\\\"\"}",
                         "{\"a\":{\"b\":{\"c\":[]}}}\n", "{\"x\":0}", "{\"x\":1E9}", "{\"é\":\"ü\"}"}) {
    EXPECT_TRUE(matches(ok)) << ok;
    EXPECT_TRUE(reference_object(ok)) << ok;
  }
  for (const char* bad : {"[]", "1", "\"s\"", "{", "{\"a\"}", "{\"a\":}", "{\"a\":01}", "{\"a\":1,}", "{,}",
                          "{\"a\":tru}", "{\"a\":\"\n\"}", "{\"a\":1}}", "{} {}", "{\"a\":-}", "{\"a\":1.}",
                          "{\"a\":[1 2]}", "{'a':1}", "{\"a\":\"\\x\"}"}) {
    EXPECT_FALSE(matches(bad)) << bad;
    EXPECT_FALSE(reference_object(bad)) << bad;
  }
  // A refused byte leaves the matcher as it was.
  JsonObjectMatcher m;
  ASSERT_TRUE(m.feed(std::string_view("{\"a\":")));
  EXPECT_FALSE(m.feed((unsigned char)'}'));
  EXPECT_TRUE(m.feed(std::string_view("1}")));
  EXPECT_TRUE(m.done());
  EXPECT_TRUE(m.feed((unsigned char)' '));  // trailing whitespace
  EXPECT_FALSE(m.feed((unsigned char)'x'));
}

TEST(JsonObjectMatcher, DifferentialFuzzAgainstReference) {
  const std::string alphabet = "{}[]\":,0123456789.eE+-truefalsn \\/ux";
  std::mt19937_64 rng(7);
  int objects = 0, skipped = 0;
  for (int trial = 0; trial < 50000; ++trial) {
    // Mostly prefixes of a valid-looking skeleton with random edits, so that many parse.
    std::string s = "{\"a\":";
    const int n = (int)(rng() % 12);
    for (int i = 0; i < n; ++i) s += alphabet[rng() % alphabet.size()];
    if (rng() % 2) s += "}";
    const std::optional<bool> ref = reference(s);
    if (!ref) {
      ++skipped;
      continue;
    }
    objects += *ref;
    ASSERT_EQ(matches(s), *ref) << s;
  }
  EXPECT_GT(objects, 100);  // the fuzz reaches valid objects, not only errors
  EXPECT_LT(skipped, 500);
}

TEST(JsonObjectMatcher, ConstrainedWalksGiveValidObjects) {
  const std::string alphabet = "{}[]\":,0123456789.eE+-truefalsn \\/uxy";
  std::mt19937_64 rng(11);
  int completed = 0;
  for (int walk = 0; walk < 3000; ++walk) {
    JsonObjectMatcher m;
    std::string s;
    while (!m.done() && s.size() < 300) {
      std::string allowed;
      for (char c : alphabet) {
        JsonObjectMatcher t = m;
        if (t.feed((unsigned char)c)) allowed += c;
      }
      ASSERT_FALSE(allowed.empty()) << "stuck after " << s;
      // Prefer closing brackets as the text grows, so that walks end.
      char c = allowed[rng() % allowed.size()];
      if (s.size() > 40 && rng() % 2)
        for (char want : {'}', ']', '"', '1'})
          if (allowed.find(want) != std::string::npos) {
            c = want;
            break;
          }
      ASSERT_TRUE(m.feed((unsigned char)c));
      s += c;
    }
    if (m.done()) {
      ++completed;
      ASSERT_NE(reference(s), std::optional<bool>(false)) << s;
    }
  }
  EXPECT_GT(completed, 2000);
}

}  // namespace
}  // namespace duo
