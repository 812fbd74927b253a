#include "tokenizer/jinja/value.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>

#include "core/error.h"

namespace duo::jinja {

Value Value::from_json(const nlohmann::ordered_json& j, int depth) {
  DUO_CHECK(depth < kMaxValueDepth, "chat template context nests deeper than {} levels", kMaxValueDepth);
  switch (j.type()) {
    case nlohmann::ordered_json::value_t::null:
      return none();
    case nlohmann::ordered_json::value_t::boolean:
      return boolean(j.get<bool>());
    case nlohmann::ordered_json::value_t::number_integer:
      return integer(j.get<int64_t>());
    case nlohmann::ordered_json::value_t::number_unsigned: {
      const uint64_t u = j.get<uint64_t>();
      return u <= (uint64_t)INT64_MAX ? integer((int64_t)u) : number((double)u);
    }
    case nlohmann::ordered_json::value_t::number_float:
      return number(j.get<double>());
    case nlohmann::ordered_json::value_t::string:
      return string(Text::data(j.get<std::string>()));
    case nlohmann::ordered_json::value_t::array: {
      List l;
      for (const auto& e : j) l.push_back(from_json(e, depth + 1));
      return of_list(std::move(l));
    }
    case nlohmann::ordered_json::value_t::object: {
      auto d = std::make_shared<Dict>();
      for (const auto& [k, e] : j.items()) d->items.push_back({Text::data(k), from_json(e, depth + 1)});
      return of_dict(std::move(d));
    }
    default:
      return undefined();
  }
}

const Value* Dict::find(const std::string& key) const {
  for (const auto& [k, v] : items)
    if (k.s == key) return &v;
  return nullptr;
}

void Dict::set(const Text& key, Value v) {
  for (auto& [k, old] : items)
    if (k.s == key.s) {
      old = std::move(v);
      return;
    }
  items.push_back({key, std::move(v)});
}

Value Args::get(size_t i, const std::string& name) const {
  for (const auto& [k, v] : kw)
    if (k == name) return v;
  return i < pos.size() ? pos[i] : Value::undefined(name);
}

const char* type_name(const Value& v) {
  switch (v.type) {
    case Type::Undefined: return "undefined";
    case Type::None: return "None";
    case Type::Bool: return "bool";
    case Type::Int: return "int";
    case Type::Float: return "float";
    case Type::Str: return "str";
    case Type::List: return "list";
    case Type::Dict: return v.dict->is_namespace ? "Namespace" : "dict";
    case Type::Func: return "function";
  }
  return "?";
}

bool truthy(const Value& v) {
  switch (v.type) {
    case Type::Undefined:
    case Type::None: return false;
    case Type::Bool: return v.b;
    case Type::Int: return v.i != 0;
    case Type::Float: return v.f != 0;
    case Type::Str: return !v.str.s.empty();
    case Type::List: return !v.list->empty();
    case Type::Dict: return v.dict->is_namespace || !v.dict->items.empty();
    case Type::Func: return true;
  }
  return false;
}

std::string float_repr(double x) {
  if (std::isnan(x)) return "nan";
  if (std::isinf(x)) return x < 0 ? "-inf" : "inf";
  // Shortest round-trip digits, then Python's layout: fixed for 1e-4 <= |x| < 1e16, else d.ddde+XX.
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, x, std::chars_format::scientific);
  std::string sci(buf, r.ptr);
  const size_t e = sci.find('e');
  std::string mant = sci.substr(0, e);
  const int exp = std::stoi(sci.substr(e + 1));
  const bool neg = mant[0] == '-';
  if (neg) mant.erase(0, 1);
  std::string digits;
  for (char c : mant)
    if (c != '.') digits += c;
  std::string out = neg ? "-" : "";
  if (exp >= -4 && exp < 16) {
    if (exp < 0) {
      out.append("0.").append((size_t)(-exp - 1), '0').append(digits);
    } else if ((int)digits.size() <= exp + 1) {
      out.append(digits).append((size_t)exp + 1 - digits.size(), '0').append(".0");
    } else {
      out.append(digits, 0, (size_t)exp + 1).append(1, '.').append(digits, (size_t)exp + 1, std::string::npos);
    }
    return out;
  }
  out.append(digits, 0, 1);
  if (digits.size() > 1) out.append(1, '.').append(digits, 1, std::string::npos);
  char eb[16];
  std::snprintf(eb, sizeof eb, "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
  return out.append(eb);
}

namespace {

std::string str_repr(const std::string& s) {
  const bool dq = s.find('\'') != std::string::npos && s.find('"') == std::string::npos;
  const char q = dq ? '"' : '\'';
  std::string out(1, q);
  for (unsigned char c : s) {
    if (c == '\\') out += "\\\\";
    else if (c == (unsigned char)q) out += std::string("\\") + (char)q;
    else if (c == '\n') out += "\\n";
    else if (c == '\r') out += "\\r";
    else if (c == '\t') out += "\\t";
    else if (c < 0x20 || c == 0x7f) {
      char b[8];
      std::snprintf(b, sizeof b, "\\x%02x", c);
      out += b;
    } else out += (char)c;
  }
  return out + q;
}

void json_string(const std::string& s, bool ensure_ascii, std::string& out) {
  out += '"';
  for (size_t i = 0; i < s.size(); ++i) {
    const unsigned char c = s[i];
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20) {
          char b[8];
          std::snprintf(b, sizeof b, "\\u%04x", c);
          out += b;
        } else if (c >= 0x80 && ensure_ascii) {
          // Decode one UTF-8 sequence; escape it as \uXXXX (a surrogate pair above the BMP).
          int n = c >= 0xF0 ? 3 : c >= 0xE0 ? 2 : c >= 0xC0 ? 1 : 0;
          uint32_t cp = n == 3 ? c & 0x07 : n == 2 ? c & 0x0F : c & 0x1F;
          if (n == 0 || i + n >= s.size()) {  // a broken sequence: U+FFFD, as Python's decoder
            cp = 0xFFFD;
            n = 0;
          }
          for (int k = 1; k <= n; ++k) cp = (cp << 6) | (s[i + k] & 0x3F);
          i += n;
          char b[16];
          if (cp >= 0x10000) {
            cp -= 0x10000;
            std::snprintf(b, sizeof b, "\\u%04x\\u%04x", 0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF));
          } else {
            std::snprintf(b, sizeof b, "\\u%04x", cp);
          }
          out += b;
        } else {
          out += (char)c;
        }
    }
  }
  out += '"';
}

void json_value(const Value& v, const JsonStyle& st, int level, std::string& out) {
  DUO_CHECK(level < kMaxValueDepth, "tojson: value nests deeper than {} levels", kMaxValueDepth);
  auto newline = [&](int lv) {
    if (st.indent >= 0) {
      out += '\n';
      out.append((size_t)st.indent * lv, ' ');
    }
  };
  switch (v.type) {
    case Type::None: out += "null"; return;
    case Type::Bool: out += v.b ? "true" : "false"; return;
    case Type::Int: out += std::to_string(v.i); return;
    case Type::Float:
      out += std::isnan(v.f) ? "NaN" : std::isinf(v.f) ? (v.f < 0 ? "-Infinity" : "Infinity") : float_repr(v.f);
      return;
    case Type::Str: json_string(v.str.s, st.ensure_ascii, out); return;
    case Type::List: {
      if (v.list->empty()) {
        out += "[]";
        return;
      }
      out += '[';
      for (size_t k = 0; k < v.list->size(); ++k) {
        if (k) out += st.item_sep;
        newline(level + 1);
        json_value((*v.list)[k], st, level + 1, out);
      }
      newline(level);
      out += ']';
      return;
    }
    case Type::Dict: {
      if (v.dict->items.empty()) {
        out += "{}";
        return;
      }
      std::vector<const std::pair<Text, Value>*> items;
      for (const auto& kv : v.dict->items) items.push_back(&kv);
      if (st.sort_keys)
        std::stable_sort(items.begin(), items.end(), [](auto* a, auto* b) { return a->first.s < b->first.s; });
      out += '{';
      for (size_t k = 0; k < items.size(); ++k) {
        if (k) out += st.item_sep;
        newline(level + 1);
        json_string(items[k]->first.s, st.ensure_ascii, out);
        out += st.key_sep;
        json_value(items[k]->second, st, level + 1, out);
      }
      newline(level);
      out += '}';
      return;
    }
    default:
      fail("tojson: object of type {} is not JSON serializable", type_name(v));
  }
}

}  // namespace

std::string to_json_text(const Value& v, const JsonStyle& style) {
  std::string out;
  json_value(v, style, 0, out);
  return out;
}

std::string repr(const Value& v, int depth) {
  DUO_CHECK(depth < kMaxValueDepth, "value nests deeper than {} levels", kMaxValueDepth);
  switch (v.type) {
    case Type::Undefined: return "";
    case Type::None: return "None";
    case Type::Bool: return v.b ? "True" : "False";
    case Type::Int: return std::to_string(v.i);
    case Type::Float: return float_repr(v.f);
    case Type::Str: return str_repr(v.str.s);
    case Type::List: {
      std::string out = v.tuple ? "(" : "[";
      for (size_t k = 0; k < v.list->size(); ++k) out += (k ? ", " : "") + repr((*v.list)[k], depth + 1);
      if (v.tuple && v.list->size() == 1) out += ",";
      return out + (v.tuple ? ")" : "]");
    }
    case Type::Dict: {
      if (v.dict->is_namespace) return "<Namespace>";
      std::string out = "{";
      for (size_t k = 0; k < v.dict->items.size(); ++k)
        out += (k ? ", " : "") + str_repr(v.dict->items[k].first.s) + ": " + repr(v.dict->items[k].second, depth + 1);
      return out + "}";
    }
    case Type::Func: return "<function " + v.name + ">";
  }
  return "";
}

Text to_text(const Value& v) {
  if (v.type == Type::Str) return v.str;
  return Text::data(repr(v));
}

bool equals(const Value& a, const Value& b, int depth) {
  DUO_CHECK(depth < kMaxValueDepth, "value nests deeper than {} levels", kMaxValueDepth);
  if (a.is_number() && b.is_number()) {
    if (a.type != Type::Float && b.type != Type::Float) return (a.type == Type::Bool ? a.b : a.i) == (b.type == Type::Bool ? b.b : b.i);
    return a.as_double() == b.as_double();
  }
  if (a.type != b.type) return false;
  switch (a.type) {
    case Type::Undefined:
    case Type::None: return true;
    case Type::Str: return a.str.s == b.str.s;
    case Type::List:
      if (a.list->size() != b.list->size()) return false;
      for (size_t k = 0; k < a.list->size(); ++k)
        if (!equals((*a.list)[k], (*b.list)[k], depth + 1)) return false;
      return true;
    case Type::Dict:
      if (a.dict == b.dict) return true;
      if (a.dict->is_namespace || b.dict->is_namespace) return false;
      if (a.dict->items.size() != b.dict->items.size()) return false;
      for (const auto& [k, v] : a.dict->items) {
        const Value* o = b.dict->find(k.s);
        if (!o || !equals(v, *o, depth + 1)) return false;
      }
      return true;
    case Type::Func: return a.func == b.func;
    default: return false;
  }
}

}  // namespace duo::jinja
