// Our tokenizers against HF `tokenizers` (Rust) built from the same GGUF vocabularies with the
// original models' pre-tokenizers (dev/make_tokenizer_fixtures.py), plus round trips,
// special tokens, vocabulary errors, SentencePiece on a hand-built vocabulary, speed, and the
// lower bound on token counts a server checks before tokenizing.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "eval/haystack.h"
#include "core/error.h"
#include "io/gguf.h"
#include "test_support.h"
#include "tokenizer/gguf_builder.h"
#include "tokenizer/pretokenize.h"
#include "tokenizer/tokenizer.h"

namespace duo {
namespace {

nlohmann::json load_fixture(const std::string& name) {
  std::ifstream f(test::fixture_path("tokenizer/" + name + ".json"));
  EXPECT_TRUE(f.good()) << "missing fixture " << name << " (dev/make_tokenizer_fixtures.py)";
  return nlohmann::json::parse(f);
}

// Every fixture string: ids with parse_special on and off, decode, and the raw pieces.
void check_fixture(const Tokenizer& tok, const nlohmann::json& j) {
  int checked = 0;
  for (const auto& c : j["cases"]) {
    const std::string text = c["text"];
    const auto expect = c["ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(tok.encode(text, false, true), expect) << "text: " << text;
    const auto expect_plain = c.contains("ids_no_special") ? c["ids_no_special"].get<std::vector<int32_t>>() : expect;
    EXPECT_EQ(tok.encode(text, false, false), expect_plain) << "(no special) text: " << text;
    const std::string decoded = c.contains("decoded") ? c["decoded"].get<std::string>() : text;
    EXPECT_EQ(tok.decode(expect), decoded) << "decode of: " << text;
    EXPECT_EQ(tok.decode(expect_plain), decoded) << "decode (no special) of: " << text;
    // token_to_piece gives raw bytes: control tokens print nothing, the rest concatenate to the text.
    std::string pieces, expect_pieces;
    for (int32_t id : expect) pieces += tok.token_to_piece(id);
    for (int32_t id : expect)
      expect_pieces += tok.vocab().types[id] == TokenType::Control ? "" : tok.decode({id});
    EXPECT_EQ(pieces, expect_pieces) << "pieces of: " << text;
    ++checked;
  }
  EXPECT_GT(checked, 300);
}

// The same strings under other pre-tokenizers, with the model's vocabulary (fixture "variants").
void check_variants(const Vocab& base, const nlohmann::json& j) {
  int differ = 0;
  for (const auto& name : j["variants"]) {
    Vocab v = base;
    v.pre = name.get<std::string>();
    const Tokenizer tok(std::move(v));
    for (const auto& c : j["cases"]) {
      const std::string text = c["text"];
      const bool own = c.contains("variants") && c["variants"].contains(name);
      const auto expect = (own ? c["variants"][name] : c["ids"]).get<std::vector<int32_t>>();
      differ += own;
      EXPECT_EQ(tok.encode(text, false, true), expect) << "pre " << name << ", text: " << text;
    }
  }
  EXPECT_GT(differ, 10) << "the variant pre-tokenizers should differ from " << j["pre"] << " on some strings";
}

TEST(Tokenizer, SmolLM2MatchesReference) {
  DUO_REQUIRE_MODEL(path, test::kSmolLM2);
  auto g = GgufFile::open(path);
  auto tok = Tokenizer::from_gguf(*g);
  EXPECT_EQ(tok->vocab().pre, "smollm");
  const auto j = load_fixture("smollm2");
  EXPECT_EQ(j["pre"], "smollm");
  check_fixture(*tok, j);
}

TEST(Tokenizer, QwenMatchesReference) {
  DUO_REQUIRE_MODEL(path, test::kQwenCoder);
  auto g = GgufFile::open(path);
  auto tok = Tokenizer::from_gguf(*g);
  EXPECT_EQ(tok->vocab().pre, "qwen2");
  const auto j = load_fixture("qwen2.5-coder-1.5b");
  check_fixture(*tok, j);
  // "gpt2" and "llama-bpe" pre-tokenizers (Llama-3 regex + ignore_merges) on Qwen's vocabulary.
  check_variants(tok->vocab(), j);
}

// Gemma-3's 262K SentencePiece BPE vocabulary (byte fallback, user-defined runs of spaces, tabs
// and newlines, HTML tags) against Google's sentencepiece on a model rebuilt from the same GGUF
// (dev/make_gemma_tokenizer_fixtures.py).
TEST(Tokenizer, GemmaMatchesSentencePiece) {
  DUO_REQUIRE_MODEL(path, test::kGemma3);
  auto g = GgufFile::open(path);
  auto tok = Tokenizer::from_gguf(*g);
  const auto j = load_fixture("gemma3-270m");
  check_fixture(*tok, j);
}

// The pre-tokenizer regexes alone (PCRE2 here, Oniguruma in the reference), for every type.
TEST(Tokenizer, PretokenizersMatchReference) {
  const auto j = load_fixture("pretokenize");
  const auto& strings = j["strings"];
  for (const auto& [name, all] : j["pieces"].items()) {
    const Pretokenizer pre(name);
    for (size_t i = 0; i < strings.size(); ++i) {
      const std::string text = strings[i];
      EXPECT_EQ(pre.split(text), all[i].get<std::vector<std::string>>()) << "pre " << name << ", text: " << text;
    }
  }
  EXPECT_EQ(Pretokenizer("default").split("I'm 2024!"), Pretokenizer("gpt2").split("I'm 2024!"));
  EXPECT_THROW(Pretokenizer("nope"), Error);
}

TEST(Tokenizer, SmolLM2VocabAndSpecialTokens) {
  DUO_REQUIRE_MODEL(path, test::kSmolLM2);
  auto g = GgufFile::open(path);
  auto tok = Tokenizer::from_gguf(*g);
  const Vocab& v = tok->vocab();
  EXPECT_EQ(v.model, Vocab::Model::BPE);
  EXPECT_EQ(tok->n_vocab(), 49152);
  EXPECT_EQ(v.merges.size(), 48900u);
  EXPECT_EQ(v.bos, 1);
  EXPECT_EQ(v.eos, 2);
  EXPECT_FALSE(v.add_bos);
  EXPECT_EQ(tok->token_id("<|im_end|>"), 2);
  EXPECT_EQ(tok->token_id("<|im_start|>"), 1);
  EXPECT_EQ(tok->token_id("no such token"), -1);
  EXPECT_TRUE(tok->is_eog(2));   // <|im_end|> (also EOS here)
  EXPECT_TRUE(tok->is_eog(0));   // <|endoftext|>
  EXPECT_FALSE(tok->is_eog(1));  // <|im_start|>
  EXPECT_FALSE(tok->is_eog(100));
  EXPECT_FALSE(tok->is_eog(-1));
  EXPECT_FALSE(tok->is_eog(1 << 20));
  EXPECT_EQ(tok->encode("hi", true, false).front(), 1);  // add_bos
  EXPECT_EQ(tok->token_to_piece(1), "");                 // control tokens print nothing...
  EXPECT_EQ(tok->decode({1}), "<|im_start|>");           // ...but decode to their text
  // parse_special: on = one token; off = the text's pieces.
  EXPECT_EQ(tok->encode("<|im_end|>", false, true), (std::vector<int32_t>{2}));
  EXPECT_GT(tok->encode("<|im_end|>", false, false).size(), 3u);
  // Longest match first: "<|im_start|>" is not confused with a shorter special token.
  EXPECT_EQ(tok->encode("<|im_start|><|endoftext|>", false, true), (std::vector<int32_t>{1, 0}));
  // Digits one by one (pre "smollm").
  const auto d = tok->encode("2024", false, false);
  ASSERT_EQ(d.size(), 4u);
  EXPECT_EQ(tok->token_to_piece(d[0]), "2");
  EXPECT_THROW(tok->decode({49152}), std::runtime_error);
  EXPECT_THROW(tok->token_to_piece(-1), std::runtime_error);
}

TEST(Tokenizer, QwenSpecialTokens) {
  DUO_REQUIRE_MODEL(path, test::kQwenCoder);
  auto g = GgufFile::open(path);
  auto tok = Tokenizer::from_gguf(*g);
  EXPECT_EQ(tok->n_vocab(), 151936);
  EXPECT_EQ(tok->vocab().eos, 151645);
  EXPECT_TRUE(tok->is_eog(151645));   // <|im_end|>
  EXPECT_TRUE(tok->is_eog(151643));   // <|endoftext|>
  EXPECT_FALSE(tok->is_eog(151644));  // <|im_start|>
  EXPECT_FALSE(tok->is_eog(151657));  // <tool_call> (user-defined)
  // User-defined tokens are matched even with parse_special off (as HF and llama.cpp do);
  // control tokens only with it on.
  EXPECT_EQ(tok->encode("<tool_call>", false, false), (std::vector<int32_t>{151657}));
  EXPECT_EQ(tok->encode("<|im_start|>", false, true), (std::vector<int32_t>{151644}));
  EXPECT_NE(tok->encode("<|im_start|>", false, false), (std::vector<int32_t>{151644}));
  // Unused padding tokens ([PAD151665], type 5) are not special.
  EXPECT_NE(tok->encode("[PAD151665]", false, true), (std::vector<int32_t>{151665}));
}

TEST(Tokenizer, InvalidUtf8IsEncodedLosslessly) {
  DUO_REQUIRE_MODEL(path, test::kSmolLM2);
  auto g = GgufFile::open(path);
  auto tok = Tokenizer::from_gguf(*g);
  const std::string bad = "ok \x80\x81 broken \xc3( \xe2\x82 2024 \xed\xa0\x80 end";
  EXPECT_EQ(tok->decode(tok->encode(bad, false, false)), bad);
  // Invalid bytes are pieces of their own; the valid text around them is pre-tokenized as usual.
  const std::string tail = " 2024 words";
  std::vector<int32_t> expect = tok->encode("\x80", false, false);
  ASSERT_EQ(expect.size(), 1u);
  const auto rest = tok->encode(tail, false, false);
  expect.insert(expect.end(), rest.begin(), rest.end());
  EXPECT_EQ(tok->encode("\x80" + tail, false, false), expect);
  // Bytes the vocabulary has no token for (0xFE/0xFF never occur in UTF-8 and this vocabulary
  // dropped them) are dropped like every byte without a token (llama.cpp does the same), never
  // the unknown token (<|endoftext|> here).
  EXPECT_EQ(tok->encode("a\xff", false, false), tok->encode("a", false, false));
}

TEST(Tokenizer, BytesWithoutATokenAreDroppedNotUnknown) {
  // SmolLM2's byte-level vocabulary has no token for the bytes 0x04, 0x06, 0x13, 0x14, 0x16,
  // 0x1D. HF tokenizers (0.23, BPE from this GGUF's tokens and merges, unk_token None, the
  // original pre-tokenizer) drops them; so does llama.cpp. They used to become the unknown
  // token, id 0 = <|endoftext|>: an end-of-document injected into the user's text.
  DUO_REQUIRE_MODEL(path, test::kSmolLM2);
  auto g = GgufFile::open(path);
  auto tok = Tokenizer::from_gguf(*g);
  EXPECT_EQ(tok->encode("a\x14\x16\x1d" "b", false, false), (std::vector<int32_t>{81, 82}));
  EXPECT_EQ(tok->encode("x\x14 y\x1d\x1dz", false, false), (std::vector<int32_t>{104, 329, 106}));
  EXPECT_TRUE(tok->encode("\x14", false, false).empty());
  EXPECT_EQ(tok->min_tokens("\x04\x06\x13\x14\x16\x1d"), 0u);
}

TEST(Tokenizer, LongTextIsFast) {
  DUO_REQUIRE_MODEL(path, test::kQwenCoder);
  DUO_REQUIRE_MODEL(path2, test::kSmolLM2);
  std::string text;
  for (const auto& s : haystack_sentences(2000, 3)) text += s + " ";
  text += "Numbers 1234567890 and code: for (int i = 0; i < n; ++i) { x[i] = 2 * i; }\n";
  text += std::string(20000, 'x');  // one 20K-character "word"
  ASSERT_GT(text.size(), 200000u);
  for (const std::string& p : {path, path2}) {
    auto g = GgufFile::open(p);
    auto tok = Tokenizer::from_gguf(*g);
    const auto t0 = std::chrono::steady_clock::now();
    const auto ids = tok->encode(text, false, false);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_LT(s, 2.0) << p << ": tokenizing " << text.size() << " bytes took " << s << " s";
    std::printf("  %s: %zu bytes -> %zu tokens in %.0f ms\n", p.substr(p.rfind('/') + 1).c_str(), text.size(),
                ids.size(), s * 1e3);
    EXPECT_GT(text.size() / ids.size(), 2u) << "implausibly many tokens";
    EXPECT_EQ(tok->decode(ids), text);
  }
}

// --- vocabulary loading from GGUF metadata ---------------------------------------------------

test::GgufBuilder small_bpe(const std::string& model, const std::string& pre) {
  test::GgufBuilder b;
  b.str("tokenizer.ggml.model", model)
      .str("tokenizer.ggml.pre", pre)
      .strs("tokenizer.ggml.tokens", {"a", "b", "ab", "<|end|>"})
      .i32s("tokenizer.ggml.token_type", {1, 1, 1, 3})
      .f32s("tokenizer.ggml.scores", {0, 0, 0, 0})
      .strs("tokenizer.ggml.merges", {"a b"})
      .u32("tokenizer.ggml.eos_token_id", 3);
  return b;
}

std::string load_error(const test::GgufBuilder& b) {
  const auto bytes = b.bytes();
  auto g = GgufFile::from_memory(bytes.data(), bytes.size());
  try {
    load_vocab(*g);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Tokenizer, LoadsVocabFromGguf) {
  const auto bytes = small_bpe("gpt2", "gpt2").bytes();
  auto g = GgufFile::from_memory(bytes.data(), bytes.size());
  auto tok = Tokenizer::from_gguf(*g);
  EXPECT_EQ(tok->vocab().pre, "gpt2");
  EXPECT_EQ(tok->vocab().eos, 3);
  EXPECT_EQ(tok->vocab().bos, -1);
  EXPECT_EQ(tok->encode("abab<|end|>", true, true), (std::vector<int32_t>{2, 2, 3}));  // no BOS to add
  EXPECT_TRUE(tok->is_eog(3));
  EXPECT_EQ(tok->decode({2, 0}), "aba");
}

TEST(Tokenizer, ClearErrorsForUnknownModelOrPretokenizer) {
  std::string e = load_error(small_bpe("bert", "gpt2"));
  EXPECT_NE(e.find("unsupported tokenizer model 'bert'"), std::string::npos) << e;
  EXPECT_NE(e.find("gpt2"), std::string::npos) << e;
  EXPECT_NE(e.find("llama"), std::string::npos) << e;
  e = load_error(small_bpe("gpt2", "deepseek-coder"));
  EXPECT_NE(e.find("unsupported pre-tokenizer 'deepseek-coder'"), std::string::npos) << e;
  for (const char* known : {"gpt2", "llama-bpe", "qwen2", "smollm", "default"})
    EXPECT_NE(e.find(known), std::string::npos) << e;
  test::GgufBuilder bad;
  bad.str("tokenizer.ggml.model", "gpt2").strs("tokenizer.ggml.tokens", {"a", "b"}).i32s("tokenizer.ggml.token_type",
                                                                                          {1});
  e = load_error(bad);
  EXPECT_NE(e.find("token types"), std::string::npos) << e;
  test::GgufBuilder oob = small_bpe("gpt2", "gpt2");
  oob.u32("tokenizer.ggml.bos_token_id", 99);
  e = load_error(oob);
  EXPECT_NE(e.find("outside the vocabulary"), std::string::npos) << e;
  test::GgufBuilder none;
  none.str("general.architecture", "llama");
  e = load_error(none);
  EXPECT_NE(e.find("tokenizer.ggml.model"), std::string::npos) << e;
}

// --- SentencePiece on a hand-built vocabulary -------------------------------------------------

struct SpmVocab {
  Vocab v;
  int32_t add(const std::string& t, float score, TokenType type = TokenType::Normal) {
    v.tokens.push_back(t);
    v.scores.push_back(score);
    v.types.push_back(type);
    return (int32_t)v.tokens.size() - 1;
  }
  SpmVocab() {
    v.model = Vocab::Model::SPM;
    v.add_space_prefix = true;
    v.unk = add("<unk>", 0, TokenType::Unknown);
    v.bos = add("<s>", 0, TokenType::Control);
    v.eos = add("</s>", 0, TokenType::Control);
    for (int b = 0; b < 256; ++b) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "<0x%02X>", b);
      add(buf, 0, TokenType::Byte);
    }
  }
  static int32_t byte(int b) { return 3 + b; }
};

const std::string kSp = "\xE2\x96\x81";  // U+2581, SentencePiece's space

TEST(Tokenizer, SentencePieceByScoreWithByteFallback) {
  SpmVocab s;
  const int32_t sp = s.add(kSp, -1);
  for (const char* c : {"h", "e", "l", "o"}) s.add(c, -2);
  s.add("he", -1.5f);
  s.add("ll", -1.0f);
  const int32_t llo = s.add("llo", -0.5f);
  const int32_t sp_he = s.add(kSp + "he", -3.0f);
  const int32_t e_acute = s.add("\xC3\xA9", -2);  // é
  const Tokenizer tok(s.v);
  // "▁hello": candidates ▁h? no; he (-1.5), ll (-1.0): ll first; then llo (-0.5); then he; then
  // ▁he (-3.0) joins ▁ + he. Result: ▁he, llo.
  EXPECT_EQ(tok.encode("hello", true, false), (std::vector<int32_t>{1, sp_he, llo}));
  EXPECT_EQ(tok.decode(tok.encode("hello", false, false)), "hello");
  // 'x' is not in the vocabulary: byte fallback <0x78>; space -> ▁.
  EXPECT_EQ(tok.encode("he x", false, false), (std::vector<int32_t>{sp_he, sp, SpmVocab::byte('x')}));
  EXPECT_EQ(tok.decode(tok.encode("he x", false, false)), "he x");
  // A multi-byte character that is a token stays whole; one that is not falls back to its bytes.
  EXPECT_EQ(tok.encode("\xC3\xA9", false, false), (std::vector<int32_t>{sp, e_acute}));
  EXPECT_EQ(tok.encode("\xE2\x82\xAC", false, false),  // €
            (std::vector<int32_t>{sp, SpmVocab::byte(0xE2), SpmVocab::byte(0x82), SpmVocab::byte(0xAC)}));
  EXPECT_EQ(tok.decode(tok.encode("h\xE2\x82\xAC", false, false)), "h\xE2\x82\xAC");
  EXPECT_EQ(tok.token_to_piece(SpmVocab::byte(0xE2)), "\xE2");
  EXPECT_EQ(tok.token_to_piece(sp_he), " he");
  EXPECT_EQ(tok.token_to_piece(1), "");
  EXPECT_EQ(tok.encode("", true, false), (std::vector<int32_t>{1}));
  EXPECT_TRUE(tok.is_eog(2));
}

TEST(Tokenizer, SentencePieceTiesAndSpecialTokens) {
  SpmVocab s;
  const int32_t sp = s.add(kSp, -1);
  const int32_t a = s.add("a", -2);
  const int32_t aa = s.add("aa", -1);  // every "aa" pair ties: the leftmost merges first
  const int32_t end = s.add("<end>", 0, TokenType::Control);
  const Tokenizer tok(s.v);
  // "▁aaa": pairs (a,a) at 1 and 2 tie; the left one wins -> ▁, aa, a.
  EXPECT_EQ(tok.encode("aaa", false, false), (std::vector<int32_t>{sp, aa, a}));
  // Control token text: a token with parse_special, bytes without; like llama.cpp, the text
  // after a special token gets the space prefix again.
  EXPECT_EQ(tok.encode("a<end>a", false, true), (std::vector<int32_t>{sp, a, end, sp, a}));
  const auto plain = tok.encode("a<end>", false, false);
  EXPECT_EQ(plain.size(), 7u);  // ▁, a, and five byte tokens for "<end>"
  EXPECT_EQ(tok.decode(plain), "a<end>");
  // Without add_space_prefix no ▁ is prepended.
  Vocab v = s.v;
  v.add_space_prefix = false;
  const Tokenizer tok2(v);
  EXPECT_EQ(tok2.encode("aa a", false, false), (std::vector<int32_t>{aa, sp, a}));
  EXPECT_EQ(tok2.decode({aa, sp, a}), "aa a");
}

TEST(Tokenizer, SentencePieceFromGguf) {
  SpmVocab s;
  s.add(kSp, -1);
  s.add("a", -2);
  std::vector<int32_t> types;
  for (auto t : s.v.types) types.push_back((int32_t)t);
  test::GgufBuilder b;
  b.str("tokenizer.ggml.model", "llama")
      .strs("tokenizer.ggml.tokens", s.v.tokens)
      .i32s("tokenizer.ggml.token_type", types)
      .f32s("tokenizer.ggml.scores", s.v.scores)
      .u32("tokenizer.ggml.bos_token_id", 1)
      .u32("tokenizer.ggml.eos_token_id", 2)
      .u32("tokenizer.ggml.unknown_token_id", 0);
  const auto bytes = b.bytes();
  auto g = GgufFile::from_memory(bytes.data(), bytes.size());
  auto tok = Tokenizer::from_gguf(*g);
  EXPECT_EQ(tok->vocab().model, Vocab::Model::SPM);
  EXPECT_TRUE(tok->vocab().add_bos);           // SentencePiece defaults
  EXPECT_TRUE(tok->vocab().add_space_prefix);
  EXPECT_EQ(tok->encode("a a", true, false), (std::vector<int32_t>{1, 259, 260, 259, 260}));
  EXPECT_EQ(tok->decode({1, 259, 260, 259, 260}), "<s> a a");  // as HF decode(skip_special_tokens=False)
}

// --- min_tokens: a lower bound on the token count from the bytes alone --------------------------

// Texts that pack many bytes into few tokens: long tokens repeated, special-token text, and
// bytes some vocabularies drop.
std::vector<std::string> dense_texts(const Tokenizer& tok) {
  std::string longest;
  for (int32_t id = 0; id < tok.n_vocab(); ++id) {
    const TokenType t = tok.vocab().types[id];
    if (t == TokenType::Normal && tok.token_to_piece(id).size() > longest.size()) longest = tok.token_to_piece(id);
  }
  std::vector<std::string> out = {"", "a", "hello world", std::string(5000, ' '), std::string(3000, '-'),
                                  "<|im_start|><|im_end|><|endoftext|><|im_start|>", "\xfe\xff\xfe a"};
  std::string rep;
  for (int i = 0; i < 50; ++i) rep += longest;
  out.push_back(rep);
  for (const auto& s : haystack_sentences(200, 1)) out.back() += s;
  return out;
}

void check_min_tokens(const Tokenizer& tok) {
  for (const std::string& text : dense_texts(tok))
    for (bool special : {false, true}) {
      const size_t n = tok.encode(text, false, special).size();
      EXPECT_LE(tok.min_tokens(text), n) << "special " << special << ", text: " << text.substr(0, 80);
    }
  // Not vacuous: ordinary text is within a small factor of the bound.
  std::string prose;
  for (const auto& s : haystack_sentences(200, 2)) prose += s + " ";
  EXPECT_GT(tok.min_tokens(prose) * 40, tok.encode(prose, false, false).size());
}

TEST(Tokenizer, MinTokensIsALowerBoundWithRealVocabularies) {
  DUO_REQUIRE_MODEL(path, test::kSmolLM2);
  DUO_REQUIRE_MODEL(path2, test::kQwenCoder);
  for (const std::string& p : {path, path2}) {
    auto g = GgufFile::open(p);
    auto tok = Tokenizer::from_gguf(*g);
    std::printf("  %s: longest token %zu bytes\n", p.substr(p.rfind('/') + 1).c_str(), tok->max_token_bytes());
    EXPECT_GE(tok->max_token_bytes(), 12u);  // "<|im_start|>"
    EXPECT_LE(tok->max_token_bytes(), 1024u);
    check_min_tokens(*tok);
  }
}

TEST(Tokenizer, MinTokensCountsOnlyBytesThatBecomeTokens) {
  // No unknown token and only "a", "b" as bytes: everything else is dropped, so only those count.
  const auto bytes = small_bpe("gpt2", "gpt2").bytes();
  auto g = GgufFile::from_memory(bytes.data(), bytes.size());
  auto tok = Tokenizer::from_gguf(*g);
  EXPECT_EQ(tok->max_token_bytes(), 7u);  // "<|end|>"
  EXPECT_EQ(tok->encode("zzzzzzzzzzzzzzzab", false, false), (std::vector<int32_t>{2}));
  EXPECT_EQ(tok->min_tokens("zzzzzzzzzzzzzzzab"), 1u);
  EXPECT_EQ(tok->min_tokens("zzzz"), 0u);
  EXPECT_EQ(tok->min_tokens(std::string(15, 'a')), 3u);
  // SentencePiece: "▁aa" covers 3 input bytes at most (" aa"), byte fallback 1.
  SpmVocab s;
  s.add(kSp + "aa", -1);
  const Tokenizer spm(s.v);
  EXPECT_EQ(spm.max_token_bytes(), 6u);  // "<0x41>" as text
  check_min_tokens(spm);
}

}  // namespace
}  // namespace duo
