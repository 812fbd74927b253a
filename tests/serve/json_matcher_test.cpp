// The schema recogniser (JsonMatcher over compile_json_schema) against independent references:
//  - tests/fixtures/json_schema/cases.json (dev/make_json_schema_fixtures.py): documents and
//    the verdict of Python's `jsonschema` for a set of schemas; accepted-and-complete must agree
//    with it for every document, and every prefix of a valid document is accepted;
//  - schemas that use what is not supported are refused, naming the keyword;
//  - from every accepted prefix, walks that pick only bytes the matcher allows are never stuck
//    and end in texts nlohmann::json parses (what constrained sampling relies on);
//  - JSON mode ({"type": "object"}) against nlohmann::json on random texts;
//  - TokenMask's trie walk allows exactly the tokens that trying each piece on a copy allows,
//    on a synthetic vocabulary and on SmolLM2's.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <string>

#include "io/gguf.h"
#include "serve/json_matcher.h"
#include "serve/json_schema.h"
#include "serve/token_mask.h"
#include "test_support.h"
#include "tokenizer/tokenizer.h"

namespace duo::serve {
namespace {

using nlohmann::json;

const json& fixture() {
  static const json j = [] {
    std::ifstream f(test::fixture_path("json_schema/cases.json"));
    return json::parse(f);
  }();
  return j;
}

bool accepts(const CompiledSchema& s, const std::string& text) {
  JsonMatcher m(s);
  return m.feed(text) && m.done();
}

TEST(JsonSchemaMatcher, AgreesWithJsonschemaPackage) {
  const json& cases = fixture()["cases"];
  ASSERT_GE(cases.size(), 10u);
  for (const auto& c : cases) {
    const auto schema = compile_json_schema(c["schema"]);
    int valid = 0;
    for (const auto& d : c["docs"]) {
      const std::string text = d["text"];
      const bool want = d["valid"];
      valid += want;
      EXPECT_EQ(accepts(*schema, text), want) << c["name"] << ": " << text;
      if (!want) continue;
      // Every prefix of a valid document is accepted: generation is never cut off on its way.
      JsonMatcher m(*schema);
      for (size_t i = 0; i < text.size(); ++i)
        ASSERT_TRUE(m.feed((unsigned char)text[i])) << c["name"] << ": refused byte " << i << " of " << text;
    }
    EXPECT_GT(valid, 0) << c["name"];
  }
}

TEST(JsonSchemaMatcher, UnsupportedKeywordsAreRefusedByName) {
  for (const auto& r : fixture()["refused"]) {
    const std::string keyword = r["keyword"];
    try {
      compile_json_schema(r["schema"]);
      ADD_FAILURE() << "accepted: " << r["schema"].dump();
    } catch (const SchemaError& e) {
      EXPECT_NE(std::string(e.what()).find(keyword), std::string::npos) << e.what() << " (want " << keyword << ")";
    }
  }
  // Annotations are not refused.
  EXPECT_NO_THROW(compile_json_schema(json::parse(
      R"({"title":"T","description":"d","$schema":"https://json-schema.org/draft/2020-12/schema","type":"object",
          "properties":{"a":{"type":"string","default":"x","examples":["y"]}}})")));
}

TEST(JsonSchemaMatcher, RefusedByteLeavesTheMatcherAsItWas) {
  const auto s = compile_json_schema(json::parse(R"({"type":"object","properties":{"a":{"type":"integer"}},
      "required":["a"],"additionalProperties":false})"));
  JsonMatcher m(*s);
  ASSERT_TRUE(m.feed(std::string_view("{\"a\":")));
  EXPECT_FALSE(m.feed((unsigned char)'"'));  // a string where an integer must be
  EXPECT_FALSE(m.feed((unsigned char)'}'));
  EXPECT_TRUE(m.feed(std::string_view("12")));
  EXPECT_FALSE(m.feed((unsigned char)'.'));  // integers have no fraction
  EXPECT_FALSE(m.feed((unsigned char)','));  // no other property may follow
  EXPECT_TRUE(m.feed((unsigned char)'}'));
  EXPECT_TRUE(m.done());
  JsonMatcher early(*s);
  ASSERT_TRUE(early.feed((unsigned char)'{'));
  EXPECT_FALSE(early.feed((unsigned char)'}'));  // "a" is required
  EXPECT_FALSE(early.feed(std::string_view("\"b")));  // no key but "a"
}

// From `m`, picks allowed bytes (mostly ones that close something) until the document is
// complete; fails when no byte is allowed before that. Returns the text, or nullopt when the
// walk ran out of steps.
std::optional<std::string> walk(JsonMatcher m, std::string text, std::mt19937_64& rng) {
  static const std::string alphabet =
      "{}[]\":,-.0123456789eE+ \n\\/abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_";
  static const std::string closers = "\"}]0n1";
  for (int step = 0; step < 3000; ++step) {
    if (m.done() && rng() % 4 == 0) return text;
    std::string allowed;
    for (char c : alphabet) {
      JsonMatcher t;
      if (t.step_from(m, (unsigned char)c)) allowed += c;
    }
    if (allowed.empty()) {
      EXPECT_TRUE(m.done()) << "stuck after " << text;
      return m.done() ? std::optional<std::string>(text) : std::nullopt;
    }
    char c = allowed[rng() % allowed.size()];
    if (rng() % 3 != 0)
      for (char want : closers)
        if (allowed.find(want) != std::string::npos) {
          c = want;
          break;
        }
    EXPECT_TRUE(m.feed((unsigned char)c));
    text += c;
  }
  return std::nullopt;
}

TEST(JsonSchemaMatcher, AcceptedPrefixesAlwaysComplete) {
  std::mt19937_64 rng(5);
  int completed = 0, walks = 0;
  for (const auto& c : fixture()["cases"]) {
    const auto schema = compile_json_schema(c["schema"]);
    for (size_t k = 0; k < c["docs"].size(); k += 8) {
      // The longest prefix of the document the matcher accepts, then a walk from there.
      const std::string text = c["docs"][k]["text"];
      JsonMatcher m(*schema, false);
      std::string prefix;
      for (char ch : text) {
        if (!m.feed((unsigned char)ch)) break;
        prefix += ch;
      }
      ++walks;
      const auto done = walk(m, prefix, rng);
      if (!done) continue;
      ++completed;
      EXPECT_TRUE(accepts(*schema, *done)) << *done;
      try {
        EXPECT_FALSE(json::parse(*done).is_discarded());
      } catch (const json::out_of_range&) {  // a number too large for a double: valid syntax
      } catch (const json::exception& e) {
        ADD_FAILURE() << c["name"] << ": " << *done << ": " << e.what();
      }
    }
  }
  EXPECT_GE(completed, walks * 9 / 10);
}

// JSON mode against nlohmann::json as the reference parser (random edits of an object).
TEST(JsonSchemaMatcher, JsonObjectModeAgreesWithNlohmann) {
  const auto schema = any_json_object_schema();
  const std::string alphabet = "{}[]\":,0123456789.eE+-truefalsn \\/ux";
  std::mt19937_64 rng(7);
  int objects = 0;
  for (int trial = 0; trial < 30000; ++trial) {
    std::string s = "{\"a\":";
    const int n = (int)(rng() % 12);
    for (int i = 0; i < n; ++i) s += alphabet[rng() % alphabet.size()];
    if (rng() % 2) s += "}";
    bool ref;
    try {
      ref = json::parse(s).is_object();
    } catch (const json::out_of_range&) {
      continue;
    } catch (const json::exception&) {
      ref = false;
    }
    if (s.find("\\u") != std::string::npos) continue;  // surrogate pairing is not checked
    objects += ref;
    ASSERT_EQ(accepts(*schema, s), ref) << s;
  }
  EXPECT_GT(objects, 100);
}

// Every token whose whole piece a copy of the matcher accepts.
std::vector<int32_t> brute_force(const JsonMatcher& m, const std::vector<std::string>& pieces,
                                 const std::vector<bool>& include) {
  std::vector<int32_t> out;
  for (int32_t t = 0; t < (int32_t)pieces.size(); ++t) {
    if (!include[t] || pieces[t].empty()) continue;
    JsonMatcher trial = m;
    if (trial.feed(std::string_view(pieces[t]))) out.push_back(t);
  }
  return out;
}

// States to compare the masks at: prefixes of the fixture's valid documents.
std::vector<std::pair<std::shared_ptr<const CompiledSchema>, std::string>> sample_states(size_t every) {
  std::vector<std::pair<std::shared_ptr<const CompiledSchema>, std::string>> out;
  for (const auto& c : fixture()["cases"]) {
    const auto schema = compile_json_schema(c["schema"]);
    for (size_t k = 0; k < c["docs"].size(); k += every) {
      if (!c["docs"][k]["valid"]) continue;
      const std::string text = c["docs"][k]["text"];
      for (size_t i = 0; i <= text.size(); i += 1 + text.size() / 6) out.push_back({schema, text.substr(0, i)});
    }
  }
  return out;
}

void expect_same_masks(const std::vector<std::string>& pieces, const std::vector<bool>& include, size_t every,
                       double* trie_ms = nullptr, double* brute_ms = nullptr) {
  TokenMask mask(pieces, include);
  using clock = std::chrono::steady_clock;
  double t_trie = 0, t_brute = 0;
  int n = 0;
  for (const auto& [schema, prefix] : sample_states(every)) {
    JsonMatcher m(*schema);
    ASSERT_TRUE(m.feed(prefix)) << prefix;
    std::vector<int32_t> got;
    const auto t0 = clock::now();
    mask.allowed(m, got);
    const auto t1 = clock::now();
    const std::vector<int32_t> want = brute_force(m, pieces, include);
    const auto t2 = clock::now();
    t_trie += std::chrono::duration<double, std::milli>(t1 - t0).count();
    t_brute += std::chrono::duration<double, std::milli>(t2 - t1).count();
    ++n;
    std::sort(got.begin(), got.end());
    ASSERT_EQ(got, want) << "after " << prefix;
  }
  if (trie_ms) *trie_ms = t_trie / n;
  if (brute_ms) *brute_ms = t_brute / n;
}

TEST(TokenMask, TrieWalkEqualsTryingEveryToken) {
  std::mt19937_64 rng(3);
  const std::string alphabet = "{}[]\":, \n0123456789-.eatrufslnbdxyz\\\xc3\xa9";
  std::vector<std::string> pieces = {"", "{", "}", "\"", "{\"", "\":", "\",\"", "null", "true", "false", "12"};
  for (int i = 0; i < 3000; ++i) {
    std::string p;
    const int len = 1 + (int)(rng() % 6);
    for (int k = 0; k < len; ++k) p += alphabet[rng() % alphabet.size()];
    pieces.push_back(p);
  }
  pieces.push_back("{");  // the same bytes as another token
  std::vector<bool> include(pieces.size(), true);
  include[3] = false;  // an excluded token is never allowed
  expect_same_masks(pieces, include, 4);
}

TEST(TokenMask, SmolLM2VocabularyEqualsTryingEveryToken) {
  DUO_REQUIRE_MODEL(path, test::kSmolLM2);
  auto g = GgufFile::open(path);
  const auto tok_ptr = Tokenizer::from_gguf(*g);
  const Tokenizer& tok = *tok_ptr;
  std::vector<std::string> pieces(tok.n_vocab());
  std::vector<bool> include(tok.n_vocab());
  for (int32_t t = 0; t < tok.n_vocab(); ++t) {
    pieces[t] = tok.token_to_piece(t);
    include[t] = !tok.is_eog(t);
  }
  double trie_ms = 0, brute_ms = 0;
  expect_same_masks(pieces, include, 40, &trie_ms, &brute_ms);
  // Informational: the time per mask of each way (the trie is what the server uses).
  std::printf("SmolLM2 mask: trie walk %.3f ms, every token on a copy %.3f ms\n", trie_ms, brute_ms);
}

}  // namespace
}  // namespace duo::serve
