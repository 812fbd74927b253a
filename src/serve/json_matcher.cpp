#include "serve/json_matcher.h"

#include <cstring>

namespace duo::serve {

namespace {

// Frame kinds and their phases.
enum Kind : uint8_t { kValue, kObj, kArr, kStr, kNum, kLit };
enum ObjPhase : uint8_t { kObjFirst, kObjComma, kObjKey, kObjColon, kObjAfter };  // n: properties seen
enum ArrPhase : uint8_t { kArrFirst, kArrAfter, kArrNext };                       // n: items so far
enum StrPhase : uint8_t { kStrPlain, kStrEscape, kStrUnicode };                   // a: hex digits left
enum NumPhase : uint8_t { kMinus, kZero, kInt, kFracStart, kFrac, kExpStart, kExpSign, kExp };  // a: integer only
// kLit: a..b the literals (sorted) that agree with the bytes so far, n of them read.
constexpr uint32_t kFreeKey = UINT32_MAX;  // kObjKey's a: a key that names no property

bool is_ws(unsigned char c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r'; }
bool is_digit(unsigned char c) { return c >= '0' && c <= '9'; }
bool is_hex(unsigned char c) { return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

JsonMatcher::Frame value_frame(int node) {
  JsonMatcher::Frame f{};
  f.kind = kValue;
  f.node = node;
  return f;
}

JsonMatcher::Frame literal_frame(int node, size_t count) {
  JsonMatcher::Frame f{};
  f.kind = kLit;
  f.node = node;
  f.a = 0;
  f.b = (uint32_t)count;
  return f;
}

}  // namespace

JsonMatcher::JsonMatcher(const CompiledSchema& schema, bool trailing_whitespace)
    : schema_(&schema), trailing_ws_(trailing_whitespace) {
  n_threads_ = 1;
  len_[0] = 1;
  used_ = 1;
  frames_[0] = value_frame(schema.root);
}

JsonMatcher& JsonMatcher::operator=(const JsonMatcher& o) {
  if (this == &o) return *this;
  schema_ = o.schema_;
  trailing_ws_ = o.trailing_ws_;
  ws_ = o.ws_;
  n_threads_ = o.n_threads_;
  used_ = o.used_;
  std::memcpy(len_, o.len_, n_threads_);
  std::memcpy(frames_, o.frames_, used_ * sizeof(Frame));
  return *this;
}

bool JsonMatcher::feed(unsigned char c) {
  JsonMatcher next;
  if (!next.step_from(*this, c)) return false;
  *this = next;
  return true;
}

bool JsonMatcher::feed(std::string_view s) {
  for (char c : s)
    if (!feed((unsigned char)c)) return false;
  return true;
}

bool JsonMatcher::step_from(const JsonMatcher& from, unsigned char c) {
  schema_ = from.schema_;
  trailing_ws_ = from.trailing_ws_;
  ws_ = is_ws(c) ? (uint8_t)std::min(from.ws_ + 1, 255) : 0;
  n_threads_ = 0;
  used_ = 0;
  Frame buf[kMaxDepth + 1];
  int off = 0;
  for (int i = 0; i < from.n_threads_; ++i) {
    const int d = from.len_[i];
    std::memcpy(buf, from.frames_ + off, d * sizeof(Frame));
    off += d;
    advance(buf, d, c);
  }
  return n_threads_ > 0;
}

// Keeps a thread (st[0..d)) for the next byte, unless an identical one is kept already or
// the limits are reached (a thread dropped there only narrows what is accepted).
void JsonMatcher::emit(const Frame* st, int d) {
  if (n_threads_ == kMaxThreads || used_ + d > kMaxFrames) return;
  int off = 0;
  for (int i = 0; i < n_threads_; ++i) {
    if (len_[i] == d && std::memcmp(frames_ + off, st, d * sizeof(Frame)) == 0) return;
    off += len_[i];
  }
  std::memcpy(frames_ + used_, st, d * sizeof(Frame));
  len_[n_threads_++] = (uint8_t)d;
  used_ += d;
}

// One thread (its stack st[0..d), which may be changed) takes byte c: each way it can go on is
// emitted. A value that ends pops its frame; its parent is then already in its "after a value"
// phase. Bytes that end a number (or a literal with longer ones beside it) are read again by
// the parent.
void JsonMatcher::advance(Frame* st, int d, unsigned char c) {
  const auto& nodes = schema_->nodes;
  const bool ws = is_ws(c);
  const bool ws_ok = ws && ws_ <= kMaxWhitespace;
  for (;;) {
    if (d == 0) {  // the document is complete
      if (ws_ok && trailing_ws_) emit(st, 0);
      return;
    }
    Frame& f = st[d - 1];
    switch (f.kind) {
      case kValue: {
        if (ws) {
          if (ws_ok) emit(st, d);
          return;
        }
        const SchemaNode& n = nodes[f.node];
        if (!n.alts.empty()) {
          Frame alt[kMaxDepth + 1];
          for (int a : n.alts) {
            std::memcpy(alt, st, d * sizeof(Frame));
            alt[d - 1] = value_frame(a);
            advance(alt, d, c);
          }
          return;
        }
        if (n.has_literals) {
          f = literal_frame(f.node, n.literals.size());
          continue;
        }
        switch (c) {
          case '{':
            if (!(n.types & kObject)) return;
            f.kind = kObj, f.phase = kObjFirst, f.n = 0;
            break;
          case '[':
            if (!(n.types & kArray)) return;
            f.kind = kArr, f.phase = kArrFirst, f.n = 0;
            break;
          case '"':
            if (!(n.types & kString)) return;
            f.kind = kStr, f.phase = kStrPlain;
            break;
          case 't':
          case 'f':
            if (!(n.types & kBoolean)) return;
            f = literal_frame(c == 't' ? schema_->lit_true : schema_->lit_false, 1);
            continue;
          case 'n':
            if (!(n.types & kNull)) return;
            f = literal_frame(schema_->lit_null, 1);
            continue;
          default:
            if (!(c == '-' || is_digit(c)) || !(n.types & (kNumber | kInteger))) return;
            f.kind = kNum;
            f.phase = c == '-' ? kMinus : c == '0' ? kZero : kInt;
            f.a = !(n.types & kNumber);
            break;
        }
        emit(st, d);
        return;
      }
      case kObj: {
        const SchemaNode& n = nodes[f.node];
        if (ws && f.phase != kObjKey) {
          if (ws_ok) emit(st, d);
          return;
        }
        const bool key_possible = (n.live & ~f.n) != 0 || n.additional >= 0;
        switch (f.phase) {
          case kObjFirst:
            if (c == '}') {
              if (n.required == 0) emit(st, d - 1);
              return;
            }
            [[fallthrough]];
          case kObjComma:
            if (c != '"' || !key_possible) return;
            f.phase = kObjKey;
            // With no named properties every key is a free one from its first byte.
            f.a = n.prop_names.empty() ? kFreeKey : (uint32_t)n.key_trie;
            emit(st, d);
            return;
          case kObjKey: {
            const auto& trie = schema_->key_trie;
            if (c == '"') {
              const int p = f.a == kFreeKey ? -1 : trie[f.a].prop;
              if (p >= 0) {  // a named property: once, and only one whose schema can be met
                const uint64_t bit = uint64_t(1) << p;
                if (!(n.live & bit) || (f.n & bit)) return;
                f.n |= bit;
                f.b = n.prop_nodes[p];
              } else {
                if (n.additional < 0) return;
                f.b = n.additional;
              }
              f.phase = kObjColon;
              emit(st, d);
              return;
            }
            if (c == '\\' || c < 0x20) return;
            if (f.a != kFreeKey) {
              int next = -1;
              for (auto [b, child] : trie[f.a].next)
                if (b == c) next = child;
              // Without additional properties a key must stay the prefix of one still to come.
              if (next >= 0 && (n.additional >= 0 || (trie[next].below & n.live & ~f.n))) {
                f.a = next;
                emit(st, d);
                return;
              }
            }
            if (n.additional < 0) return;
            f.a = kFreeKey;
            emit(st, d);
            return;
          }
          case kObjColon:
            if (c != ':' || d >= kMaxDepth) return;
            f.phase = kObjAfter;
            st[d] = value_frame(f.b);
            emit(st, d + 1);
            return;
          case kObjAfter:
            if (c == ',') {
              if (key_possible) {
                f.phase = kObjComma;
                emit(st, d);
              }
            } else if (c == '}' && (f.n & n.required) == n.required) {
              emit(st, d - 1);
            }
            return;
        }
        return;
      }
      case kArr: {
        const SchemaNode& n = nodes[f.node];
        if (ws) {
          if (ws_ok) emit(st, d);
          return;
        }
        switch (f.phase) {
          case kArrFirst:
            if (c == ']') {
              if (n.min_items == 0) emit(st, d - 1);
              return;
            }
            [[fallthrough]];
          case kArrNext:
            if (f.n >= n.max_items || d >= kMaxDepth) return;
            ++f.n;
            f.phase = kArrAfter;
            st[d++] = value_frame(n.items);
            continue;  // c is the item's first byte
          case kArrAfter:
            if (c == ',') {
              if (f.n < n.max_items) {
                f.phase = kArrNext;
                emit(st, d);
              }
            } else if (c == ']' && f.n >= n.min_items) {
              emit(st, d - 1);
            }
            return;
        }
        return;
      }
      case kStr:
        switch (f.phase) {
          case kStrPlain:
            if (c == '"') {
              emit(st, d - 1);
              return;
            }
            if (c < 0x20) return;
            if (c == '\\') f.phase = kStrEscape;
            emit(st, d);
            return;
          case kStrEscape:
            if (c == 'u') {
              f.phase = kStrUnicode;
              f.a = 4;
            } else if (c == '"' || c == '\\' || c == '/' || c == 'b' || c == 'f' || c == 'n' || c == 'r' || c == 't') {
              f.phase = kStrPlain;
            } else {
              return;
            }
            emit(st, d);
            return;
          case kStrUnicode:
            if (!is_hex(c)) return;
            if (--f.a == 0) f.phase = kStrPlain;
            emit(st, d);
            return;
        }
        return;
      case kNum: {
        const bool int_only = f.a != 0;
        uint8_t next = 255;
        switch (f.phase) {
          case kMinus: next = c == '0' ? kZero : is_digit(c) ? kInt : 255; break;
          case kZero:
          case kInt:
            if (is_digit(c) && f.phase == kInt) next = kInt;
            else if (c == '.' && !int_only) next = kFracStart;
            else if ((c == 'e' || c == 'E') && !int_only) next = kExpStart;
            break;
          case kFracStart: next = is_digit(c) ? kFrac : 255; break;
          case kFrac:
            if (is_digit(c)) next = kFrac;
            else if (c == 'e' || c == 'E') next = kExpStart;
            break;
          case kExpStart: next = (c == '+' || c == '-') ? kExpSign : is_digit(c) ? kExp : 255; break;
          case kExpSign: next = is_digit(c) ? kExp : 255; break;
          case kExp: next = is_digit(c) ? kExp : 255; break;
        }
        if (next != 255) {
          f.phase = next;
          emit(st, d);
          return;
        }
        if (f.phase != kZero && f.phase != kInt && f.phase != kFrac && f.phase != kExp) return;
        --d;  // the number ends here; its parent reads c
        continue;
      }
      case kLit: {
        const auto& lits = nodes[f.node].literals;
        const size_t pos = f.n;
        const bool complete = lits[f.a].size() == pos;  // the shortest sorts first
        uint32_t s = complete ? f.a + 1 : f.a;
        while (s < f.b && (unsigned char)lits[s][pos] < c) ++s;
        uint32_t e = s;
        while (e < f.b && (unsigned char)lits[e][pos] == c) ++e;
        if (s < e) {
          f.a = s, f.b = e, f.n = pos + 1;
          // Complete with nothing longer beside it: the value ends with this byte.
          emit(st, e - s == 1 && lits[s].size() == pos + 1 ? d - 1 : d);
          return;
        }
        if (!complete) return;
        --d;  // a literal that may end here (a number in an enum) ends: its parent reads c
        continue;
      }
    }
    return;
  }
}

bool JsonMatcher::done() const {
  int off = 0;
  for (int i = 0; i < n_threads_; ++i) {
    const int d = len_[i];
    if (d == 0) return true;
    const Frame& f = frames_[off];
    if (d == 1 && f.kind == kNum && (f.phase == kZero || f.phase == kInt || f.phase == kFrac || f.phase == kExp))
      return true;
    if (d == 1 && f.kind == kLit && schema_->nodes[f.node].literals[f.a].size() == f.n) return true;
    off += d;
  }
  return false;
}

bool JsonMatcher::in_plain_string() const {
  int off = 0;
  for (int i = 0; i < n_threads_; ++i) {
    const int d = len_[i];
    if (d == 0) return false;
    const Frame& top = frames_[off + d - 1];
    const bool free_key = top.kind == kObj && top.phase == kObjKey && top.a == kFreeKey;
    if (!free_key && (top.kind != kStr || top.phase != kStrPlain)) return false;
    off += d;
  }
  return n_threads_ > 0;
}

}  // namespace duo::serve
