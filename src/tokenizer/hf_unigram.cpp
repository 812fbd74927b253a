#include "tokenizer/hf_unigram.h"

#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdlib>

#include "core/error.h"
#include "tokenizer/normalize.h"
#include "tokenizer/precompiled.h"

namespace duo {

namespace {

using json = nlohmann::json;

const char kSpm[] = "\xE2\x96\x81";  // U+2581, SentencePiece's space

std::string type_of(const json& j) { return j.is_object() ? j.value("type", std::string("?")) : std::string("?"); }

json steps_of(const json& j, const char* key) {
  return type_of(j) == "Sequence" ? j.value(key, json::array()) : json::array({j});
}

// Replace's pattern: {"String": s} or {"Regex": r}.
void replace_pattern(const json& r, const std::string& where, const char* what, std::string& pattern, bool& regex) {
  const json& pat = r.value("pattern", json::object());
  DUO_CHECK(r.contains("content") && r["content"].is_string(), "{}: {} Replace without a content string", where, what);
  if (pat.contains("String") && pat["String"].is_string()) {
    pattern = pat["String"].get<std::string>(), regex = false;
    DUO_CHECK(!pattern.empty(), "{}: {} Replace with an empty pattern", where, what);
  } else if (pat.contains("Regex") && pat["Regex"].is_string()) {
    pattern = pat["Regex"].get<std::string>(), regex = true;
  } else {
    fail("{}: {} Replace without a String or Regex pattern", where, what);
  }
}

void read_normalizer(const json& norm, const std::string& where, Vocab& v) {
  if (norm.is_null()) return;
  for (const json& n : steps_of(norm, "normalizers")) {
    const std::string t = type_of(n);
    NormStep s;
    if (t == "Replace") {
      s.kind = NormStep::Kind::Replace;
      replace_pattern(n, where, "normalizer", s.pattern, s.regex);
      s.content = n["content"].get<std::string>();
    } else if (t == "Strip") {
      s.kind = NormStep::Kind::Strip;
      s.left = n.value("strip_left", false), s.right = n.value("strip_right", false);
    } else if (t == "Prepend") {
      s.kind = NormStep::Kind::Prepend;
      s.pattern = n.value("prepend", std::string());
    } else if (t == "Precompiled") {
      const json& map = n.value("precompiled_charsmap", json());
      if (map.is_null() || map == "") continue;  // without a table it changes nothing
      DUO_CHECK(map.is_string(), "{}: Precompiled's precompiled_charsmap is not a base64 string", where);
      s.kind = NormStep::Kind::Precompiled;
      try {
        s.charsmap = base64_decode(map.get<std::string>());
      } catch (const Error& e) {
        fail("{}: Precompiled's precompiled_charsmap: {}", where, e.what());
      }
    } else {
      fail("{}: normalizer '{}' is not supported for Unigram (supported: Replace, Strip, Prepend, Precompiled, "
           "a Sequence of them)", where, t);
    }
    v.normalizer.push_back(std::move(s));
  }
}

void read_pre_tokenizer(const json& pre, const std::string& where, Vocab& v) {
  if (pre.is_null()) return;  // the normalized run is one piece
  const json steps = steps_of(pre, "pretokenizers");
  DUO_CHECK(steps.size() == 1 && type_of(steps[0]) == "Metaspace",
            "{}: pre-tokenizer '{}' is not supported for Unigram (supported: Metaspace, or none)", where,
            steps.size() == 1 ? type_of(steps[0]) : type_of(pre) + " of " + std::to_string(steps.size()));
  const std::string scheme = metaspace_scheme(steps[0], where);
  v.metaspace = true;
  v.add_space_prefix = scheme != "never";
  v.prefix_first_only = scheme == "first";
  v.prefix_unless_space = true;  // Metaspace does not prepend to text that starts with U+2581
  v.split_on_space = steps[0].value("split", true);
}

void read_decoder(const json& dec, const std::string& where, Vocab& v) {
  DUO_CHECK(!dec.is_null(), "{}: a Unigram model without a decoder (HF joins its tokens with spaces) is not "
            "supported", where);
  bool byte_fallback = false;
  for (const json& d : steps_of(dec, "decoders")) {
    const std::string t = type_of(d);
    DecodeStep s;
    if (t == "Metaspace") {
      s.kind = DecodeStep::Kind::Metaspace;
      s.drop_first = metaspace_scheme(d, where) != "never";
    } else if (t == "Replace") {
      s.kind = DecodeStep::Kind::Replace;
      bool regex = false;
      replace_pattern(d, where, "decoder", s.from, regex);
      DUO_CHECK(!regex, "{}: a decoder Replace with a Regex pattern is not supported", where);
      s.to = d["content"].get<std::string>();
    } else if (t == "ByteFallback") {
      s.kind = DecodeStep::Kind::ByteFallback;
      byte_fallback = true;
    } else if (t == "Fuse") {
      s.kind = DecodeStep::Kind::Fuse;
    } else if (t == "Strip") {
      s.kind = DecodeStep::Kind::Strip;
      s.from = d.value("content", std::string(" "));
      DUO_CHECK(d.value("start", 0) >= 0 && d.value("stop", 0) >= 0, "{}: a decoder Strip with a negative count",
                where);
      s.start = d.value("start", 0), s.stop = d.value("stop", 0);
    } else {
      fail("{}: decoder step '{}' is not supported for Unigram (supported: Metaspace, Replace, ByteFallback, Fuse, "
           "Strip)", where, t);
    }
    v.decoder.push_back(std::move(s));
  }
  // duo's pieces (token_to_piece) read <0xXX> tokens as bytes; HF would print their text.
  DUO_CHECK(!v.byte_fallback || byte_fallback, "{}: a Unigram model with byte_fallback whose decoder has no "
            "ByteFallback step is not supported", where);
}

}  // namespace

std::string metaspace_scheme(const json& p, const std::string& where) {
  DUO_CHECK(p.value("replacement", std::string(kSpm)) == kSpm,
            "{}: Metaspace with a replacement other than U+2581 is not supported", where);
  const std::string scheme =
      p.contains("prepend_scheme") ? p.value("prepend_scheme", std::string("?"))
                                   : (p.value("add_prefix_space", true) ? std::string("always") : std::string("never"));
  DUO_CHECK(scheme == "always" || scheme == "first" || scheme == "never",
            "{}: Metaspace prepend_scheme '{}' is not supported (supported: always, first, never)", where, scheme);
  return scheme;
}

// serde_json (without float_roundtrip) reads the digits as an integer, converts that to f64 and
// multiplies or divides by a power of ten: two roundings. The file's text of the number is not
// kept by nlohmann; it is the shortest text that reads back as v, which is what serde_json and
// Python write.
double hf_json_double(double v) {
  if (v == 0 || !std::isfinite(v)) return v;
  char buf[64];
  const auto res = std::to_chars(buf, buf + sizeof buf, v);  // shortest round-trip form
  const std::string_view t(buf, (size_t)(res.ptr - buf));
  bool negative = false, overflow = false, in_fraction = false;
  uint64_t sig = 0;
  int exp10 = 0;
  size_t i = 0;
  if (i < t.size() && t[i] == '-') negative = true, ++i;
  for (; i < t.size() && t[i] != 'e'; ++i) {
    if (t[i] == '.') {
      in_fraction = true;
      continue;
    }
    const uint64_t d = (uint64_t)(t[i] - '0');
    if (!overflow && sig > (UINT64_MAX - d) / 10) overflow = true;
    if (overflow) {  // serde_json drops further digits (an integer part's count in the exponent)
      if (!in_fraction) ++exp10;
      continue;
    }
    sig = sig * 10 + d;
    if (in_fraction) --exp10;
  }
  if (i < t.size()) exp10 += std::atoi(std::string(t.substr(i + 1)).c_str());
  // serde_json's table holds the correctly rounded 1e0 to 1e308; strtod gives the same values.
  auto pow10 = [](int k) { return std::strtod(("1e" + std::to_string(k)).c_str(), nullptr); };
  double f = (double)sig;
  while (exp10 < -308 && f != 0) f /= pow10(308), exp10 += 308;
  if (exp10 >= 0)
    f *= pow10(exp10);
  else
    f /= pow10(-exp10);
  return negative ? -f : f;
}

void read_unigram(const json& tj, const std::string& where, Vocab& v, HfTokenMap& by_id) {
  const json& m = tj["model"];
  v.model = Vocab::Model::SPM;
  v.unigram = true;
  v.byte_fallback = m.value("byte_fallback", false);
  DUO_CHECK(m.contains("vocab") && m["vocab"].is_array() && !m["vocab"].empty(),
            "{}: the Unigram model has no vocab list", where);
  for (const json& e : m["vocab"]) {
    DUO_CHECK(e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_number(),
              "{}: Unigram vocab entry {} is not [piece, score]", where, v.unigram_scores.size());
    const std::string t = e[0].get<std::string>();
    // With byte_fallback, <0xXX> pieces are the byte tokens, decoded as their byte.
    const bool byte = v.byte_fallback && t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' &&
                      std::isxdigit((unsigned char)t[3]) && std::isxdigit((unsigned char)t[4]);
    by_id[(int64_t)v.unigram_scores.size()] = {t, byte ? TokenType::Byte : TokenType::Normal};
    v.unigram_scores.push_back(hf_json_double(e[1].get<double>()));
  }
  const json& unk = m.value("unk_id", json());
  if (!unk.is_null()) {
    DUO_CHECK(unk.is_number_integer() && unk.get<int64_t>() >= 0 &&
                  unk.get<int64_t>() < (int64_t)v.unigram_scores.size(),
              "{}: the Unigram model's unk_id {} is not one of its {} pieces", where, unk.dump(),
              v.unigram_scores.size());
    v.unk = unk.get<int32_t>();
    by_id[v.unk].second = TokenType::Unknown;  // still a piece text may spell, as in HF
  }
  read_normalizer(tj.value("normalizer", json()), where, v);
  try {
    Normalizer check(v.normalizer);  // its regexes compile
  } catch (const Error& e) {
    fail("{}: {}", where, e.what());
  }
  read_pre_tokenizer(tj.value("pre_tokenizer", json()), where, v);
  read_decoder(tj.value("decoder", json()), where, v);
}

}  // namespace duo
