#include "tokenizer/hf_tokenizer.h"

#include <sys/stat.h>

#include <cctype>
#include <map>
#include <unordered_set>

#include "core/error.h"
#include "io/hf_checkpoint.h"
#include "tokenizer/hf_unigram.h"

namespace duo {

namespace {

using json = nlohmann::json;

// GPT-2's split, which HF's ByteLevel pre-tokenizer applies when use_regex is on.
const char* kByteLevelRegex = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

std::string type_of(const json& j) { return j.is_object() ? j.value("type", std::string("?")) : std::string("?"); }

// A literal string as a PCRE2 pattern.
std::string quote_regex(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (std::string_view("\\^$.|?*+()[]{}-/#").find(c) != std::string_view::npos) out += '\\';
    out += c;
  }
  return out;
}

// The split regexes of a pre-tokenizer, in order. Every step duo supports isolates its matches
// (they and the text between them become pieces), which is what Pretokenizer::split does.
void pre_tokenizer_regexes(const json& p, const std::string& where, std::vector<std::string>& out, bool& byte_level) {
  const std::string t = type_of(p);
  if (t == "Sequence") {
    DUO_CHECK(p.contains("pretokenizers") && p["pretokenizers"].is_array(), "{}: Sequence without pretokenizers",
              where);
    for (const auto& q : p["pretokenizers"]) pre_tokenizer_regexes(q, where, out, byte_level);
  } else if (t == "ByteLevel") {
    DUO_CHECK(!p.value("add_prefix_space", false),
              "{}: the ByteLevel pre-tokenizer's add_prefix_space is not supported", where);
    if (p.value("use_regex", true)) out.push_back(kByteLevelRegex);
    byte_level = true;
  } else if (t == "Split") {
    const std::string behavior = p.value("behavior", std::string("?"));
    DUO_CHECK(behavior == "Isolated" && !p.value("invert", false),
              "{}: Split pre-tokenizer with behavior '{}'{} is not supported (supported: Isolated)", where, behavior,
              p.value("invert", false) ? " and invert" : "");
    const json& pat = p.value("pattern", json::object());
    if (pat.contains("Regex") && pat["Regex"].is_string())
      out.push_back(pat["Regex"].get<std::string>());
    else if (pat.contains("String") && pat["String"].is_string())
      out.push_back(quote_regex(pat["String"].get<std::string>()));
    else
      fail("{}: Split pre-tokenizer without a Regex or String pattern", where);
  } else if (t == "Digits") {
    out.push_back(p.value("individual_digits", false) ? "\\p{N}" : "\\p{N}+");
  } else {
    fail("{}: pre-tokenizer '{}' is not supported (supported: ByteLevel, Split, Digits, Sequence of them)", where, t);
  }
}

// A token named in tokenizer_config.json: a string, an AddedToken object {"content": ...}, or null.
std::optional<std::string> token_text(const json& c, const char* key) {
  if (!c.contains(key)) return std::nullopt;
  const json& v = c[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return std::nullopt;
}

const char kSpm[] = "\xE2\x96\x81";  // U+2581, SentencePiece's space

// A Replace normalizer or decoder step of a literal string: {"pattern": {"String": from}, "content": to}.
bool is_replace(const json& r, const std::string& from, const std::string& to) {
  const json& pat = r.value("pattern", json::object());
  return type_of(r) == "Replace" && pat.contains("String") && pat["String"] == from && r.value("content", "") == to;
}

// The SentencePiece-style steps of a tokenizer.json whose BPE has byte_fallback, as the converted
// Llama-2 / Mistral / Gemma files declare them: spaces become U+2581 by a Replace normalizer
// (with a Prepend("▁") in a Sequence: every run of text gets one) or by a Metaspace
// pre-tokenizer (prefix always / first / never, split or not); the decoder undoes it
// (Replace("▁", " ") or Metaspace, ByteFallback, Fuse, and Strip(" ", 1, 0) for the prefix).
void spm_steps(const json& tj, const std::string& where, Vocab& v) {
  const json& norm = tj.value("normalizer", json());
  const json& pre = tj.value("pre_tokenizer", json());
  bool replaced = false;
  if (!norm.is_null()) {
    const json steps = type_of(norm) == "Sequence" ? norm.value("normalizers", json::array()) : json::array({norm});
    for (const auto& n : steps) {
      if (is_replace(n, " ", kSpm)) {
        replaced = true;
      } else if (type_of(n) == "Prepend" && n.value("prepend", "") == kSpm) {
        v.add_space_prefix = true;  // on every run of text between added tokens, as HF normalizes each
      } else {
        fail("{}: normalizer '{}' is not supported with byte_fallback (supported: Replace(\" \", \"\u2581\"), "
             "Prepend(\"\u2581\"), a Sequence of them)", where, type_of(n));
      }
    }
    DUO_CHECK(replaced, "{}: a normalizer without Replace(\" \", \"\u2581\") (a Prepend alone) is not supported", where);
  }
  if (!pre.is_null()) {
    DUO_CHECK(type_of(pre) == "Metaspace",
              "{}: pre-tokenizer '{}' is not supported with byte_fallback (supported: Metaspace, or none)", where,
              type_of(pre));
    DUO_CHECK(!replaced, "{}: a Replace normalizer and a Metaspace pre-tokenizer together are not supported", where);
    const std::string scheme = metaspace_scheme(pre, where);
    v.add_space_prefix = scheme != "never";
    v.prefix_first_only = scheme == "first";
    v.prefix_unless_space = true;  // Metaspace does not prepend to text that starts with a space
    v.split_on_space = pre.value("split", true);
    replaced = true;
  }
  DUO_CHECK(replaced, "{}: BPE with byte_fallback needs spaces replaced by U+2581 (a Replace normalizer or a "
            "Metaspace pre-tokenizer); this file has neither", where);

  const json& dec = tj.value("decoder", json());
  const json steps = type_of(dec) == "Sequence" ? dec.value("decoders", json::array()) : json::array({dec});
  bool space = false, bytes = false, fuse = false, strip = false;
  for (const auto& d : steps) {
    const std::string t = type_of(d);
    if (is_replace(d, kSpm, " ") && !bytes) {
      space = true;
    } else if (t == "Metaspace" && !bytes) {
      space = true;
      strip = metaspace_scheme(d, where) != "never";  // it strips the first token's leading space
    } else if (t == "ByteFallback" && space && !bytes) {
      bytes = true;
    } else if (t == "Fuse" && bytes) {
      fuse = true;
    } else if (t == "Strip" && fuse && d.value("content", "") == " " && d.value("stop", 0) == 0 &&
               d.value("start", 0) <= 1) {
      strip = strip || d.value("start", 0) == 1;
    } else {
      fail("{}: decoder step '{}' is not supported with byte_fallback (supported: Replace(\"\u2581\", \" \") or "
           "Metaspace, ByteFallback, Fuse, Strip(\" \", 1, 0), in that order)", where, t);
    }
  }
  DUO_CHECK(space && bytes && fuse, "{}: a decoder without {} is not supported with byte_fallback", where,
            !space ? "Replace(\"\u2581\", \" \")" : !bytes ? "ByteFallback" : "Fuse");
  DUO_CHECK(!strip || v.add_space_prefix, "{}: the decoder strips a leading space that encoding never adds", where);
  v.decode_keeps_space = !strip;
}

bool file_exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

// The template's special token ids before and after the sequence ($A) of a TemplateProcessing
// post-processor (found also inside a Sequence of processors).
void template_ends(const json& p, std::vector<std::string>& before, std::vector<std::string>& after) {
  const std::string t = type_of(p);
  if (t == "Sequence" && p.contains("processors") && p["processors"].is_array()) {
    for (const auto& q : p["processors"]) template_ends(q, before, after);
  } else if (t == "TemplateProcessing" && p.contains("single") && p["single"].is_array()) {
    bool seen_seq = false;
    for (const auto& item : p["single"]) {
      if (item.contains("Sequence")) {
        seen_seq = true;
      } else if (item.contains("SpecialToken") && item["SpecialToken"].contains("id")) {
        (seen_seq ? after : before).push_back(item["SpecialToken"]["id"].get<std::string>());
      }
    }
  }
}

// A BPE model's tokens and steps (byte-level, or SentencePiece-style with byte_fallback); its
// merges are read by read_merges once the vocabulary is complete.
void read_bpe(const json& tj, const std::string& where, Vocab& v, HfTokenMap& by_id) {
  const json& m = tj["model"];
  const bool spm = m.value("byte_fallback", false);  // SentencePiece-style: U+2581 spaces, <0xXX> tokens
  for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"})
    DUO_CHECK(!m.contains(k) || m[k].is_null() || m[k] == "", "{}: BPE's {} is not supported", where, k);
  DUO_CHECK(!m.contains("dropout") || m["dropout"].is_null() || m["dropout"] == 0.0,
            "{}: BPE dropout (random merges) is not supported", where);

  if (spm) {
    v.model = Vocab::Model::SPM;
    v.spm_merges = true;
    v.fuse_unk = m.value("fuse_unk", false);
    spm_steps(tj, where, v);
  }
  // The normalizer: NFC is accepted without being applied (as llama.cpp does for the same
  // models): text already in NFC, nearly all text, tokenizes the same; others are refused.
  const json& norm = tj.value("normalizer", json());
  if (!spm && !norm.is_null()) {
    const std::string nt = type_of(norm);
    DUO_CHECK(nt == "NFC" || (nt == "Sequence" && norm.value("normalizers", json::array()).empty()),
              "{}: normalizer '{}' is not supported (supported: none, NFC)", where, nt);
  }
  if (!spm) {
    const json& decoder = tj.value("decoder", json());
    DUO_CHECK(decoder.is_null() || type_of(decoder) == "ByteLevel",
              "{}: decoder '{}' is not supported (supported: ByteLevel)", where, type_of(decoder));
    v.model = Vocab::Model::BPE;
    v.pre = "tokenizer.json";
    bool byte_level = false;
    DUO_CHECK(tj.contains("pre_tokenizer") && !tj["pre_tokenizer"].is_null(),
              "{}: no pre_tokenizer (byte-level BPE needs a ByteLevel pre-tokenizer)", where);
    pre_tokenizer_regexes(tj["pre_tokenizer"], where, v.pre_regexes, byte_level);
    DUO_CHECK(byte_level, "{}: the pre-tokenizer has no ByteLevel step (byte-level BPE needs one; or byte_fallback "
              "for SentencePiece-style BPE)", where);
    // Pretokenizer falls back to its named set when given no regex: a ByteLevel without its regex
    // and nothing else splits nowhere, which one regex matching everything says.
    if (v.pre_regexes.empty()) v.pre_regexes.push_back("(?s:.+)");
  }
  v.ignore_merges = m.value("ignore_merges", false);

  // The model's tokens, by id.
  DUO_CHECK(m.contains("vocab") && m["vocab"].is_object(), "{}: the BPE model has no vocab object", where);
  for (auto it = m["vocab"].begin(); it != m["vocab"].end(); ++it) {
    DUO_CHECK(it.value().is_number_integer(), "{}: token '{}' has an id that is not an integer", where, it.key());
    // SentencePiece-style: <0xXX> tokens are the byte fallback's, decoded as their byte.
    const std::string& t = it.key();
    const bool byte = spm && t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' &&
                      std::isxdigit((unsigned char)t[3]) && std::isxdigit((unsigned char)t[4]);
    by_id[it.value().get<int64_t>()] = {t, byte ? TokenType::Byte : TokenType::Normal};
  }
}

void read_merges(const json& m, const std::string& where, Vocab& v) {
  DUO_CHECK(m.contains("merges") && m["merges"].is_array(), "{}: the BPE model has no merges array", where);
  v.merges.reserve(m["merges"].size());
  for (const auto& mg : m["merges"]) {
    if (mg.is_string()) {
      v.merges.push_back(mg.get<std::string>());
    } else {
      DUO_CHECK(mg.is_array() && mg.size() == 2 && mg[0].is_string() && mg[1].is_string(),
                "{}: merge {} is neither \"left right\" nor [left, right]", where, v.merges.size());
      v.merges.push_back(mg[0].get<std::string>() + " " + mg[1].get<std::string>());
    }
  }
  if (v.spm_merges) {  // the merged symbols are looked up as tokens (HF refuses such a file too)
    std::unordered_set<std::string> known(v.tokens.begin(), v.tokens.end());
    for (const std::string& mg : v.merges) {
      const size_t sp = mg.find(' ');
      DUO_CHECK(sp != std::string::npos && known.count(mg.substr(0, sp) + mg.substr(sp + 1)),
                "{}: merge '{}' does not give a token of the vocabulary", where, mg);
    }
  }
}

}  // namespace

Vocab load_hf_vocab(const std::string& dir, int32_t n_vocab) {
  const std::string where = dir + "/tokenizer.json";
  const json tj = read_json_file(where);
  DUO_CHECK(tj.is_object() && tj.contains("model") && tj["model"].is_object(), "{}: no \"model\" object", where);
  const json& m = tj["model"];
  const std::string mt = type_of(m);
  Vocab v;
  HfTokenMap by_id;  // the tokens, by id
  if (mt == "Unigram") {
    read_unigram(tj, where, v, by_id);
  } else if (mt == "?" && m.contains("merges")) {  // old files omit the type of a BPE model
  } else if (mt != "BPE") {
    fail("{}: tokenizer model '{}' is not supported (supported: BPE, byte-level or with byte_fallback; Unigram)",
         where, mt);
  }
  if (!v.unigram) read_bpe(tj, where, v, by_id);
  for (const auto& a : tj.value("added_tokens", json::array())) {
    DUO_CHECK(a.is_object() && a.contains("id") && a["id"].is_number_integer() && a.contains("content") &&
                  a["content"].is_string(),
              "{}: an added token without an integer id and a content string", where);
    const std::string content = a["content"].get<std::string>();
    for (const char* k : {"lstrip", "rstrip", "single_word"})
      DUO_CHECK(!a.value(k, false), "{}: added token '{}' uses {}, which is not supported", where, content, k);
    // HF matches a normalized added token in the normalized text (after the U+2581 replacement);
    // duo matches added tokens in the raw text, the same only without a normalizer.
    DUO_CHECK(v.model != Vocab::Model::SPM || tj.value("normalizer", json()).is_null() ||
                  !a.value("normalized", true),
              "{}: added token '{}' is normalized (matched after the normalizer), which is not supported", where,
              content);
    by_id[a["id"].get<int64_t>()] = {content, a.value("special", false) ? TokenType::Control : TokenType::UserDefined};
  }
  DUO_CHECK(!by_id.empty(), "{}: the vocabulary is empty", where);
  DUO_CHECK(by_id.begin()->first >= 0, "{}: token id {} is negative", where, by_id.begin()->first);
  const int64_t n_tok = by_id.rbegin()->first + 1;
  DUO_CHECK(n_tok <= (1 << 24), "{}: token id {} is beyond any vocabulary", where, n_tok - 1);
  const int64_t n = n_vocab > 0 ? n_vocab : n_tok;
  DUO_CHECK(n_tok <= n, "{}: the tokenizer has token id {}, the model only {} embedding rows", where, n_tok - 1, n);
  v.tokens.resize((size_t)n);
  v.types.assign((size_t)n, TokenType::Unused);
  for (int64_t i = 0; i < n; ++i) v.tokens[i] = "[PAD" + std::to_string(i) + "]";
  for (const auto& [id, tt] : by_id) v.tokens[id] = tt.first, v.types[id] = tt.second;

  if (!v.unigram) read_merges(m, where, v);

  auto id_of = [&](const std::string& text, const char* what) -> int32_t {
    for (size_t i = 0; i < v.tokens.size(); ++i)
      if (v.tokens[i] == text && v.types[i] != TokenType::Unused) return (int32_t)i;
    fail("{}: {} '{}' is not a token of {}", dir, what, text, where);
  };
  if (auto unk = m.value("unk_token", json()); !v.unigram && unk.is_string()) v.unk = id_of(unk.get<std::string>(), "unk_token");

  // BOS added by the post-processor's template, unless tokenizer_config.json says otherwise
  // (transformers' Llama tokenizers rebuild the template from add_bos_token).
  std::vector<std::string> before, after;
  template_ends(tj.value("post_processor", json()), before, after);
  if (!before.empty()) v.bos = id_of(before.front(), "the post-processor's BOS"), v.add_bos = true;
  if (!after.empty()) v.eos = id_of(after.back(), "the post-processor's EOS"), v.add_eos = true;
  const std::string cfg_path = dir + "/tokenizer_config.json";
  if (file_exists(cfg_path)) {
    const json tc = read_json_file(cfg_path);
    if (auto t = token_text(tc, "bos_token")) v.bos = id_of(*t, "bos_token");
    if (auto t = token_text(tc, "eos_token")) v.eos = id_of(*t, "eos_token");
    if (auto t = token_text(tc, "pad_token")) v.pad = id_of(*t, "pad_token");
    if (tc.contains("add_bos_token") && tc["add_bos_token"].is_boolean()) v.add_bos = tc["add_bos_token"].get<bool>();
    if (tc.contains("add_eos_token") && tc["add_eos_token"].is_boolean()) v.add_eos = tc["add_eos_token"].get<bool>();
  }
  const std::string gen_path = dir + "/generation_config.json";
  if (file_exists(gen_path)) {
    const json g = read_json_file(gen_path);
    json e = g.value("eos_token_id", json());
    if (e.is_number_integer()) e = json::array({e});
    if (e.is_array())
      for (const auto& x : e) {
        DUO_CHECK(x.is_number_integer() && x.get<int64_t>() >= 0 && x.get<int64_t>() < n,
                  "{}: eos_token_id {} is outside the vocabulary", gen_path, x.dump());
        v.eog_ids.push_back(x.get<int32_t>());
      }
    if (v.eos < 0 && !v.eog_ids.empty()) v.eos = v.eog_ids.front();
  }
  return v;
}

std::unique_ptr<Tokenizer> tokenizer_from_hf(const std::string& dir, int32_t n_vocab) {
  return std::make_unique<Tokenizer>(load_hf_vocab(dir, n_vocab));
}

}  // namespace duo
