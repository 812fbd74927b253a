#include "tokenizer/pretokenize.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <cstdint>

#include "core/error.h"

namespace duo {

namespace {

// GPT-2's pattern (also the ByteLevel pre-tokenizer's default).
const char* kGpt2 = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
// Llama-3: case-insensitive contractions, numbers in groups of up to three digits.
const char* kLlama3 =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"
    "\\s+(?!\\S)|\\s+";
// Qwen2: as Llama-3 but single digits.
const char* kQwen2 =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"
    "\\s+(?!\\S)|\\s+";
// SmolLM: every digit on its own, then GPT-2's pattern.
const char* kDigit = "\\p{N}";

std::vector<const char*> patterns_for(const std::string& name) {
  if (name == "gpt2" || name == "default") return {kGpt2};
  if (name == "llama-bpe" || name == "llama3") return {kLlama3};
  if (name == "qwen2") return {kQwen2};
  if (name == "smollm") return {kDigit, kGpt2};
  fail("unsupported pre-tokenizer '{}'", name);
}

}  // namespace

// Length of the valid UTF-8 character at s[i] (no overlongs, no surrogates, <= U+10FFFF),
// or 0 when the bytes there are not one.
size_t utf8_char_len(std::string_view s, size_t i) {
  const unsigned char c = (unsigned char)s[i];
  if (c < 0x80) return 1;
  int n;
  uint32_t cp;
  if ((c & 0xE0) == 0xC0) n = 1, cp = c & 0x1F;
  else if ((c & 0xF0) == 0xE0) n = 2, cp = c & 0x0F;
  else if ((c & 0xF8) == 0xF0) n = 3, cp = c & 0x07;
  else return 0;
  if (i + n >= s.size()) return 0;
  for (int k = 1; k <= n; ++k) {
    const unsigned char cc = (unsigned char)s[i + k];
    if ((cc & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (cc & 0x3F);
  }
  if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10FFFF ||
      (cp >= 0xD800 && cp <= 0xDFFF))
    return 0;
  return n + 1;
}

struct Pretokenizer::Regex {
  pcre2_code* code = nullptr;
  ~Regex() {
    if (code) pcre2_code_free(code);
  }
};

Pretokenizer::Pretokenizer(const std::string& name) {
  for (const char* p : patterns_for(name)) add(p);
}

Pretokenizer::Pretokenizer(const std::vector<std::string>& regexes) {
  for (const auto& p : regexes) add(p.c_str());
}

void Pretokenizer::add(const char* p) {
  int err = 0;
  PCRE2_SIZE off = 0;
  auto* r = new Regex();
  r->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(p), PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &err, &off,
                          nullptr);
  if (!r->code) {
    delete r;
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    fail("pre-tokenizer regex failed to compile at {}: {}", off, reinterpret_cast<const char*>(msg));
  }
  pcre2_jit_compile(r->code, PCRE2_JIT_COMPLETE);  // optional speed-up; falls back silently
  regexes_.push_back(r);
}

Pretokenizer::~Pretokenizer() {
  for (auto* r : regexes_) delete r;
}

std::vector<std::string> Pretokenizer::split(std::string_view text) const {
  // PCRE2 in UTF mode must not see invalid UTF-8: the regexes run on the maximal valid runs,
  // and every invalid byte is a piece of its own (byte-level BPE encodes it losslessly).
  std::vector<std::string> pieces;
  std::vector<bool> invalid;
  for (size_t i = 0, run = 0; i <= text.size();) {
    const size_t n = i < text.size() ? utf8_char_len(text, i) : 0;
    if (n > 0) {
      i += n;
      continue;
    }
    if (i > run) pieces.emplace_back(text.substr(run, i - run)), invalid.push_back(false);
    if (i == text.size()) break;
    pieces.emplace_back(text.substr(i, 1)), invalid.push_back(true);
    run = ++i;
  }
  for (const Regex* re : regexes_) {
    std::vector<std::string> next;
    std::vector<bool> next_invalid;
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(re->code, nullptr);
    for (size_t pi = 0; pi < pieces.size(); ++pi) {
      const std::string& s = pieces[pi];
      if (invalid[pi]) {
        next.push_back(s);
        next_invalid.resize(next.size(), true);
        continue;
      }
      const auto* subject = reinterpret_cast<PCRE2_SPTR>(s.data());
      size_t pos = 0, last = 0;
      while (pos <= s.size()) {
        const int rc = pcre2_match(re->code, subject, s.size(), pos, PCRE2_NO_UTF_CHECK, md, nullptr);
        if (rc < 0) break;
        const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
        const size_t b = ov[0], e = ov[1];
        if (b > last) next.emplace_back(s.substr(last, b - last));
        if (e > b) next.emplace_back(s.substr(b, e - b));
        last = e;
        if (e == b) {
          // Empty match: step over one UTF-8 character.
          if (b >= s.size()) break;
          size_t step = 1;
          while (b + step < s.size() && ((unsigned char)s[b + step] & 0xC0) == 0x80) ++step;
          pos = b + step;
        } else {
          pos = e;
        }
      }
      if (last < s.size()) next.emplace_back(s.substr(last));
      next_invalid.resize(next.size(), false);
    }
    pcre2_match_data_free(md);
    pieces.swap(next);
    invalid.swap(next_invalid);
  }
  return pieces;
}

}  // namespace duo
