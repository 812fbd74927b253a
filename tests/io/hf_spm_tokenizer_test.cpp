// SentencePiece-style tokenizer.json files (BPE with byte_fallback; the U+2581 space by a
// Prepend/Replace normalizer or a Metaspace pre-tokenizer) against HF tokenizers' ids
// (tests/fixtures/hf_spm, from dev/make_hf_spm_fixtures.py): ~900 strings each (words,
// whitespace runs, numbers, code, emoji, CJK, combining marks, added tokens in text) and HF's
// decoding of the ids; strings with invalid UTF-8, whose bytes take the byte fallback; and the
// errors for what duo does not implement.
#include <gtest/gtest.h>

#include "core/error.h"
#include "io/hf_fixture.h"
#include "tokenizer/hf_tokenizer.h"

namespace duo {
namespace {

std::string spm_dir(const std::string& key) { return test::fixture_path("hf_spm/" + key); }

std::string from_hex(const std::string& h) {
  std::string s;
  for (size_t i = 0; i + 1 < h.size(); i += 2) s += (char)std::stoi(h.substr(i, 2), nullptr, 16);
  return s;
}

// What decoding gives back for text without added tokens: the text with U+2581 read as a space,
// less the leading space where the decoder strips one that encoding did not add (Metaspace does
// not prefix text that starts with a space).
std::string raw_decoded(const Vocab& v, const std::string& raw) {
  std::string text;
  for (size_t i = 0; i < raw.size(); ++i) {
    if (raw.compare(i, 3, "\xE2\x96\x81") == 0) {
      text += ' ';
      i += 2;
    } else {
      text += raw[i];
    }
  }
  const bool starts_space = !text.empty() && text[0] == ' ';
  const bool prefixed = v.add_space_prefix && !(v.prefix_unless_space && starts_space);
  if (!prefixed && v.add_space_prefix && !v.decode_keeps_space && starts_space) return text.substr(1);
  return text;
}

void check_fixture(const std::string& key) {
  const auto ref = test::read_json(spm_dir(key) + ".json");
  auto tok = tokenizer_from_hf(spm_dir(key), 0);
  ASSERT_EQ(tok->vocab().model, Vocab::Model::SPM);
  const int32_t eos = tok->token_id("</s>");
  size_t n = 0, ids = 0, parts = 0;
  for (const auto& c : ref["cases"]) {
    const std::string text = c["text"].get<std::string>();
    const auto want = c["ids"].get<std::vector<int32_t>>();
    // HF matches added tokens (special or not) in text: parse_special on.
    EXPECT_EQ(tok->encode(text, false, true), want) << key << ": '" << text << "'";
    EXPECT_EQ(tok->decode(want), c.value("decoded", text)) << key << ": '" << text << "'";
    EXPECT_LE(tok->min_tokens(text), want.size()) << key << ": '" << text << "'";
    // The same text as a chat prompt's parts, "</s>" its marker: the text after a marker is not
    // the start of the input.
    if (const size_t at = text.find("</s>"); at != std::string::npos) {
      const std::vector<PromptPart> p = {{text.substr(0, at), false}, {"</s>", true}, {text.substr(at + 4), false}};
      if (text.find("</s>", at + 4) == std::string::npos && text.find("<s>") == std::string::npos &&
          text.find("<unk>") == std::string::npos && text.find("<tool>") == std::string::npos) {
        EXPECT_EQ(tok->encode_parts(p, false), want) << key << ": '" << text << "'";
        ++parts;
      }
    }
    ++n, ids += want.size();
  }
  EXPECT_GE(n, 900u);
  EXPECT_GE(parts, 5u);
  EXPECT_GE(eos, 0);
  for (const auto& c : ref["cases_with_bos"]) {
    const std::string text = c["text"].get<std::string>();
    EXPECT_EQ(tok->encode(text, tok->vocab().add_bos, true), c["ids"].get<std::vector<int32_t>>()) << key << ": " << text;
  }
  size_t bad = 0;
  for (const auto& c : ref["invalid_utf8"]) {
    const std::string raw = from_hex(c["hex"].get<std::string>());
    const auto want = c["ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(tok->encode(raw, false, true), want) << key << ": " << c["hex"];
    // HF's decoder would give U+FFFD for the invalid bytes; duo gives them back.
    if (raw.find("<s>") == std::string::npos && raw.find("</s>") == std::string::npos &&
        raw.find("<unk>") == std::string::npos) {
      EXPECT_EQ(tok->decode(want), raw_decoded(tok->vocab(), raw)) << key << ": " << c["hex"];
    }
    ++bad;
  }
  EXPECT_GE(bad, 50u);
  std::printf("  %s: %zu strings, %zu ids, %zu as prompt parts, %zu with invalid UTF-8, all equal\n", key.c_str(), n,
              ids, parts, bad);
}

TEST(HfSpmTokenizer, LegacyPrependReplaceNormalizerMatchesHf) { check_fixture("legacy"); }
TEST(HfSpmTokenizer, MetaspaceFirstMatchesHf) { check_fixture("metaspace"); }
TEST(HfSpmTokenizer, MetaspaceAlwaysSplitMatchesHf) { check_fixture("split"); }
TEST(HfSpmTokenizer, ReplaceOnlyNormalizerMatchesHf) { check_fixture("gemma"); }

TEST(HfSpmTokenizer, StepsAreReadAsDeclared) {
  const Vocab l = load_hf_vocab(spm_dir("legacy"), 0);
  EXPECT_TRUE(l.spm_merges && l.add_space_prefix && l.fuse_unk);
  EXPECT_FALSE(l.prefix_first_only || l.prefix_unless_space || l.split_on_space || l.decode_keeps_space);
  EXPECT_TRUE(l.add_bos);
  EXPECT_EQ(l.types[3], TokenType::Byte);  // <0x00>
  EXPECT_EQ(l.tokens[3], "<0x00>");
  EXPECT_EQ(l.types[1], TokenType::Control);  // <s>
  const Vocab m = load_hf_vocab(spm_dir("metaspace"), 0);
  EXPECT_TRUE(m.add_space_prefix && m.prefix_first_only && m.prefix_unless_space);
  EXPECT_FALSE(m.split_on_space);
  EXPECT_EQ(m.types.back(), TokenType::UserDefined);  // "<tool>"
  const Vocab s = load_hf_vocab(spm_dir("split"), 0);
  EXPECT_TRUE(s.split_on_space && s.ignore_merges && !s.prefix_first_only);
  EXPECT_FALSE(s.fuse_unk);
  const Vocab g = load_hf_vocab(spm_dir("gemma"), 0);
  EXPECT_FALSE(g.add_space_prefix);
  EXPECT_TRUE(g.decode_keeps_space);
}

std::string error_with(const std::string& key, const std::function<void(nlohmann::json&)>& edit) {
  test::ScratchDir d("tiny-llama");  // a scratch directory; its tokenizer.json is replaced
  auto tj = test::read_json(spm_dir(key) + "/tokenizer.json");
  edit(tj);
  test::write_json(d.file("tokenizer.json"), tj);
  std::filesystem::remove(d.file("tokenizer_config.json"));
  try {
    load_hf_vocab(d.str(), 0);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

#define EXPECT_CONTAINS(s, text) \
  do { const std::string s_ = (s); EXPECT_NE(s_.find(text), std::string::npos) << s_; } while (0)

TEST(HfSpmTokenizer, UnsupportedStepsAreNamed) {
  EXPECT_EQ(error_with("legacy", [](auto&) {}), "");  // the scratch copy itself loads
  EXPECT_CONTAINS(error_with("legacy", [](auto& j) { j["normalizer"]["normalizers"].push_back({{"type", "NFKC"}}); }),
                  "normalizer 'NFKC' is not supported with byte_fallback");
  EXPECT_CONTAINS(error_with("legacy", [](auto& j) { j["normalizer"] = nullptr; }), "has neither");
  EXPECT_CONTAINS(error_with("metaspace", [](auto& j) { j["pre_tokenizer"] = {{"type", "Whitespace"}}; }),
                  "pre-tokenizer 'Whitespace' is not supported with byte_fallback");
  EXPECT_CONTAINS(error_with("metaspace", [](auto& j) { j["pre_tokenizer"]["prepend_scheme"] = "sometimes"; }),
                  "prepend_scheme 'sometimes'");
  EXPECT_CONTAINS(error_with("metaspace", [](auto& j) { j["pre_tokenizer"]["replacement"] = "_"; }),
                  "replacement other than U+2581");
  EXPECT_CONTAINS(error_with("legacy", [](auto& j) { j["decoder"]["decoders"].erase(1); }), "decoder step 'Fuse'");
  EXPECT_CONTAINS(error_with("legacy", [](auto& j) { j["decoder"] = {{"type", "ByteLevel"}}; }),
                  "decoder step 'ByteLevel'");
  EXPECT_CONTAINS(error_with("gemma",
                             [](auto& j) {
                               j["decoder"]["decoders"].push_back(
                                   {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}});
                             }),
                  "strips a leading space that encoding never adds");
  EXPECT_CONTAINS(error_with("legacy", [](auto& j) { j["added_tokens"][1]["normalized"] = true; }),
                  "added token '<s>' is normalized");
  EXPECT_CONTAINS(error_with("legacy", [](auto& j) { j["model"]["merges"].push_back("<0x41> <0x42>"); }),
                  "merge '<0x41> <0x42>' does not give a token");
  EXPECT_CONTAINS(error_with("legacy", [](auto& j) { j["model"]["type"] = "WordPiece"; }),
                  "tokenizer model 'WordPiece' is not supported");
}

}  // namespace
}  // namespace duo
