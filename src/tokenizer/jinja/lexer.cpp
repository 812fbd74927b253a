#include "tokenizer/jinja/lexer.h"

#include <cctype>
#include <cstring>

#include "core/error.h"

namespace duo::jinja {

namespace {

// Python's \s for the ASCII range (what jinja2's whitespace regexes match in practice).
bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += (char)cp;
  } else if (cp < 0x800) {
    out += (char)(0xC0 | (cp >> 6));
    out += (char)(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += (char)(0xE0 | (cp >> 12));
    out += (char)(0x80 | ((cp >> 6) & 0x3F));
    out += (char)(0x80 | (cp & 0x3F));
  } else {
    out += (char)(0xF0 | (cp >> 18));
    out += (char)(0x80 | ((cp >> 12) & 0x3F));
    out += (char)(0x80 | ((cp >> 6) & 0x3F));
    out += (char)(0x80 | (cp & 0x3F));
  }
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// A string literal's body with Python's escapes resolved (jinja2 decodes literals with
// "unicode-escape"); an unknown escape keeps its backslash, as Python does.
std::string unescape(const std::string& body) {
  std::string out;
  for (size_t i = 0; i < body.size(); ++i) {
    if (body[i] != '\\' || i + 1 == body.size()) {
      out += body[i];
      continue;
    }
    const char c = body[++i];
    switch (c) {
      case 'n': out += '\n'; break;
      case 't': out += '\t'; break;
      case 'r': out += '\r'; break;
      case 'b': out += '\b'; break;
      case 'f': out += '\f'; break;
      case 'v': out += '\v'; break;
      case 'a': out += '\a'; break;
      case '\\': out += '\\'; break;
      case '\'': out += '\''; break;
      case '"': out += '"'; break;
      case '\n': break;  // line continuation
      case 'x':
      case 'u':
      case 'U': {
        const size_t n = c == 'x' ? 2 : c == 'u' ? 4 : 8;
        uint32_t cp = 0;
        bool ok = true;
        for (size_t k = 1; ok && k <= n; ++k) {
          const int h = i + k < body.size() ? hex_value(body[i + k]) : -1;
          if (h < 0) ok = false;
          cp = cp * 16 + (uint32_t)(h < 0 ? 0 : h);
        }
        if (!ok || cp > 0x10FFFF) fail("malformed \\{} escape in a string literal", c);
        append_utf8(out, cp);
        i += n;
        break;
      }
      default:
        if (c >= '0' && c <= '7') {
          uint32_t cp = 0;
          size_t k = 0;
          for (; k < 3 && i + k < body.size() && body[i + k] >= '0' && body[i + k] <= '7'; ++k)
            cp = cp * 8 + (uint32_t)(body[i + k] - '0');
          append_utf8(out, cp);
          i += k - 1;
        } else {
          out += '\\';
          out += c;
        }
    }
  }
  return out;
}

class Lexer {
 public:
  explicit Lexer(const std::string& src) : src_(src) {}

  std::vector<Token> run() {
    size_t pos = 0;
    bool line_starting = true;  // the text that follows starts a line (jinja2's lstrip rule)
    bool strip_next = false;    // the previous tag ended with "-": drop leading whitespace
    while (pos <= src_.size()) {
      size_t open = find_open(pos);
      std::string text = src_.substr(pos, (open == std::string::npos ? src_.size() : open) - pos);
      if (strip_next) {
        size_t k = 0;
        while (k < text.size() && is_space(text[k])) ++k;
        text.erase(0, k);
      }
      if (open == std::string::npos) {
        emit_text(text, pos);
        break;
      }
      const char kind = src_[open + 1];  // '{', '%' or '#'
      const char mod = open + 2 < src_.size() ? src_[open + 2] : 0;
      if (mod == '-') {
        while (!text.empty() && is_space(text.back())) text.pop_back();
      } else if (kind != '{' && mod != '+') {
        const size_t nl = text.rfind('\n');
        const size_t l_pos = nl == std::string::npos ? 0 : nl + 1;
        if (l_pos > 0 || line_starting) {
          bool ws = l_pos < text.size();
          for (size_t k = l_pos; k < text.size() && ws; ++k) ws = is_space(text[k]);
          if (ws) text.resize(l_pos);
        }
      }
      emit_text(text, pos);
      size_t p = open + 2 + ((mod == '-' || mod == '+') ? 1 : 0);
      if (kind == '#') {
        const size_t end = src_.find("#}", p);
        DUO_CHECK(end != std::string::npos, "chat template: unclosed comment at offset {}", open);
        const char before = end > p ? src_[end - 1] : 0;
        pos = finish_tag(end + 2, before, true, line_starting, strip_next);
        continue;
      }
      const bool block = kind == '%';
      out_.push_back({block ? Token::Kind::BlockBegin : Token::Kind::VarBegin, "", 0, 0, open});
      pos = lex_tag(p, block, open, line_starting, strip_next);
    }
    out_.push_back({Token::Kind::End, "", 0, 0, src_.size()});
    return std::move(out_);
  }

 private:
  size_t find_open(size_t from) const {
    for (size_t at = src_.find('{', from); at != std::string::npos; at = src_.find('{', at + 1))
      if (at + 1 < src_.size() && (src_[at + 1] == '{' || src_[at + 1] == '%' || src_[at + 1] == '#')) return at;
    return std::string::npos;
  }

  void emit_text(const std::string& text, size_t pos) {
    if (!text.empty()) out_.push_back({Token::Kind::Text, text, 0, 0, pos});
  }

  // After a tag's closing delimiter at `after`: "-" strips what follows, otherwise trim_blocks
  // takes one newline after a block or comment tag (not after "+%}").
  size_t finish_tag(size_t after, char before, bool block, bool& line_starting, bool& strip_next) {
    strip_next = false;
    if (before == '-') {
      size_t k = after;
      while (k < src_.size() && is_space(src_[k])) ++k;
      line_starting = k > after && src_[k - 1] == '\n';
      return k;
    }
    if (block && before != '+' && after < src_.size() && src_[after] == '\n') {
      line_starting = true;
      return after + 1;
    }
    line_starting = false;
    return after;
  }

  size_t lex_tag(size_t p, bool block, size_t open, bool& line_starting, bool& strip_next) {
    const char* close = block ? "%}" : "}}";
    int depth = 0;  // brackets open inside the tag: "}}" closes a dict literal there, not the tag
    for (;;) {
      while (p < src_.size() && is_space(src_[p])) ++p;
      DUO_CHECK(p < src_.size(), "chat template: unclosed {} at offset {}", block ? "{%" : "{{", open);
      if (depth == 0) {
        size_t at = p;
        char before = 0;
        if ((src_[p] == '-' || src_[p] == '+') && src_.compare(p + 1, 2, close) == 0) {
          before = src_[p];
          at = p + 1;
        }
        if (src_.compare(at, 2, close) == 0) {
          out_.push_back({block ? Token::Kind::BlockEnd : Token::Kind::VarEnd, "", 0, 0, p});
          return finish_tag(at + 2, before, block, line_starting, strip_next);
        }
      }
      const char c = src_[p];
      if (std::isalpha((unsigned char)c) || c == '_') {
        size_t e = p;
        while (e < src_.size() && (std::isalnum((unsigned char)src_[e]) || src_[e] == '_')) ++e;
        out_.push_back({Token::Kind::Name, src_.substr(p, e - p), 0, 0, p});
        p = e;
      } else if (std::isdigit((unsigned char)c)) {
        p = lex_number(p);
      } else if (c == '\'' || c == '"') {
        size_t e = p + 1;
        while (e < src_.size() && src_[e] != c) e += src_[e] == '\\' ? 2 : 1;
        DUO_CHECK(e < src_.size(), "chat template: unclosed string literal at offset {}", p);
        out_.push_back({Token::Kind::String, unescape(src_.substr(p + 1, e - p - 1)), 0, 0, p});
        p = e + 1;
      } else {
        static const char* kTwo[] = {"//", "**", "==", "!=", "<=", ">="};
        std::string op;
        for (const char* t : kTwo)
          if (src_.compare(p, 2, t) == 0) op = t;
        if (op.empty()) {
          DUO_CHECK(std::strchr("+-*/%~<>=()[]{},.:|", c) != nullptr && c != 0,
                    "chat template: unexpected character '{}' at offset {}", c, p);
          op = std::string(1, c);
          if (c == '(' || c == '[' || c == '{') ++depth;
          if ((c == ')' || c == ']' || c == '}') && depth > 0) --depth;
        }
        out_.push_back({Token::Kind::Op, op, 0, 0, p});
        p += op.size();
      }
    }
  }

  size_t lex_number(size_t p) {
    size_t e = p;
    auto digits = [&] {
      while (e < src_.size() && (std::isdigit((unsigned char)src_[e]) || src_[e] == '_')) ++e;
    };
    digits();
    bool is_float = false;
    if (e + 1 < src_.size() && src_[e] == '.' && std::isdigit((unsigned char)src_[e + 1])) {
      is_float = true;
      ++e;
      digits();
    }
    if (e < src_.size() && (src_[e] == 'e' || src_[e] == 'E')) {
      size_t k = e + 1;
      if (k < src_.size() && (src_[k] == '+' || src_[k] == '-')) ++k;
      if (k < src_.size() && std::isdigit((unsigned char)src_[k])) {
        is_float = true;
        e = k;
        digits();
      }
    }
    std::string num;
    for (size_t k = p; k < e; ++k)
      if (src_[k] != '_') num += src_[k];
    Token t{is_float ? Token::Kind::Float : Token::Kind::Int, num, 0, 0, p};
    try {
      if (is_float)
        t.f = std::stod(num);
      else
        t.i = std::stoll(num);
    } catch (const std::exception&) {
      fail("chat template: number '{}' out of range at offset {}", num, p);
    }
    out_.push_back(t);
    return e;
  }

  const std::string& src_;
  std::vector<Token> out_;
};

}  // namespace

std::vector<Token> lex(const std::string& src) { return Lexer(src).run(); }

}  // namespace duo::jinja
