#include "serve/tool_stream.h"

#include <algorithm>

#include "serve/tool_calls.h"

namespace duo::serve {

using nlohmann::json;
using ojson = nlohmann::ordered_json;

namespace {

const std::string kOpen = "<tool_call>", kClose = "</tool_call>";

bool blank(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

// A string's characters as dump() writes them (without the quotes).
std::string escaped(const std::string& s) {
  const std::string d = json(s).dump();
  return d.substr(1, d.size() - 2);
}

void append_utf8(std::string& s, uint32_t cp) {
  if (cp < 0x80) {
    s += (char)cp;
  } else if (cp < 0x800) {
    s += (char)(0xC0 | (cp >> 6));
    s += (char)(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    s += (char)(0xE0 | (cp >> 12));
    s += (char)(0x80 | ((cp >> 6) & 0x3F));
    s += (char)(0x80 | (cp & 0x3F));
  } else {
    s += (char)(0xF0 | (cp >> 18));
    s += (char)(0x80 | ((cp >> 12) & 0x3F));
    s += (char)(0x80 | ((cp >> 6) & 0x3F));
    s += (char)(0x80 | (cp & 0x3F));
  }
}

// Four hex digits at s[at]; -1 when they are not.
long hex4(const std::string& s, size_t at) {
  long v = 0;
  for (size_t i = at; i < at + 4; ++i) {
    const char c = s[i];
    const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
    if (d < 0) return -1;
    v = v * 16 + d;
  }
  return v;
}

// How long a tail of `s` is a proper start of `tag` (it may become the tag with more text).
size_t partial_tag(const std::string& s, const std::string& tag) {
  for (size_t k = std::min(s.size(), tag.size() - 1); k > 0; --k)
    if (s.compare(s.size() - k, k, tag, 0, k) == 0) return k;
  return 0;
}

// The head of a call body, `{"name": "<name>", "arguments": {`, with blanks anywhere between
// the tokens: Yes (the name and where the arguments object starts), No (another shape: the
// block is parsed whole at its end), or Need (more text).
enum class Head { Need, No, Yes };
Head match_head(const std::string& s, std::string& name, size_t& args_at) {
  size_t i = 0;
  auto skip = [&] {
    while (i < s.size() && blank(s[i])) ++i;
    return i < s.size();
  };
  auto literal = [&](const char* lit) -> Head {
    for (const char* p = lit; *p; ++p, ++i) {
      if (i >= s.size()) return Head::Need;
      if (s[i] != *p) return Head::No;
    }
    return Head::Yes;
  };
  Head h;
  if (!skip()) return Head::Need;
  if ((h = literal("{")) != Head::Yes) return h;
  if (!skip()) return Head::Need;
  if ((h = literal("\"name\"")) != Head::Yes) return h;
  if (!skip()) return Head::Need;
  if ((h = literal(":")) != Head::Yes) return h;
  if (!skip()) return Head::Need;
  if (s[i] != '"') return Head::No;
  const size_t start = i++;
  for (;; ++i) {
    if (i >= s.size()) return Head::Need;
    if (s[i] == '\\') ++i;
    else if (s[i] == '"') break;
  }
  const json n = json::parse(s.substr(start, ++i - start), nullptr, /*allow_exceptions=*/false);
  if (!n.is_string()) return Head::No;
  if (!skip()) return Head::Need;
  if ((h = literal(",")) != Head::Yes) return h;
  if (!skip()) return Head::Need;
  if ((h = literal("\"arguments\"")) != Head::Yes) return h;
  if (!skip()) return Head::Need;
  if ((h = literal(":")) != Head::Yes) return h;
  if (!skip()) return Head::Need;
  if (s[i] != '{') return Head::No;  // arguments as JSON text in a string: parsed at the end
  name = n.get<std::string>();
  args_at = i;
  return Head::Yes;
}

void emit(std::vector<ToolStreamEvent>& ev, ToolStreamEvent::Kind kind, int index, const std::string& text,
          const std::string& id = "") {
  if (text.empty() && kind != ToolStreamEvent::Kind::CallStart) return;
  // Pieces of the same kind (and call) merge: one chunk per feed, not one per character.
  if (!ev.empty() && ev.back().kind == kind && kind != ToolStreamEvent::Kind::CallStart && ev.back().index == index) {
    ev.back().text += text;
    return;
  }
  ev.push_back({kind, index, text, id});
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// JsonCompactor

size_t JsonCompactor::feed(std::string_view in, std::string& out) {
  size_t i = 0;
  while (i < in.size() && state_ != State::Done && state_ != State::Failed)
    if (step(in[i], out)) ++i;
  return i;
}

void JsonCompactor::after_value() { state_ = stack_.empty() ? State::Done : State::AfterValue; }

bool JsonCompactor::finish_token(std::string& out) {
  const ojson v = ojson::parse(token_, nullptr, /*allow_exceptions=*/false);
  const bool ok = state_ == State::Number ? v.is_number() : (v.is_boolean() || v.is_null());
  if (!ok) {
    state_ = State::Failed;
    return false;
  }
  out += v.dump();
  token_.clear();
  after_value();
  return true;
}

bool JsonCompactor::flush_escape(std::string& out) {
  // token_ holds what follows the backslash.
  const char k = token_[0];
  if (k != 'u') {
    static const std::string from = "\"\\/bfnrt", to = "\"\\/\b\f\n\r\t";
    const size_t at = from.find(k);
    if (at == std::string::npos) {
      state_ = State::Failed;
      return false;
    }
    out += escaped(std::string(1, to[at]));
  } else {
    if (token_.size() < 5) return true;  // more digits to come
    const long hi = hex4(token_, 1);
    if (hi < 0 || (hi >= 0xDC00 && hi <= 0xDFFF)) {
      state_ = State::Failed;
      return false;
    }
    uint32_t cp = (uint32_t)hi;
    if (hi >= 0xD800 && hi <= 0xDBFF) {  // a surrogate pair: \uD83D\uDE00
      if (token_.size() >= 6 && token_[5] != '\\') state_ = State::Failed;
      if (token_.size() >= 7 && token_[6] != 'u') state_ = State::Failed;
      if (state_ == State::Failed) return false;
      if (token_.size() < 11) return true;
      const long lo = hex4(token_, 7);
      if (lo < 0xDC00 || lo > 0xDFFF) {
        state_ = State::Failed;
        return false;
      }
      cp = 0x10000 + (((uint32_t)hi - 0xD800) << 10) + ((uint32_t)lo - 0xDC00);
    }
    std::string u;
    append_utf8(u, cp);
    out += escaped(u);
  }
  in_escape_ = false;
  token_.clear();
  return true;
}

bool JsonCompactor::step(char c, std::string& out) {
  switch (state_) {
    case State::Done:
    case State::Failed: return false;
    case State::Value:
      if (blank(c)) return true;
      if (c == '{' || c == '[') {
        out += c;
        stack_.push_back(c);
        state_ = c == '{' ? State::FirstKeyOrEnd : State::FirstValueOrEnd;
      } else if (c == '"') {
        out += c;
        in_key_ = false;
        state_ = State::String;
      } else if (c == '-' || (c >= '0' && c <= '9')) {
        token_ = c;
        state_ = State::Number;
      } else if (c == 't' || c == 'f' || c == 'n') {
        token_ = c;
        state_ = State::Literal;
      } else {
        state_ = State::Failed;
        return false;
      }
      return true;
    case State::FirstKeyOrEnd:
    case State::Key:
      if (blank(c)) return true;
      if (c == '}' && state_ == State::FirstKeyOrEnd) {
        out += c;
        stack_.pop_back();
        after_value();
        return true;
      }
      if (c != '"') {
        state_ = State::Failed;
        return false;
      }
      out += c;
      in_key_ = true;
      state_ = State::String;
      return true;
    case State::Colon:
      if (blank(c)) return true;
      if (c != ':') {
        state_ = State::Failed;
        return false;
      }
      out += c;
      state_ = State::Value;
      return true;
    case State::FirstValueOrEnd:
      if (blank(c)) return true;
      if (c == ']') {
        out += c;
        stack_.pop_back();
        after_value();
        return true;
      }
      state_ = State::Value;
      return false;  // the same character, as a value
    case State::AfterValue:
      if (blank(c)) return true;
      if (c == ',') {
        out += c;
        state_ = stack_.back() == '{' ? State::Key : State::Value;
        return true;
      }
      if (c == (stack_.back() == '{' ? '}' : ']')) {
        out += c;
        stack_.pop_back();
        after_value();
        return true;
      }
      state_ = State::Failed;
      return false;
    case State::String:
      if (in_escape_) {
        token_ += c;
        return flush_escape(out);
      }
      if (c == '\\') {
        in_escape_ = true;
        token_.clear();
      } else if (c == '"') {
        out += c;
        if (in_key_)
          state_ = State::Colon;
        else
          after_value();
      } else if ((unsigned char)c < 0x20) {  // raw control characters are not JSON
        state_ = State::Failed;
        return false;
      } else {
        out += c;
      }
      return true;
    case State::Number:
      if ((c >= '0' && c <= '9') || c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-') {
        token_ += c;
        return true;
      }
      finish_token(out);
      return false;  // the character after the number, read again
    case State::Literal:
      if (c >= 'a' && c <= 'z') {
        token_ += c;
        return true;
      }
      finish_token(out);
      return false;
  }
  return false;
}

// ---------------------------------------------------------------------------------------------
// ToolCallStream

ToolCallStream::ToolCallStream(const GenerationRequest& r) : choice_(r.tool_choice), named_(r.tool_name) {
  for (const auto& t : r.tools) names_.push_back(t["function"]["name"].get<std::string>());
  if (choice_ == ToolChoice::Required || choice_ == ToolChoice::Named) {
    mode_ = Mode::Block;
    tags_ = false;
  }
}

void ToolCallStream::content(std::string_view s, std::vector<ToolStreamEvent>& ev) {
  size_t last = s.size();
  while (last > 0 && blank(s[last - 1])) --last;
  if (last == 0) {
    blanks_ += s;
    return;
  }
  emit(ev, ToolStreamEvent::Kind::Content, 0, blanks_ + std::string(s.substr(0, last)));
  blanks_ = s.substr(last);
  anything_ = true;
}

void ToolCallStream::start_call(const std::string& name, std::vector<ToolStreamEvent>& ev) {
  emit(ev, ToolStreamEvent::Kind::CallStart, calls_, name, new_tool_call_id());
  ++calls_;
  started_ = true;
  anything_ = true;
}

void ToolCallStream::text(std::string_view s, std::vector<ToolStreamEvent>& ev) {
  pending_ += s;
  if (mode_ == Mode::Hold) return;
  if (!anything_) {
    // At the start of the answer: a call without tags ({...} or a ```json fence) is known
    // only at the end, so such an answer is held whole.
    const size_t b = pending_.find_first_not_of(" \t\r\n");
    if (b == std::string::npos) return;
    const std::string_view lead = std::string_view(pending_).substr(b);
    bool hold = lead[0] == '{';
    if (lead[0] == '`') {
      if (lead.size() < 3 && std::string_view("```").substr(0, lead.size()) == lead) return;  // more to see
      if (lead.rfind("```", 0) == 0) {
        const size_t nl = lead.find('\n');
        if (nl == std::string::npos) return;  // the fence's language is not known yet
        std::string lang(lead.substr(3, nl - 3));
        while (!lang.empty() && blank(lang.back())) lang.pop_back();
        hold = lang.empty() || lang == "json";
      }
    }
    if (hold) {
      mode_ = Mode::Hold;
      return;
    }
  }
  const size_t at = pending_.find(kOpen);
  if (at == std::string::npos) {
    const size_t keep = partial_tag(pending_, kOpen);
    content(std::string_view(pending_).substr(0, pending_.size() - keep), ev);
    pending_.erase(0, pending_.size() - keep);
    return;
  }
  content(std::string_view(pending_).substr(0, at), ev);
  anything_ = true;
  mode_ = Mode::Block;
  body_ = pending_.substr(at + kOpen.size());
  pending_.clear();
  block(ev, false);
}

void ToolCallStream::block(std::vector<ToolStreamEvent>& ev, bool at_end) {
  const size_t close = tags_ ? body_.find(kClose) : std::string::npos;
  // The compactor is not shown a possible start of the closing tag: the block may end there.
  const size_t limit = close != std::string::npos ? close
                       : (tags_ && !at_end)       ? body_.size() - partial_tag(body_, kClose)
                                                  : body_.size();
  if (!started_ && !raw_) {
    if (choice_ == ToolChoice::Named) {
      start_call(named_, ev);
      fed_ = 0;
    } else {
      std::string name;
      size_t args_at = 0;
      const Head h = match_head(body_.substr(0, limit), name, args_at);
      if (h == Head::Yes && std::find(names_.begin(), names_.end(), name) != names_.end()) {
        start_call(name, ev);
        fed_ = args_at;
      } else if (h != Head::Need || close != std::string::npos || at_end) {
        raw_ = true;
      }
    }
  }
  if (started_ && !raw_ && fed_ < limit) {
    std::string out;
    fed_ += args_.feed(std::string_view(body_).substr(fed_, limit - fed_), out);
    sent_args_ += out;
    emit(ev, ToolStreamEvent::Kind::Arguments, calls_ - 1, out);
  }
  if (close != std::string::npos) {
    const std::string rest = body_.substr(close + kClose.size());
    body_.resize(close);
    end_block(true, ev);
    text(rest, ev);
  } else if (at_end) {
    end_block(false, ev);
  }
}

void ToolCallStream::end_block(bool closed, std::vector<ToolStreamEvent>& ev) {
  json call;
  if (choice_ == ToolChoice::Named) {
    const ojson v = ojson::parse(body_, nullptr, /*allow_exceptions=*/false);
    if (!v.is_discarded() && v.is_object())
      call = {{"function", {{"name", named_}, {"arguments", v.dump()}}}};
  } else {
    call = parse_call_body(body_, names_);
  }
  // A forced call cut by max_tokens is not a call (shape_tool_answer): its text is content.
  if (!tags_ && !complete_) call = nullptr;
  if (!call.is_null()) {
    const std::string args = call["function"]["arguments"];
    if (!started_) {
      start_call(call["function"]["name"], ev);
      emit(ev, ToolStreamEvent::Kind::Arguments, calls_ - 1, args);
    } else if (args.size() > sent_args_.size() && args.compare(0, sent_args_.size(), sent_args_) == 0) {
      emit(ev, ToolStreamEvent::Kind::Arguments, calls_ - 1, args.substr(sent_args_.size()));
    }
    // Otherwise what went out differs from the parse (a key given twice): it stays as sent.
  } else if (!started_) {
    content(tags_ ? kOpen + body_ + (closed ? kClose : "") : body_, ev);
  } else {
    broken_ = true;
  }
  mode_ = Mode::Text;
  body_.clear();
  fed_ = 0;
  started_ = raw_ = false;
  args_ = JsonCompactor();
  sent_args_.clear();
}

std::vector<ToolStreamEvent> ToolCallStream::feed(std::string_view s) {
  std::vector<ToolStreamEvent> ev;
  if (mode_ == Mode::Block) {
    body_ += s;
    block(ev, false);
  } else {
    text(s, ev);
  }
  return ev;
}

std::vector<ToolStreamEvent> ToolCallStream::finish(bool complete) {
  std::vector<ToolStreamEvent> ev;
  complete_ = complete;
  if (mode_ == Mode::Block) block(ev, true);
  if (mode_ == Mode::Hold) {
    const ToolAnswer a = parse_hermes_calls(pending_, names_);
    if (a.is_call) {
      if (!a.content_null) emit(ev, ToolStreamEvent::Kind::Content, 0, a.content);
      for (const auto& c : a.tool_calls) {
        emit(ev, ToolStreamEvent::Kind::CallStart, calls_, c["function"]["name"], c["id"]);
        emit(ev, ToolStreamEvent::Kind::Arguments, calls_++, c["function"]["arguments"]);
      }
    } else {
      emit(ev, ToolStreamEvent::Kind::Content, 0, pending_);
    }
    pending_.clear();
    mode_ = Mode::Text;
    return ev;
  }
  // Text: what waited for a possible tag is text; blanks at the end are the answer's own
  // unless there are calls (the non-streamed content is trimmed then).
  content(pending_, ev);
  pending_.clear();
  if (calls_ == 0) emit(ev, ToolStreamEvent::Kind::Content, 0, blanks_);
  blanks_.clear();
  return ev;
}

}  // namespace duo::serve
