#include "tokenizer/jinja/builtins.h"

#include <algorithm>
#include <cmath>
#include <ctime>

#include "core/error.h"
#include "tokenizer/jinja/interpreter.h"
#include "tokenizer/jinja/strings.h"

namespace duo::jinja {

namespace {

Value str(Text t) { return Value::string(std::move(t)); }
Value data_str(std::string s) { return Value::string(Text::data(std::move(s))); }

const Text& need_str(const Value& v, const char* what) {
  DUO_CHECK(v.is_str(), "chat template: {} expects a string, got {}", what, type_name(v));
  return v.str;
}

// Strings returned by reference: never pass a temporary.
const Text& need_str(Value&& v, const char* what) = delete;

int64_t need_int(const Value& v, const char* what) {
  DUO_CHECK(v.type == Type::Int || v.type == Type::Bool, "chat template: {} expects an integer, got {}", what,
            type_name(v));
  return v.type == Type::Bool ? v.b : v.i;
}

// Python's slice index normalisation for a sequence of length n.
void slice_bounds(int64_t n, const Value& start, const Value& stop, const Value& step, int64_t& b, int64_t& e,
                  int64_t& st) {
  st = step.is_none() || step.is_undefined() ? 1 : need_int(step, "a slice step");
  DUO_CHECK(st != 0, "chat template: slice step cannot be zero");
  auto norm = [&](const Value& v, int64_t def) {
    if (v.is_none() || v.is_undefined()) return def;
    int64_t x = need_int(v, "a slice index");
    if (x < 0) x += n;
    if (st > 0) return std::clamp<int64_t>(x, 0, n);
    return std::clamp<int64_t>(x, -1, n - 1);
  };
  b = norm(start, st > 0 ? 0 : n - 1);
  e = norm(stop, st > 0 ? n : -1);
}

Value method(const Value& self, const std::string& name, Function fn) {
  (void)self;
  return Value::function(name, std::move(fn));
}

bool starts_or_ends(const std::string& s, const Value& what, bool start) {
  auto one = [&](const Value& p) {
    const std::string& x = need_str(p, start ? "startswith" : "endswith").s;
    return s.size() >= x.size() && s.compare(start ? 0 : s.size() - x.size(), x.size(), x) == 0;
  };
  if (what.type == Type::List) {
    for (const auto& p : *what.list)
      if (one(p)) return true;
    return false;
  }
  return one(what);
}

std::vector<std::string> split(const std::string& s, const Value& sep_v, int64_t maxsplit) {
  std::vector<std::string> out;
  if (sep_v.is_none() || sep_v.is_undefined()) {
    size_t i = 0;
    while (true) {
      while (i < s.size() && space_at(s, i)) i += space_at(s, i);
      if (i >= s.size()) break;
      if (maxsplit >= 0 && (int64_t)out.size() == maxsplit) {
        size_t e = s.size();
        while (e > i && space_before(s, e)) e -= space_before(s, e);
        out.push_back(s.substr(i, e - i));
        break;
      }
      size_t j = i;
      while (j < s.size() && !space_at(s, j)) ++j;
      out.push_back(s.substr(i, j - i));
      i = j;
    }
    return out;
  }
  const std::string& sep = need_str(sep_v, "split").s;
  DUO_CHECK(!sep.empty(), "chat template: empty separator");
  size_t at = 0;
  for (;;) {
    const size_t k = (maxsplit >= 0 && (int64_t)out.size() >= maxsplit) ? std::string::npos : s.find(sep, at);
    if (k == std::string::npos) {
      out.push_back(s.substr(at));
      return out;
    }
    out.push_back(s.substr(at, k - at));
    at = k + sep.size();
  }
}

std::string replace_all(const std::string& s, const std::string& from, const std::string& to, int64_t count,
                        Interpreter& in) {
  std::string out;
  if (from.empty()) {  // Python inserts `to` around every character
    const auto cs = code_point_starts(s);
    int64_t n = 0;
    for (size_t k = 0; k + 1 < cs.size(); ++k) {
      if (count < 0 || n++ < count) out += to;
      out += s.substr(cs[k], cs[k + 1] - cs[k]);
      in.check_size(out.size());
    }
    if (count < 0 || n < count) out += to;
    return out;
  }
  size_t at = 0;
  int64_t n = 0;
  for (size_t k; (count < 0 || n < count) && (k = s.find(from, at)) != std::string::npos; ++n) {
    out += s.substr(at, k - at);
    out += to;
    in.check_size(out.size());
    at = k + from.size();
  }
  out += s.substr(at);
  in.check_size(out.size());
  in.charge(out.size() / 16);
  return out;
}

std::string capitalize(const std::string& s) {
  std::string l = ascii_lower(s);
  if (!l.empty()) l[0] = (char)std::toupper((unsigned char)l[0]);
  return l;
}

// jinja2's title filter: words start after "-", whitespace, "(", "{", "[" or "<".
std::string title(const std::string& s) {
  std::string out;
  bool start = true;
  for (char c : s) {
    const bool sep = c == '-' || c == '(' || c == '{' || c == '[' || c == '<' || std::isspace((unsigned char)c);
    out += sep ? c : start ? (char)std::toupper((unsigned char)c) : (char)std::tolower((unsigned char)c);
    start = sep;
  }
  return out;
}

Value str_method(Interpreter& in, const Value& self, const std::string& name) {
  const Text t = self.str;
  auto strip = [t](bool l, bool r) {
    return [t, l, r](Interpreter&, Args& a) {
      const Value chars = a.get(0, "chars");
      const std::string* cs = chars.is_str() ? &chars.str.s : nullptr;
      const auto [b, e] = strip_range(t.s, cs, l, r);
      return str(t.substr(b, e - b));
    };
  };
  if (name == "strip") return method(self, name, strip(true, true));
  if (name == "lstrip") return method(self, name, strip(true, false));
  if (name == "rstrip") return method(self, name, strip(false, true));
  if (name == "startswith" || name == "endswith") {
    const bool s = name == "startswith";
    return method(self, name, [t, s](Interpreter&, Args& a) { return Value::boolean(starts_or_ends(t.s, a.get(0, "prefix"), s)); });
  }
  if (name == "split" || name == "rsplit") {
    return method(self, name, [t](Interpreter& in2, Args& a) {
      const Value m = a.get(1, "maxsplit");
      const auto parts = split(t.s, a.get(0, "sep"), m.is_undefined() ? -1 : need_int(m, "split"));
      in2.charge(parts.size());
      List l;
      for (const auto& p : parts) l.push_back(Value::string(t.derived(p)));
      return Value::of_list(std::move(l));
    });
  }
  if (name == "upper" || name == "lower" || name == "title" || name == "capitalize") {
    return method(self, name, [t, name](Interpreter&, Args&) {
      const std::string r = name == "upper" ? ascii_upper(t.s) : name == "lower" ? ascii_lower(t.s)
                            : name == "capitalize" ? capitalize(t.s) : title(t.s);
      return str(t.derived(r));
    });
  }
  if (name == "replace") {
    return method(self, name, [t](Interpreter& in2, Args& a) {
      const Value c = a.get(2, "count");
      const Value& from = a.get(0, "old");
      const Value& to = a.get(1, "new");
      const std::string r = replace_all(t.s, need_str(from, "replace").s, need_str(to, "replace").s,
                                        c.is_undefined() ? -1 : need_int(c, "replace"), in2);
      const bool trusted = t.all_trusted() && from.str.all_trusted() && to.str.all_trusted();
      return str(trusted ? Text::literal(r) : Text::data(r));
    });
  }
  if (name == "find" || name == "rfind" || name == "count" || name == "index") {
    return method(self, name, [t, name](Interpreter&, Args& a) {
      const Value sub_v = a.get(0, "sub");
      const std::string& sub = need_str(sub_v, name.c_str()).s;
      if (name == "count") {
        if (sub.empty()) return Value::integer((int64_t)code_point_starts(t.s).size());
        int64_t n = 0;
        for (size_t at = t.s.find(sub); at != std::string::npos; at = t.s.find(sub, at + sub.size())) ++n;
        return Value::integer(n);
      }
      const size_t at = name == "rfind" ? t.s.rfind(sub) : t.s.find(sub);
      if (at == std::string::npos) {
        DUO_CHECK(name != "index", "chat template: substring not found");
        return Value::integer(-1);
      }
      // A byte offset in code points.
      int64_t cp = 0;
      for (size_t k = 0; k < at; ++k) cp += ((unsigned char)t.s[k] & 0xC0) != 0x80;
      return Value::integer(cp);
    });
  }
  if (name == "join") {
    return method(self, name, [t](Interpreter& in2, Args& a) {
      Text out;
      const auto items = iterate(a.get(0, "iterable"));
      for (size_t k = 0; k < items.size(); ++k) {
        if (k) out.append(t);
        out.append(need_str(items[k], "join"));
        in2.check_size(out.s.size());
      }
      in2.charge(out.s.size() / 16);
      return str(std::move(out));
    });
  }
  if (name == "isdigit" || name == "isspace" || name == "isalpha" || name == "isalnum" || name == "islower" ||
      name == "isupper") {
    return method(self, name, [t, name](Interpreter&, Args&) {
      if (t.s.empty()) return Value::boolean(false);
      bool ok = true, cased = false;
      for (unsigned char c : t.s) {
        if (name == "isdigit") ok &= (bool)std::isdigit(c);
        if (name == "isspace") ok &= space_at(std::string(1, (char)c), 0) > 0;
        if (name == "isalpha") ok &= (bool)std::isalpha(c);
        if (name == "isalnum") ok &= (bool)std::isalnum(c);
        if (name == "islower") ok &= !std::isupper(c), cased |= (bool)std::islower(c);
        if (name == "isupper") ok &= !std::islower(c), cased |= (bool)std::isupper(c);
      }
      return Value::boolean(ok && ((name == "islower" || name == "isupper") ? cased : true));
    });
  }
  (void)in;
  return Value::undefined(name);
}

Value dict_method(const Value& self, const std::string& name) {
  auto d = self.dict;
  if (name == "items" || name == "keys" || name == "values") {
    return method(self, name, [d, name](Interpreter& in, Args&) {
      in.charge(d->items.size());
      List l;
      for (const auto& [k, v] : d->items) {
        if (name == "items") {
          l.push_back(Value::of_list({str(k), v}));
          l.back().tuple = true;
        }
        else l.push_back(name == "keys" ? str(k) : v);
      }
      return Value::of_list(std::move(l));
    });
  }
  if (name == "get") {
    return method(self, name, [d](Interpreter&, Args& a) {
      const Value key = a.get(0, "key");
      const Value* v = key.is_str() ? d->find(key.str.s) : nullptr;
      if (v) return *v;
      const Value def = a.get(1, "default");
      return def.is_undefined() ? Value::none() : def;
    });
  }
  return Value::undefined(name);
}

// "a.b.c" attribute paths of map/selectattr/sort.
Value attr_path(Interpreter& in, Value v, const std::string& path) {
  size_t at = 0;
  for (;;) {
    const size_t dot = path.find('.', at);
    const std::string part = path.substr(at, dot == std::string::npos ? std::string::npos : dot - at);
    const bool digits = !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return std::isdigit((unsigned char)c); });
    v = digits ? get_item(in, v, Value::integer(std::stoll(part.substr(0, 18)))) : get_item(in, v, data_str(part));
    if (dot == std::string::npos) return v;
    at = dot + 1;
  }
}

Args rest_args(const Args& a, size_t from) {
  Args r;
  for (size_t k = from; k < a.pos.size(); ++k) r.pos.push_back(a.pos[k]);
  return r;
}

int cmp_values(const Value& a, const Value& b, bool case_sensitive) {
  if (a.is_number() && b.is_number()) return a.as_double() < b.as_double() ? -1 : a.as_double() > b.as_double();
  if (a.is_str() && b.is_str()) {
    const std::string x = case_sensitive ? a.str.s : ascii_lower(a.str.s);
    const std::string y = case_sensitive ? b.str.s : ascii_lower(b.str.s);
    return x.compare(y) < 0 ? -1 : x == y ? 0 : 1;
  }
  fail("chat template: '<' not supported between instances of '{}' and '{}'", type_name(a), type_name(b));
}

std::string html_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&#34;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

// Python's str.splitlines() for jinja2's indent filter (ASCII line breaks).
std::vector<std::string> split_lines(const std::string& s) {
  std::vector<std::string> out;
  size_t at = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (c == '\n' || c == '\r' || c == '\v' || c == '\f' || c == '\x1c' || c == '\x1d' || c == '\x1e') {
      out.push_back(s.substr(at, i - at));
      if (c == '\r' && i + 1 < s.size() && s[i + 1] == '\n') ++i;
      at = i + 1;
    }
  }
  if (at < s.size()) out.push_back(s.substr(at));
  return out;
}

}  // namespace

int64_t length(const Value& v) {
  switch (v.type) {
    case Type::Str: return (int64_t)code_point_starts(v.str.s).size() - 1;
    case Type::List: return (int64_t)v.list->size();
    case Type::Dict: return (int64_t)v.dict->items.size();
    case Type::Undefined: return 0;
    default: fail("chat template: object of type '{}' has no len()", type_name(v));
  }
}

std::vector<Value> iterate(const Value& v) {
  std::vector<Value> out;
  switch (v.type) {
    case Type::List: return *v.list;
    case Type::Dict:
      DUO_CHECK(!v.dict->is_namespace, "chat template: a namespace is not iterable");
      for (const auto& [k, x] : v.dict->items) out.push_back(str(k));
      return out;
    case Type::Str: {
      const auto cs = code_point_starts(v.str.s);
      for (size_t k = 0; k + 1 < cs.size(); ++k) out.push_back(str(v.str.substr(cs[k], cs[k + 1] - cs[k])));
      return out;
    }
    case Type::Undefined: return out;
    default: fail("chat template: '{}' object is not iterable", type_name(v));
  }
}

Value get_attr(Interpreter& in, const Value& obj, const std::string& name) {
  switch (obj.type) {
    case Type::Undefined:
      fail("chat template: '{}' is undefined (reading .{})", obj.name.empty() ? "value" : obj.name, name);
    case Type::Dict: {
      if (!obj.dict->is_namespace) {
        Value m = dict_method(obj, name);
        if (!m.is_undefined()) return m;
      }
      const Value* v = obj.dict->find(name);
      return v ? *v : Value::undefined(name);
    }
    case Type::Str: return str_method(in, obj, name);
    default: return Value::undefined(name);
  }
}

Value get_item(Interpreter& in, const Value& obj, const Value& key) {
  switch (obj.type) {
    case Type::Undefined:
      fail("chat template: '{}' is undefined (reading [{}])", obj.name.empty() ? "value" : obj.name, repr(key));
    case Type::Dict: {
      if (key.is_str()) {
        if (const Value* v = obj.dict->find(key.str.s)) return *v;
        return obj.dict->is_namespace ? Value::undefined(key.str.s) : dict_method(obj, key.str.s);
      }
      return Value::undefined();
    }
    case Type::List: {
      if (key.type != Type::Int && key.type != Type::Bool) return Value::undefined();
      int64_t i = key.type == Type::Bool ? key.b : key.i;
      const int64_t n = (int64_t)obj.list->size();
      if (i < 0) i += n;
      return i >= 0 && i < n ? (*obj.list)[(size_t)i] : Value::undefined();
    }
    case Type::Str: {
      if (key.is_str()) return str_method(in, obj, key.str.s);
      if (key.type != Type::Int) return Value::undefined();
      const auto cs = code_point_starts(obj.str.s);
      int64_t i = key.i;
      const int64_t n = (int64_t)cs.size() - 1;
      if (i < 0) i += n;
      if (i < 0 || i >= n) return Value::undefined();
      return str(obj.str.substr(cs[(size_t)i], cs[(size_t)i + 1] - cs[(size_t)i]));
    }
    default: return Value::undefined();
  }
}

Value get_slice(Interpreter& in, const Value& obj, const Value& start, const Value& stop, const Value& step) {
  int64_t b, e, st;
  if (obj.type == Type::List) {
    slice_bounds((int64_t)obj.list->size(), start, stop, step, b, e, st);
    List out;
    for (int64_t k = b; st > 0 ? k < e : k > e; k += st) out.push_back((*obj.list)[(size_t)k]);
    in.charge(out.size());
    return Value::of_list(std::move(out));
  }
  if (obj.is_str()) {
    const auto cs = code_point_starts(obj.str.s);
    slice_bounds((int64_t)cs.size() - 1, start, stop, step, b, e, st);
    in.charge(obj.str.s.size() / 16);
    if (st == 1) return str(b < e ? obj.str.substr(cs[(size_t)b], cs[(size_t)e] - cs[(size_t)b]) : Text{});
    Text out;
    for (int64_t k = b; st > 0 ? k < e : k > e; k += st) out.append(obj.str.substr(cs[(size_t)k], cs[(size_t)k + 1] - cs[(size_t)k]));
    return str(std::move(out));
  }
  fail("chat template: '{}' object is not subscriptable", type_name(obj));
}

Value global_function(const std::string& name) {
  if (name == "raise_exception") {
    return Value::function(name, [](Interpreter&, Args& a) -> Value {
      const Value m = a.get(0, "message");
      fail("chat template error: {}", m.is_str() ? m.str.s : repr(m));
    });
  }
  if (name == "namespace" || name == "dict") {
    const bool ns = name == "namespace";
    return Value::function(name, [ns](Interpreter&, Args& a) {
      auto d = std::make_shared<Dict>();
      d->is_namespace = ns;
      for (const auto& p : a.pos) {
        DUO_CHECK(p.type == Type::Dict, "chat template: {}() takes keyword arguments or a dict", ns ? "namespace" : "dict");
        for (const auto& [k, v] : p.dict->items) d->set(k, v);
      }
      for (const auto& [k, v] : a.kw) d->set(Text::literal(k), v);
      return Value::of_dict(std::move(d));
    });
  }
  if (name == "range") {
    return Value::function(name, [](Interpreter& in, Args& a) {
      DUO_CHECK(!a.pos.empty() && a.pos.size() <= 3, "chat template: range() takes 1 to 3 arguments");
      int64_t b = 0, e, st = 1;
      if (a.pos.size() == 1) {
        e = need_int(a.pos[0], "range");
      } else {
        b = need_int(a.pos[0], "range");
        e = need_int(a.pos[1], "range");
        if (a.pos.size() == 3) st = need_int(a.pos[2], "range");
      }
      DUO_CHECK(st != 0, "chat template: range() step must not be zero");
      const double n = std::max(0.0, std::ceil(((double)e - (double)b) / (double)st));
      DUO_CHECK(n <= 1e6, "chat template: range() of {} items is too long", n);
      in.charge((uint64_t)n);
      List l;
      for (int64_t k = b; st > 0 ? k < e : k > e; k += st) l.push_back(Value::integer(k));
      return Value::of_list(std::move(l));
    });
  }
  if (name == "strftime_now") {
    return Value::function(name, [](Interpreter&, Args& a) {
      const Value fmt_v = a.get(0, "format");
      const std::string& f = need_str(fmt_v, "strftime_now").s;
      const std::time_t now = std::time(nullptr);
      std::tm tm{};
      localtime_r(&now, &tm);
      char buf[256];
      const size_t n = f.size() < 64 ? std::strftime(buf, sizeof buf, f.c_str(), &tm) : 0;
      return data_str(std::string(buf, n));
    });
  }
  return Value::undefined(name);
}

bool apply_test(Interpreter& in, const std::string& name, const Value& v, Args& args) {
  const Value arg = args.get(0, "value");
  if (name == "defined") return !v.is_undefined();
  if (name == "undefined") return v.is_undefined();
  if (name == "none") return v.is_none();
  if (name == "string") return v.is_str();
  if (name == "number") return v.type == Type::Int || v.type == Type::Float;
  if (name == "integer") return v.type == Type::Int;
  if (name == "float") return v.type == Type::Float;
  if (name == "boolean") return v.type == Type::Bool;
  if (name == "true") return v.type == Type::Bool && v.b;
  if (name == "false") return v.type == Type::Bool && !v.b;
  if (name == "mapping") return v.type == Type::Dict && !v.dict->is_namespace;
  if (name == "iterable") return v.is_str() || v.type == Type::List || (v.type == Type::Dict && !v.dict->is_namespace);
  if (name == "sequence") return v.is_str() || v.type == Type::List || (v.type == Type::Dict && !v.dict->is_namespace);
  if (name == "callable") return v.type == Type::Func;
  if (name == "equalto" || name == "eq" || name == "==") return equals(v, arg);
  if (name == "ne" || name == "!=") return !equals(v, arg);
  if (name == "sameas") {
    // Python's "is": scalars by value (small ints and short strings are shared objects there),
    // containers by identity.
    if (v.type != arg.type) return false;
    if (v.type == Type::List) return v.list == arg.list;
    if (v.type == Type::Dict) return v.dict == arg.dict;
    return equals(v, arg);
  }
  if (name == "lt" || name == "lessthan" || name == "<") return cmp_values(v, arg, true) < 0;
  if (name == "le" || name == "<=") return cmp_values(v, arg, true) <= 0;
  if (name == "gt" || name == "greaterthan" || name == ">") return cmp_values(v, arg, true) > 0;
  if (name == "ge" || name == ">=") return cmp_values(v, arg, true) >= 0;
  if (name == "in") {
    if (arg.is_str()) return v.is_str() && arg.str.s.find(v.str.s) != std::string::npos;
    for (const auto& x : iterate(arg))
      if (equals(v, x)) return true;
    return false;
  }
  if (name == "divisibleby") {
    const int64_t d = need_int(arg, "divisibleby");
    DUO_CHECK(d != 0, "chat template: divisibleby(0)");
    return need_int(v, "divisibleby") % d == 0;
  }
  if (name == "even") return need_int(v, "even") % 2 == 0;
  if (name == "odd") return need_int(v, "odd") % 2 != 0;
  if (name == "lower") return v.is_str() && ascii_lower(v.str.s) == v.str.s;
  if (name == "upper") return v.is_str() && ascii_upper(v.str.s) == v.str.s;
  (void)in;
  fail("chat template: no test named '{}'", name);
}

Value apply_filter(Interpreter& in, const std::string& name, const Value& v, Args& args) {
  in.charge(1);
  if (name == "trim") {
    const Text t = v.is_str() ? v.str : to_text(v);
    const Value chars = args.get(0, "chars");
    const auto [b, e] = strip_range(t.s, chars.is_str() ? &chars.str.s : nullptr, true, true);
    return str(t.substr(b, e - b));
  }
  if (name == "length" || name == "count") return Value::integer(length(v));
  if (name == "string") return str(v.is_undefined() ? Text{} : to_text(v));
  if (name == "safe") return v;
  if (name == "tojson") {
    // transformers' tojson: json.dumps(x, ensure_ascii=False, indent=indent, separators=..., sort_keys=...).
    JsonStyle st;
    const Value ea = args.get(0, "ensure_ascii"), ind = args.get(1, "indent"), sep = args.get(2, "separators"),
                sk = args.get(3, "sort_keys");
    st.ensure_ascii = truthy(ea);
    if (!ind.is_undefined() && !ind.is_none()) {
      st.indent = (int)std::clamp<int64_t>(need_int(ind, "tojson indent"), 0, 64);
      st.item_sep.resize(1);  // ", " -> "," (json.dumps with an indent)
    }
    if (sep.type == Type::List && sep.list->size() == 2) {
      st.item_sep = need_str((*sep.list)[0], "tojson separators").s;
      st.key_sep = need_str((*sep.list)[1], "tojson separators").s;
    }
    st.sort_keys = truthy(sk);
    std::string out = to_json_text(v, st);
    in.check_size(out.size());
    in.charge(out.size() / 16);
    return data_str(std::move(out));
  }
  if (name == "upper" || name == "lower" || name == "capitalize" || name == "title") {
    const Text t = to_text(v);
    const std::string r = name == "upper" ? ascii_upper(t.s) : name == "lower" ? ascii_lower(t.s)
                          : name == "capitalize" ? capitalize(t.s) : title(t.s);
    return str(t.derived(r));
  }
  if (name == "replace") {
    const Text t = to_text(v);
    const Value from = args.get(0, "old"), to = args.get(1, "new"), c = args.get(2, "count");
    const std::string r = replace_all(t.s, to_text(from).s, to_text(to).s, c.is_undefined() ? -1 : need_int(c, "replace"), in);
    const bool trusted = t.all_trusted() && to_text(from).all_trusted() && to_text(to).all_trusted();
    return str(trusted ? Text::literal(r) : Text::data(r));
  }
  if (name == "default" || name == "d") {
    const bool boolean = truthy(args.get(1, "boolean"));
    if (v.is_undefined() || (boolean && !truthy(v))) {
      const Value d = args.get(0, "default_value");
      return d.is_undefined() ? data_str("") : d;
    }
    return v;
  }
  if (name == "first" || name == "last") {
    const auto items = iterate(v);
    if (items.empty()) return Value::undefined(name);
    return name == "first" ? items.front() : items.back();
  }
  if (name == "list") {
    auto items = iterate(v);
    in.charge(items.size());
    return Value::of_list(std::move(items));
  }
  if (name == "reverse") {
    if (v.is_str()) return get_slice(in, v, Value::none(), Value::none(), Value::integer(-1));
    auto items = iterate(v);
    std::reverse(items.begin(), items.end());
    in.charge(items.size());
    return Value::of_list(std::move(items));
  }
  if (name == "items") {
    if (v.is_undefined()) return Value::of_list({});
    DUO_CHECK(v.type == Type::Dict, "chat template: items filter expects a mapping, got {}", type_name(v));
    Args none;
    return in.call(dict_method(v, "items"), none);
  }
  if (name == "join") {
    const Value sep = args.get(0, "d"), attr = args.get(1, "attribute");
    const Text sep_t = sep.is_undefined() ? Text{} : to_text(sep);
    Text out;
    const auto items = iterate(v);
    for (size_t k = 0; k < items.size(); ++k) {
      if (k) out.append(sep_t);
      const Value item = attr.is_undefined() ? items[k] : attr_path(in, items[k], to_text(attr).s);
      out.append(item.is_undefined() ? Text{} : to_text(item));
      in.check_size(out.s.size());
    }
    in.charge(out.s.size() / 16 + items.size());
    return str(std::move(out));
  }
  if (name == "map") {
    List out;
    const Value attr = args.get(99, "attribute");
    for (const auto& item : iterate(v)) {
      if (!attr.is_undefined()) {
        Value x = attr_path(in, item, to_text(attr).s);
        if (x.is_undefined()) {
          const Value def = args.get(99, "default");
          if (!def.is_undefined()) x = def;
        }
        out.push_back(x);
      } else {
        DUO_CHECK(!args.pos.empty(), "chat template: map needs a filter name or attribute=");
        Args rest = rest_args(args, 1);
        out.push_back(apply_filter(in, need_str(args.pos[0], "map").s, item, rest));
      }
    }
    in.charge(out.size());
    return Value::of_list(std::move(out));
  }
  if (name == "select" || name == "reject" || name == "selectattr" || name == "rejectattr") {
    const bool by_attr = name == "selectattr" || name == "rejectattr";
    const bool keep_if = name == "select" || name == "selectattr";
    const size_t test_at = by_attr ? 1 : 0;
    List out;
    for (const auto& item : iterate(v)) {
      const Value attr = args.get(0, "attribute");
      const Value x = by_attr ? attr_path(in, item, need_str(attr, name.c_str()).s) : item;
      bool ok;
      if (args.pos.size() > test_at) {
        Args rest = rest_args(args, test_at + 1);
        ok = apply_test(in, need_str(args.pos[test_at], name.c_str()).s, x, rest);
      } else {
        ok = truthy(x);
      }
      if (ok == keep_if) out.push_back(item);
    }
    in.charge(out.size());
    return Value::of_list(std::move(out));
  }
  if (name == "unique") {
    List out;
    for (const auto& item : iterate(v)) {
      bool seen = false;
      for (const auto& o : out) seen = seen || equals(o, item);
      in.charge(out.size());
      if (!seen) out.push_back(item);
    }
    return Value::of_list(std::move(out));
  }
  if (name == "sort") {
    auto items = iterate(v);
    const bool rev = truthy(args.get(0, "reverse")), cs = truthy(args.get(1, "case_sensitive"));
    const Value attr = args.get(2, "attribute");
    auto key = [&](const Value& x) { return attr.is_undefined() ? x : attr_path(in, x, to_text(attr).s); };
    in.charge(items.size() * 8);
    std::stable_sort(items.begin(), items.end(), [&](const Value& a, const Value& b) {
      const int c = cmp_values(key(a), key(b), cs);
      return rev ? c > 0 : c < 0;
    });
    return Value::of_list(std::move(items));
  }
  if (name == "dictsort") {
    DUO_CHECK(v.type == Type::Dict, "chat template: dictsort expects a mapping");
    Args none;
    Value items = in.call(dict_method(v, "items"), none);
    List l = *items.list;
    std::stable_sort(l.begin(), l.end(), [](const Value& a, const Value& b) {
      return cmp_values((*a.list)[0], (*b.list)[0], false) < 0;
    });
    return Value::of_list(std::move(l));
  }
  if (name == "int") {
    if (v.type == Type::Int) return v;
    if (v.type == Type::Bool) return Value::integer(v.b);
    if (v.type == Type::Float && std::isfinite(v.f) && std::fabs(v.f) < 9e18) return Value::integer((int64_t)v.f);
    if (v.is_str()) {
      try {
        size_t used = 0;
        const std::string s = v.str.s.substr(strip_range(v.str.s, nullptr, true, true).first);
        const int64_t x = std::stoll(s, &used);
        if (used == strip_range(s, nullptr, true, true).second) return Value::integer(x);
      } catch (const std::exception&) {
      }
    }
    const Value d = args.get(0, "default");
    return d.is_undefined() ? Value::integer(0) : d;
  }
  if (name == "float") {
    if (v.is_number()) return Value::number(v.as_double());
    if (v.is_str()) {
      try {
        return Value::number(std::stod(v.str.s));
      } catch (const std::exception&) {
      }
    }
    const Value d = args.get(0, "default");
    return d.is_undefined() ? Value::number(0) : d;
  }
  if (name == "abs") {
    DUO_CHECK(v.is_number(), "chat template: bad operand type for abs(): '{}'", type_name(v));
    if (v.type == Type::Float) return Value::number(std::fabs(v.f));
    const int64_t x = v.type == Type::Bool ? v.b : v.i;
    DUO_CHECK(x != INT64_MIN, "chat template: integer overflow");
    return Value::integer(x < 0 ? -x : x);
  }
  if (name == "escape" || name == "e") {
    const Text t = to_text(v);
    return str(t.derived(html_escape(t.s)));
  }
  if (name == "indent") {
    const Value w = args.get(0, "width");
    const std::string ind = w.is_str() ? w.str.s : std::string((size_t)std::clamp<int64_t>(w.is_undefined() ? 4 : need_int(w, "indent"), 0, 256), ' ');
    const bool first = truthy(args.get(1, "first")), blank = truthy(args.get(2, "blank"));
    const Text t = to_text(v);
    const auto lines = split_lines(t.s + "\n");
    std::string out;
    for (size_t k = 0; k < lines.size(); ++k) {
      if (k) out += "\n";
      if ((k > 0 || first) && (blank || !lines[k].empty())) out += ind;
      out += lines[k];
      in.check_size(out.size());
    }
    if (blank && lines.empty() && first) out = ind;
    in.charge(out.size() / 16);
    return str(t.derived(out));
  }
  if (name == "min" || name == "max") {
    const auto items = iterate(v);
    if (items.empty()) return Value::undefined(name);
    Value best = items[0];
    for (const auto& x : items)
      if ((name == "min") ? cmp_values(x, best, false) < 0 : cmp_values(x, best, false) > 0) best = x;
    return best;
  }
  if (name == "sum") {
    const Value attr = args.get(0, "attribute");
    Value acc = args.get(1, "start");
    if (acc.is_undefined()) acc = Value::integer(0);
    for (const auto& x : iterate(v)) {
      const Value y = attr.is_undefined() ? x : attr_path(in, x, to_text(attr).s);
      DUO_CHECK(acc.is_number() && y.is_number(), "chat template: sum of non-numbers");
      acc = acc.type == Type::Float || y.type == Type::Float ? Value::number(acc.as_double() + y.as_double())
                                                              : Value::integer((int64_t)(acc.as_double() + y.as_double()));
    }
    return acc;
  }
  if (name == "round") {
    DUO_CHECK(v.is_number(), "chat template: round expects a number");
    const Value p = args.get(0, "precision");
    const double scale = std::pow(10.0, (double)std::clamp<int64_t>(p.is_undefined() ? 0 : need_int(p, "round"), -20, 20));
    return Value::number(std::round(v.as_double() * scale) / scale);
  }
  if (name == "wordcount") return Value::integer((int64_t)split(to_text(v).s, Value::none(), -1).size());
  fail("chat template: no filter named '{}'", name);
}

}  // namespace duo::jinja
