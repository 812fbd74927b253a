// Unigram tokenizer.json files (T5-, ALBERT- and Llama-style pipelines around a trained Unigram
// model, one with SentencePiece's nmt_nfkc Precompiled table) against HF tokenizers' ids and
// decodes (tests/fixtures/hf_unigram, from dev/make_hf_unigram_fixtures.py): ~2000 strings each (words, whitespace runs, numbers, code,
// emoji, CJK, combining marks, added tokens in text), strings with invalid UTF-8, and the
// errors for what duo does not implement.
#include <gtest/gtest.h>

#include <chrono>

#include "core/error.h"
#include "io/hf_fixture.h"
#include "tokenizer/hf_tokenizer.h"
#include "tokenizer/hf_unigram.h"

namespace duo {
namespace {

std::string dir(const std::string& key) { return test::fixture_path("hf_unigram/" + key); }

std::string from_hex(const std::string& h) {
  std::string s;
  for (size_t i = 0; i + 1 < h.size(); i += 2) s += (char)std::stoi(h.substr(i, 2), nullptr, 16);
  return s;
}

// duo's encode appends the template's EOS whenever the file's post-processor has one (T5's
// "$A </s>"); HF only with add_special_tokens, which the plain cases have off.
std::vector<int32_t> encode_plain(const Tokenizer& tok, const std::string& text) {
  std::vector<int32_t> ids = tok.encode(text, false, true);
  if (tok.vocab().add_eos) {
    EXPECT_TRUE(!ids.empty() && ids.back() == tok.vocab().eos) << text;
    if (!ids.empty()) ids.pop_back();
  }
  return ids;
}

void check_fixture(const std::string& key) {
  const auto ref = test::read_json(dir(key) + ".json");
  auto tok = tokenizer_from_hf(dir(key), 0);
  ASSERT_TRUE(tok->vocab().unigram);
  size_t n = 0, ids = 0, unk = 0, parts = 0;
  for (const auto& c : ref["cases"]) {
    const std::string text = c["text"].get<std::string>();
    const auto want = c["ids"].get<std::vector<int32_t>>();
    // HF matches added tokens (special or not) in text: parse_special on.
    EXPECT_EQ(encode_plain(*tok, text), want) << key << ": '" << text << "'";
    EXPECT_EQ(tok->decode(want), c["decoded"].get<std::string>()) << key << ": '" << text << "'";
    EXPECT_LE(tok->min_tokens(text), want.size()) << key << ": '" << text << "'";
    // The same text as a chat prompt's parts, "</s>" its marker: the text after a marker is not
    // the start of the input (HF: not at offset 0).
    if (const size_t at = text.find("</s>"); at != std::string::npos && text.find("</s>", at + 4) == std::string::npos &&
                                             text.find("<s>") == std::string::npos &&
                                             text.find("<unk>") == std::string::npos &&
                                             text.find("<pad>") == std::string::npos &&
                                             text.find("<tool>") == std::string::npos) {
      std::vector<int32_t> got =
          tok->encode_parts({{text.substr(0, at), false}, {"</s>", true}, {text.substr(at + 4), false}}, false);
      if (tok->vocab().add_eos && !got.empty()) got.pop_back();
      EXPECT_EQ(got, want) << key << ": '" << text << "'";
      ++parts;
    }
    ++n, ids += want.size();
    unk += (size_t)std::count(want.begin(), want.end(), tok->vocab().unk);
  }
  EXPECT_GE(parts, 5u);
  EXPECT_GE(n, 2000u);
  EXPECT_GE(unk, 10u);  // the unknown token's path is exercised
  for (const auto& c : ref["cases_with_specials"]) {
    const std::string text = c["text"].get<std::string>();
    EXPECT_EQ(tok->encode(text, tok->vocab().add_bos, true), c["ids"].get<std::vector<int32_t>>())
        << key << ": " << text;
  }
  size_t bad = 0;
  for (const auto& c : ref["invalid_utf8"]) {
    const std::string raw = from_hex(c["hex"].get<std::string>());
    const auto want = c["ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(encode_plain(*tok, raw), want) << key << ": " << c["hex"];
    EXPECT_EQ(tok->decode(want), from_hex(c["decoded_hex"].get<std::string>())) << key << ": " << c["hex"];
    ++bad;
  }
  EXPECT_GE(bad, 50u);
  std::printf("  %s: %zu strings, %zu ids (%zu unknown), %zu as prompt parts, %zu with invalid UTF-8 checked%s\n",
              key.c_str(), n, ids, unk, parts, bad, ::testing::Test::HasFailure() ? "" : ", all equal");
}

TEST(HfUnigramTokenizer, T5StripRegexReplaceMetaspaceMatchesHf) { check_fixture("t5"); }
TEST(HfUnigramTokenizer, ByteFallbackPrependReplaceMatchesHf) { check_fixture("legacy"); }
TEST(HfUnigramTokenizer, ByteFallbackMetaspaceFirstMatchesHf) { check_fixture("first"); }
TEST(HfUnigramTokenizer, PrecompiledNmtNfkcMatchesHf) { check_fixture("nfkc"); }
TEST(HfUnigramTokenizer, MetaspaceNeverMatchesHf) { check_fixture("never"); }

TEST(HfUnigramTokenizer, StepsAreReadAsDeclared) {
  const Vocab t = load_hf_vocab(dir("t5"), 0);
  EXPECT_TRUE(t.unigram && t.metaspace && t.add_space_prefix && t.split_on_space && t.add_eos);
  EXPECT_FALSE(t.byte_fallback || t.prefix_first_only);
  ASSERT_EQ(t.normalizer.size(), 2u);
  EXPECT_EQ(t.normalizer[0].kind, NormStep::Kind::Strip);
  EXPECT_TRUE(t.normalizer[1].regex);
  EXPECT_EQ(t.tokens[t.eos], "</s>");
  EXPECT_EQ(t.tokens[t.unk], "<unk>");
  const Vocab l = load_hf_vocab(dir("legacy"), 0);
  EXPECT_TRUE(l.byte_fallback && l.add_bos && !l.metaspace);
  EXPECT_EQ(l.types[4], TokenType::Byte);  // <0x00>, after the four specials
  EXPECT_EQ(l.decoder.size(), 4u);
  const Vocab f = load_hf_vocab(dir("first"), 0);
  EXPECT_TRUE(f.prefix_first_only && !f.split_on_space);
  EXPECT_EQ(f.types.back(), TokenType::UserDefined);  // "<tool>"
  // Rows beyond the tokenizer (config.json's vocab_size) decode to nothing, as HF skips them.
  auto padded = std::make_unique<Tokenizer>(load_hf_vocab(dir("never"), (int32_t)t.tokens.size() + 5));
  EXPECT_EQ(padded->decode({(int32_t)t.tokens.size() + 2}), "");
}

// A long prompt (the fixture's strings, 8 times, ~200 KB) as one run of text: the Viterbi pass is
// linear in it, and byte fallback with a decoder that strips the added prefix gives the text back
// (strings with added tokens' text or a U+2581, which decodes as a space, left out).
TEST(HfUnigramTokenizer, LongTextRoundTrips) {
  const auto ref = test::read_json(dir("legacy") + ".json");
  std::string text = "Start.";
  for (int rep = 0; rep < 8; ++rep)
    for (const auto& c : ref["cases"]) {
      const std::string t = c["text"].get<std::string>();
      if (t.find('<') == std::string::npos && t.find("\xE2\x96\x81") == std::string::npos) text += t;
    }
  auto tok = tokenizer_from_hf(dir("legacy"), 0);
  const auto t0 = std::chrono::steady_clock::now();
  const std::vector<int32_t> ids = tok->encode(text, false, false);
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(tok->decode(ids), text);
  EXPECT_LE(tok->min_tokens(text), ids.size());
  std::printf("  %zu bytes -> %zu tokens in %.1f ms\n", text.size(), ids.size(), ms);
}

// Scores as HF holds them: values HF tokenizers 0.23 wrote back (to_str) after reading a
// file with the first number of each pair, one ulp off; and numbers it reads exactly.
TEST(HfUnigramTokenizer, ScoresAreReadAsHfReadsThem) {
  EXPECT_EQ(hf_json_double(-3.8121529007297053), -3.8121529007297057);
  EXPECT_EQ(hf_json_double(-3.6331831021397436), -3.633183102139744);
  EXPECT_EQ(hf_json_double(-7.5357624504624905), -7.535762450462491);
  EXPECT_EQ(hf_json_double(-9.337940611281763), -9.337940611281764);
  for (double v : {0.0, -10.0, -1.8105129755954632, -6.091547421886936, 1e-05, -2.5e-300})
    EXPECT_EQ(hf_json_double(v), v) << v;
}

// The Viterbi path on a hand-made vocabulary (HF's documented example): "abcdacdxx" with
// a b c d (0), cd (1), ab (2), abc (5), abcd (10) is abcd a cd and one unknown token for "xx".
TEST(HfUnigramTokenizer, ViterbiPicksTheBestPath) {
  test::ScratchDir d("tiny-llama");
  nlohmann::json vocab = nlohmann::json::array();  // (nlohmann reads {{"a", 0.0}, ...} as an object)
  for (const auto& [piece, score] : std::vector<std::pair<std::string, double>>{
           {"<unk>", 0}, {"a", 0}, {"b", 0}, {"c", 0}, {"d", 0}, {"cd", 1}, {"ab", 2}, {"abc", 5}, {"abcd", 10}})
    vocab.push_back(nlohmann::json::array({piece, score}));
  nlohmann::json tj = nlohmann::json::object();
  tj["model"] = {{"type", "Unigram"}, {"unk_id", 0}, {"vocab", vocab}};
  tj["decoder"] = {{"type", "Fuse"}};
  test::write_json(d.file("tokenizer.json"), tj);
  std::filesystem::remove(d.file("tokenizer_config.json"));
  std::filesystem::remove(d.file("generation_config.json"));
  Tokenizer tok(load_hf_vocab(d.str(), 0));
  EXPECT_EQ(tok.encode("abcdacdxx", false, false), (std::vector<int32_t>{8, 1, 5, 0}));
  EXPECT_EQ(tok.decode({8, 1, 5}), "abcdacd");
  EXPECT_EQ(tok.min_tokens("abcdacdxx"), 1u);  // an unknown run may be any length
}

// The unknown token's own text is a piece too (when it is not an added token), fused with the
// unknown characters beside it; with byte_fallback a fused run that is not a token becomes
// bytes. Expected ids from HF tokenizers 0.23 for this vocabulary (<unk>, a, b, <0x00>..<0xFF>).
TEST(HfUnigramTokenizer, UnknownTokenTextFusesAsHf) {
  test::ScratchDir d("tiny-llama");
  nlohmann::json vocab = nlohmann::json::array({nlohmann::json::array({"<unk>", 0.0}),
                                                nlohmann::json::array({"a", -1.0}), nlohmann::json::array({"b", -1.0})});
  char buf[8];
  for (int b = 0; b < 256; ++b) {
    std::snprintf(buf, sizeof buf, "<0x%02X>", b);
    vocab.push_back(nlohmann::json::array({buf, -5.0}));
  }
  nlohmann::json tj = nlohmann::json::object();
  tj["model"] = {{"type", "Unigram"}, {"unk_id", 0}, {"vocab", vocab}, {"byte_fallback", true}};
  tj["decoder"] = {{"type", "Sequence"}, {"decoders", {{{"type", "ByteFallback"}}, {{"type", "Fuse"}}}}};
  test::write_json(d.file("tokenizer.json"), tj);
  std::filesystem::remove(d.file("tokenizer_config.json"));
  std::filesystem::remove(d.file("generation_config.json"));
  Tokenizer tok(load_hf_vocab(d.str(), 0));
  using V = std::vector<int32_t>;
  EXPECT_EQ(tok.encode("<unk>", false, false), (V{0}));
  EXPECT_EQ(tok.encode("a<unk>b", false, false), (V{1, 0, 2}));
  EXPECT_EQ(tok.encode("x<unk>", false, false), (V{123, 63, 120, 113, 110, 65}));
  EXPECT_EQ(tok.encode("ab<unk", false, false), (V{1, 2, 63, 120, 113, 110}));
  EXPECT_EQ(tok.decode({123, 63, 120, 113, 110, 65}), "x<unk>");
}

std::string error_with(const std::string& key, const std::function<void(nlohmann::json&)>& edit) {
  test::ScratchDir d("tiny-llama");  // a scratch directory; its tokenizer.json is replaced
  auto tj = test::read_json(dir(key) + "/tokenizer.json");
  edit(tj);
  test::write_json(d.file("tokenizer.json"), tj);
  std::filesystem::remove(d.file("tokenizer_config.json"));
  std::filesystem::remove(d.file("generation_config.json"));
  try {
    load_hf_vocab(d.str(), 0);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

#define EXPECT_CONTAINS(s, text) \
  do { const std::string s_ = (s); EXPECT_NE(s_.find(text), std::string::npos) << s_; } while (0)

TEST(HfUnigramTokenizer, UnsupportedStepsAreNamed) {
  EXPECT_EQ(error_with("t5", [](auto&) {}), "");  // the scratch copy itself loads
  // A table that is not what SentencePiece compiles (a trie larger than the table; not base64).
  auto charsmap = [](const char* map) {
    return [map](nlohmann::json& j) { j["normalizer"]["normalizers"][0]["precompiled_charsmap"] = map; };
  };
  EXPECT_CONTAINS(error_with("nfkc", charsmap("/////w==")), "precompiled_charsmap: a trie of");
  EXPECT_CONTAINS(error_with("nfkc", charsmap("a*b")), "is not base64");
  // Without a table Precompiled changes nothing, and is accepted.
  EXPECT_EQ(error_with("t5",
                       [](auto& j) {
                         j["normalizer"]["normalizers"].push_back(
                             {{"type", "Precompiled"}, {"precompiled_charsmap", nullptr}});
                       }),
            "");
  EXPECT_CONTAINS(error_with("t5", [](auto& j) { j["normalizer"] = {{"type", "NFKC"}}; }),
                  "normalizer 'NFKC' is not supported for Unigram");
  EXPECT_CONTAINS(error_with("t5", [](auto& j) { j["normalizer"]["normalizers"].push_back({{"type", "Lowercase"}}); }),
                  "normalizer 'Lowercase' is not supported for Unigram");
  EXPECT_CONTAINS(error_with("t5", [](auto& j) { j["pre_tokenizer"] = {{"type", "WhitespaceSplit"}}; }),
                  "pre-tokenizer 'WhitespaceSplit' is not supported for Unigram");
  EXPECT_CONTAINS(error_with("t5", [](auto& j) { j["pre_tokenizer"]["prepend_scheme"] = "sometimes"; }),
                  "prepend_scheme 'sometimes'");
  EXPECT_CONTAINS(error_with("t5", [](auto& j) { j["decoder"] = {{"type", "CTC"}}; }),
                  "decoder step 'CTC' is not supported for Unigram");
  EXPECT_CONTAINS(error_with("t5", [](auto& j) { j["decoder"] = nullptr; }), "without a decoder");
  EXPECT_CONTAINS(error_with("legacy", [](auto& j) { j["decoder"]["decoders"].erase(1); }),
                  "has no ByteFallback step");
  EXPECT_CONTAINS(error_with("t5", [](auto& j) { j["model"]["unk_id"] = 100000; }), "unk_id 100000");
  EXPECT_CONTAINS(error_with("t5", [](auto& j) { j["model"]["vocab"][5] = "x"; }), "is not [piece, score]");
  EXPECT_CONTAINS(error_with("t5", [](auto& j) { j["normalizer"]["normalizers"][1]["pattern"]["Regex"] = "("; }),
                  "regex '(' failed to compile");
  EXPECT_CONTAINS(error_with("t5", [](auto& j) { j["model"]["type"] = "WordPiece"; }),
                  "tokenizer model 'WordPiece' is not supported");
}

}  // namespace
}  // namespace duo
