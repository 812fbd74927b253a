#include "tokenizer/normalize.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "core/error.h"
#include "tokenizer/precompiled.h"
#include "tokenizer/pretokenize.h"

namespace duo {

namespace {

// Rust's char::is_whitespace (Unicode White_Space), which HF's Strip normalizer trims; returns
// the length of the whitespace character at s[i], or 0.
size_t whitespace_len(std::string_view s, size_t i) {
  const size_t n = utf8_char_len(s, i);
  if (n == 0) return 0;  // an invalid byte is not whitespace
  uint32_t cp = (unsigned char)s[i];
  if (n > 1) {
    cp &= 0x7F >> n;
    for (size_t k = 1; k < n; ++k) cp = (cp << 6) | ((unsigned char)s[i + k] & 0x3F);
  }
  const bool ws = (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
                  (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
                  cp == 0x3000;
  return ws ? n : 0;
}

// The start of the UTF-8 character that ends at s[end - 1] (an invalid byte is one of its own).
size_t char_start_before(std::string_view s, size_t end) {
  for (size_t back = 1; back <= 4 && back <= end; ++back)
    if (utf8_char_len(s, end - back) == back) return end - back;
  return end - 1;
}

// A Replace of text[0, len): HF aligns what replaces a match with the match's last character, so
// the result still starts at offset 0 only when the match is that one character and it is
// replaced by something.
bool replacement_keeps_start(std::string_view text, size_t len, const std::string& content) {
  return !content.empty() && utf8_char_len(text, 0) == len;
}

}  // namespace

struct Normalizer::Step {
  NormStep def;
  pcre2_code* code = nullptr;
  std::unique_ptr<PrecompiledMap> table;
  ~Step() {
    if (code) pcre2_code_free(code);
  }
};

Normalizer::Normalizer(const std::vector<NormStep>& steps) {
  for (const NormStep& d : steps) {
    auto s = std::make_unique<Step>();
    s->def = d;
    if (d.kind == NormStep::Kind::Replace && d.regex) {
      int err = 0;
      PCRE2_SIZE off = 0;
      s->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(d.pattern.data()), d.pattern.size(),
                              PCRE2_UTF | PCRE2_UCP, &err, &off, nullptr);
      if (!s->code) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        fail("normalizer Replace regex '{}' failed to compile at {}: {}", d.pattern, off,
             reinterpret_cast<const char*>(msg));
      }
    }
    if (d.kind == NormStep::Kind::Precompiled) s->table = std::make_unique<PrecompiledMap>(d.charsmap);
    DUO_CHECK(d.kind != NormStep::Kind::Replace || d.regex || !d.pattern.empty(),
              "normalizer Replace with an empty pattern");
    strips_ = strips_ || d.kind == NormStep::Kind::Strip;
    shrinks_ = shrinks_ || d.kind == NormStep::Kind::Precompiled ||
               (d.kind == NormStep::Kind::Replace && (d.regex || d.content.size() < d.pattern.size()));
    steps_.push_back(std::move(s));
  }
}

Normalizer::~Normalizer() = default;

std::string Normalizer::apply(std::string_view input, bool* start_kept) const {
  std::string text(input);
  bool kept = true;
  for (const auto& st : steps_) {
    const NormStep& d = st->def;
    if (d.kind == NormStep::Kind::Prepend) {
      if (!text.empty()) text.insert(0, d.pattern);
    } else if (d.kind == NormStep::Kind::Precompiled) {
      // HF records no removal for a first character that maps to nothing: the result's first
      // character keeps offset 0 whatever the table does.
      text = st->table->apply(text);
    } else if (d.kind == NormStep::Kind::Strip) {
      size_t b = 0, e = text.size();
      if (d.left) {
        for (size_t n; b < e && (n = whitespace_len(text, b)) > 0;) b += n;
      }
      if (d.right)
        while (e > b) {
          const size_t c = char_start_before(text, e);
          if (c < b || whitespace_len(text, c) != e - c) break;
          e = c;
        }
      kept = kept && b == 0;
      text = text.substr(b, e - b);
    } else if (!d.regex) {  // a literal: every match, left to right, not overlapping
      std::string out;
      size_t last = 0;
      for (size_t at = text.find(d.pattern); at != std::string::npos; at = text.find(d.pattern, last)) {
        kept = kept && !(at == 0 && !replacement_keeps_start(text, d.pattern.size(), d.content));
        out.append(text, last, at - last);
        out += d.content;
        last = at + d.pattern.size();
      }
      out.append(text, last, std::string::npos);
      text.swap(out);
    } else {
      // PCRE2 in UTF mode must not see invalid UTF-8: the regex runs on the valid runs between
      // invalid bytes, which stay as they are.
      std::string out;
      pcre2_match_data* md = pcre2_match_data_create_from_pattern(st->code, nullptr);
      size_t i = 0;
      while (i < text.size()) {
        size_t e = i;
        while (e < text.size() && utf8_char_len(text, e) > 0) e += utf8_char_len(text, e);
        const auto* run = reinterpret_cast<PCRE2_SPTR>(text.data() + i);
        const size_t n = e - i;
        size_t pos = 0, last = 0;
        while (pos <= n) {
          if (pcre2_match(st->code, run, n, pos, PCRE2_NO_UTF_CHECK, md, nullptr) < 0) break;
          const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
          kept = kept && !(i + ov[0] == 0 && ov[1] > 0 && !replacement_keeps_start(text, ov[1], d.content));
          out.append(text, i + last, ov[0] - last);
          out += d.content;
          last = ov[1];
          if (ov[1] > ov[0]) {
            pos = ov[1];
          } else {  // an empty match: the next search starts one character on
            if (ov[0] >= n) break;
            pos = ov[0] + std::max<size_t>(1, utf8_char_len(text, i + ov[0]));
            out.append(text, i + last, pos - last);
            last = pos;
          }
        }
        out.append(text, i + last, n - last);
        if (e < text.size()) out += text[e++];  // the invalid byte
        i = e;
      }
      pcre2_match_data_free(md);
      text.swap(out);
    }
  }
  if (start_kept) *start_kept = kept;
  return text;
}

}  // namespace duo
