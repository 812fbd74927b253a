#include "sample/json_grammar.h"

namespace duo {

namespace {
bool is_ws(unsigned char c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r'; }
bool is_digit(unsigned char c) { return c >= '0' && c <= '9'; }
bool is_hex(unsigned char c) { return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }
}  // namespace

bool JsonObjectMatcher::feed(unsigned char c) {
  const JsonObjectMatcher saved = *this;
  if (step(c)) return true;
  *this = saved;
  return false;
}

bool JsonObjectMatcher::feed(std::string_view s) {
  for (char c : s)
    if (!step((unsigned char)c)) return false;
  return true;
}

bool JsonObjectMatcher::close_value() {
  mode_ = depth_ == 0 ? Mode::Done : Mode::After;
  return true;
}

// A byte after a number's digits: the number ends if it may end here, and the byte is then
// read as what follows a value.
bool JsonObjectMatcher::end_number(unsigned char c) {
  if (mode_ != Mode::Zero && mode_ != Mode::Int && mode_ != Mode::Frac && mode_ != Mode::Exp) return false;
  close_value();
  return step(c);
}

bool JsonObjectMatcher::step(unsigned char c) {
  // Whitespace between tokens (not inside strings, numbers or literals), bounded per run.
  const bool between = mode_ == Mode::Start || mode_ == Mode::ObjFirst || mode_ == Mode::ObjKey ||
                       mode_ == Mode::Colon || mode_ == Mode::Value || mode_ == Mode::ArrFirst ||
                       mode_ == Mode::After || mode_ == Mode::Done;
  if (between) {
    if (is_ws(c)) return ++ws_ <= kMaxWhitespace;
    ws_ = 0;
  }
  auto open = [&](char bracket) {
    if (depth_ == kMaxDepth) return false;
    stack_[depth_++] = bracket;
    mode_ = bracket == '{' ? Mode::ObjFirst : Mode::ArrFirst;
    return true;
  };
  auto close = [&](char bracket) {
    if (depth_ == 0 || stack_[depth_ - 1] != bracket) return false;
    --depth_;
    return close_value();
  };
  auto start_value = [&]() -> bool {
    switch (c) {
      case '{': return open('{');
      case '[': return open('[');
      case '"': key_ = false; mode_ = Mode::String; return true;
      case '-': mode_ = Mode::Minus; return true;
      case '0': mode_ = Mode::Zero; return true;
      case 't': literal_ = "rue"; mode_ = Mode::Literal; return true;
      case 'f': literal_ = "alse"; mode_ = Mode::Literal; return true;
      case 'n': literal_ = "ull"; mode_ = Mode::Literal; return true;
      default:
        if (c >= '1' && c <= '9') {
          mode_ = Mode::Int;
          return true;
        }
        return false;
    }
  };
  switch (mode_) {
    case Mode::Start: return c == '{' && open('{');
    case Mode::ObjFirst:
      if (c == '}') return close('{');
      [[fallthrough]];
    case Mode::ObjKey:
      if (c != '"') return false;
      key_ = true;
      mode_ = Mode::String;
      return true;
    case Mode::Colon:
      if (c != ':') return false;
      mode_ = Mode::Value;
      return true;
    case Mode::ArrFirst:
      if (c == ']') return close('[');
      [[fallthrough]];
    case Mode::Value: return start_value();
    case Mode::After:
      if (c == ',') {
        mode_ = stack_[depth_ - 1] == '{' ? Mode::ObjKey : Mode::Value;
        return true;
      }
      return close(c == '}' ? '{' : c == ']' ? '[' : 0);
    case Mode::String:
      if (c == '"') {
        if (key_) {
          mode_ = Mode::Colon;
          return true;
        }
        return close_value();
      }
      if (c == '\\') mode_ = Mode::Escape;
      return c >= 0x20;
    case Mode::Escape:
      if (c == 'u') {
        mode_ = Mode::Unicode;
        hex_left_ = 4;
        return true;
      }
      mode_ = Mode::String;
      return c == '"' || c == '\\' || c == '/' || c == 'b' || c == 'f' || c == 'n' || c == 'r' || c == 't';
    case Mode::Unicode:
      if (!is_hex(c)) return false;
      if (--hex_left_ == 0) mode_ = Mode::String;
      return true;
    case Mode::Minus:
      if (c == '0') mode_ = Mode::Zero;
      else if (is_digit(c)) mode_ = Mode::Int;
      else return false;
      return true;
    case Mode::Zero:
    case Mode::Int:
      if (is_digit(c) && mode_ == Mode::Int) return true;
      if (c == '.') {
        mode_ = Mode::FracStart;
        return true;
      }
      if (c == 'e' || c == 'E') {
        mode_ = Mode::ExpStart;
        return true;
      }
      return end_number(c);
    case Mode::FracStart:
      if (!is_digit(c)) return false;
      mode_ = Mode::Frac;
      return true;
    case Mode::Frac:
      if (is_digit(c)) return true;
      if (c == 'e' || c == 'E') {
        mode_ = Mode::ExpStart;
        return true;
      }
      return end_number(c);
    case Mode::ExpStart:
      if (c == '+' || c == '-') {
        mode_ = Mode::ExpSign;
        return true;
      }
      [[fallthrough]];
    case Mode::ExpSign:
      if (!is_digit(c)) return false;
      mode_ = Mode::Exp;
      return true;
    case Mode::Exp:
      if (is_digit(c)) return true;
      return end_number(c);
    case Mode::Literal:
      if (c != (unsigned char)*literal_) return false;
      if (*++literal_ == '\0') return close_value();
      return true;
    case Mode::Done: return false;
  }
  return false;
}

}  // namespace duo
