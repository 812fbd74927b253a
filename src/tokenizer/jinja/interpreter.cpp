#include "tokenizer/jinja/interpreter.h"

#include <cmath>

#include "core/error.h"
#include "tokenizer/jinja/builtins.h"
#include "tokenizer/jinja/parser.h"

namespace duo::jinja {

namespace {

[[noreturn]] void type_error(const char* op, const Value& l, const Value& r) {
  fail("chat template: unsupported operand type(s) for {}: '{}' and '{}'", op, type_name(l), type_name(r));
}

int64_t floor_div(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

}  // namespace

Interpreter::Interpreter(std::vector<std::pair<std::string, Value>> globals, Limits limits)
    : globals_(std::move(globals)), limits_(limits) {}

void Interpreter::charge(uint64_t steps) {
  steps_ += steps;
  DUO_CHECK(steps_ <= limits_.max_steps, "chat template: rendering took more than {} steps", limits_.max_steps);
}

bool Interpreter::holds(const Value& v, const Dict* target, int depth) {
  charge(1);
  DUO_CHECK(depth <= kMaxValueDepth, "chat template: values nested deeper than {}", kMaxValueDepth);
  if (v.type == Type::Dict) {
    if (v.dict.get() == target) return true;
    for (const auto& kv : v.dict->items)
      if (holds(kv.second, target, depth + 1)) return true;
  } else if (v.type == Type::List) {
    for (const Value& e : *v.list)
      if (holds(e, target, depth + 1)) return true;
  }
  return false;
}

void Interpreter::check_size(size_t bytes) const {
  DUO_CHECK(bytes <= limits_.max_bytes, "chat template: a string grew past {} bytes", limits_.max_bytes);
}

Text Interpreter::render(const Body& body) {
  frames_.assign(1, {});
  barrier_ = 0;
  Text out;
  if (exec(body, out) != Flow::Normal) fail("chat template: break or continue outside a loop");
  return out;
}

void Interpreter::emit(Text& out, const Text& t) {
  check_size(out.s.size() + t.s.size());
  charge(1 + t.s.size() / 16);
  out.append(t);
}

Interpreter::Flow Interpreter::exec(const Body& body, Text& out) {
  for (const auto& n : body) {
    const Flow f = exec(*n, out);
    if (f != Flow::Normal) return f;
  }
  return Flow::Normal;
}

Interpreter::Flow Interpreter::exec(const Node& n, Text& out) {
  charge(1);
  switch (n.kind) {
    case Node::Kind::Text:
      emit(out, Text::literal(n.text));
      return Flow::Normal;
    case Node::Kind::Output: {
      const Value v = eval(*n.expr);
      emit(out, v.is_undefined() ? Text{} : to_text(v));
      return Flow::Normal;
    }
    case Node::Kind::If:
      for (const auto& [cond, body] : n.branches)
        if (truthy(eval(*cond))) return exec(body, out);
      return exec(n.else_body, out);
    case Node::Kind::For: {
      const Value seq = eval(*n.expr);
      DUO_CHECK(seq.type != Type::None && seq.type != Type::Int && seq.type != Type::Float && seq.type != Type::Bool,
                "chat template: '{}' object is not iterable", type_name(seq));
      std::vector<Value> items = iterate(seq);
      charge(items.size());
      auto bind = [&](Frame& f, const Value& item) {
        if (n.names.size() == 1) {
          f.push_back({n.names[0], item});
          return;
        }
        const std::vector<Value> parts = iterate(item);
        DUO_CHECK(parts.size() == n.names.size(), "chat template: cannot unpack {} values into {} loop variables",
                  parts.size(), n.names.size());
        for (size_t k = 0; k < parts.size(); ++k) f.push_back({n.names[k], parts[k]});
      };
      if (n.filter) {  // {% for x in xs if cond %}: the loop sees only the items that pass
        std::vector<Value> kept;
        for (const auto& item : items) {
          frames_.emplace_back();
          bind(frames_.back(), item);
          const bool keep = truthy(eval(*n.filter));
          frames_.pop_back();
          if (keep) kept.push_back(item);
        }
        items = std::move(kept);
      }
      if (items.empty()) return exec(n.else_body, out);
      DUO_CHECK(loop_depth_ < kMaxNesting, "chat template: loops nest deeper than {}", kMaxNesting);
      ++loop_depth_;
      const int64_t len = (int64_t)items.size();
      for (int64_t k = 0; k < len; ++k) {
        auto loop = std::make_shared<Dict>();
        auto set = [&](const char* key, Value v) { loop->items.push_back({Text::literal(key), std::move(v)}); };
        set("index", Value::integer(k + 1));
        set("index0", Value::integer(k));
        set("revindex", Value::integer(len - k));
        set("revindex0", Value::integer(len - k - 1));
        set("first", Value::boolean(k == 0));
        set("last", Value::boolean(k == len - 1));
        set("length", Value::integer(len));
        set("depth", Value::integer(1));
        set("depth0", Value::integer(0));
        set("previtem", k > 0 ? items[k - 1] : Value::undefined("previtem"));
        set("nextitem", k + 1 < len ? items[k + 1] : Value::undefined("nextitem"));
        set("cycle", Value::function("cycle", [k](Interpreter&, Args& a) {
              DUO_CHECK(!a.pos.empty(), "chat template: loop.cycle() needs at least one value");
              return a.pos[(size_t)k % a.pos.size()];
            }));
        frames_.emplace_back();
        bind(frames_.back(), items[k]);
        frames_.back().push_back({"loop", Value::of_dict(loop)});
        Flow f;
        try {
          f = exec(n.body, out);
        } catch (...) {
          frames_.pop_back();
          --loop_depth_;
          throw;
        }
        frames_.pop_back();
        if (f == Flow::Break) break;
      }
      --loop_depth_;
      return Flow::Normal;
    }
    case Node::Kind::Set: {
      Value v = eval(*n.expr);
      if (n.target->kind == Expr::Kind::Name) {
        assign(n.target->name, std::move(v));
      } else {
        const Value obj = eval(*n.target->a[0]);
        DUO_CHECK(obj.type == Type::Dict && obj.dict->is_namespace,
                  "chat template: can only assign attributes of a namespace() (set {}.{})", n.target->a[0]->name,
                  n.target->name);
        // Namespaces are the only mutable values, so this is the one place a reference cycle
        // (shared_ptr: never freed) can form: refuse a value that holds the namespace itself.
        DUO_CHECK(!holds(v, obj.dict.get(), 0), "chat template: a namespace cannot contain itself (set {}.{})",
                  n.target->a[0]->name, n.target->name);
        obj.dict->set(Text::literal(n.target->name), std::move(v));
      }
      return Flow::Normal;
    }
    case Node::Kind::SetBlock: {
      Text captured;
      if (exec(n.body, captured) != Flow::Normal) fail("chat template: break or continue inside a set block");
      assign(n.names[0], Value::string(std::move(captured)));
      return Flow::Normal;
    }
    case Node::Kind::Macro:
      assign(n.names[0], make_macro(n));
      return Flow::Normal;
    case Node::Kind::Break:
      DUO_CHECK(loop_depth_ > 0, "chat template: break outside a loop");
      return Flow::Break;
    case Node::Kind::Continue:
      DUO_CHECK(loop_depth_ > 0, "chat template: continue outside a loop");
      return Flow::Continue;
    case Node::Kind::Scope:
      return exec(n.body, out);
  }
  return Flow::Normal;
}

void Interpreter::assign(const std::string& name, Value v) {
  Frame& f = frames_.back();
  for (auto& [k, old] : f)
    if (k == name) {
      old = std::move(v);
      return;
    }
  f.push_back({name, std::move(v)});
}

Value Interpreter::lookup(const std::string& name) {
  auto find_in = [&](const Frame& f) -> const Value* {
    for (auto it = f.rbegin(); it != f.rend(); ++it)
      if (it->first == name) return &it->second;
    return nullptr;
  };
  for (size_t k = frames_.size(); k-- > std::max<size_t>(barrier_, 1);)
    if (const Value* v = find_in(frames_[k])) return *v;
  if (const Value* v = find_in(frames_[0])) return *v;
  for (const auto& [k, v] : globals_)
    if (k == name) return v;
  return global_function(name).is_undefined() ? Value::undefined(name) : global_function(name);
}

Value Interpreter::make_macro(const Node& n) {
  const Node* node = &n;
  return Value::function(n.names[0], [node](Interpreter& in, Args& args) {
    DUO_CHECK(in.call_depth_ < in.limits_.max_call_depth, "chat template: macro calls nest deeper than {}",
              in.limits_.max_call_depth);
    DUO_CHECK(args.pos.size() <= node->params.size(), "chat template: macro '{}' takes {} arguments, got {}",
              node->names[0], node->params.size(), args.pos.size());
    Frame frame;
    for (size_t k = 0; k < node->params.size(); ++k) {
      const auto& [pname, def] = node->params[k];
      Value v = args.get(k, pname);
      if (v.is_undefined() && def) v = in.eval(*def);
      frame.push_back({pname, v});
    }
    const size_t saved_barrier = in.barrier_;
    in.frames_.push_back(std::move(frame));
    in.barrier_ = in.frames_.size() - 1;
    ++in.call_depth_;
    const int saved_loops = in.loop_depth_;
    in.loop_depth_ = 0;
    Text out;
    try {
      in.exec(node->body, out);
    } catch (...) {
      in.frames_.pop_back();
      in.barrier_ = saved_barrier;
      --in.call_depth_;
      in.loop_depth_ = saved_loops;
      throw;
    }
    in.frames_.pop_back();
    in.barrier_ = saved_barrier;
    --in.call_depth_;
    in.loop_depth_ = saved_loops;
    return Value::string(std::move(out));
  });
}

Value Interpreter::call(const Value& fn, Args& args) {
  DUO_CHECK(fn.type == Type::Func, "chat template: '{}' object{} is not callable", type_name(fn),
            fn.is_undefined() && !fn.name.empty() ? " '" + fn.name + "'" : std::string());
  charge(1);
  return (*fn.func)(*this, args);
}

Args Interpreter::eval_args(const Expr& e, size_t first) {
  Args args;
  for (size_t k = first; k < e.a.size(); ++k) args.pos.push_back(eval(*e.a[k]));
  for (const auto& [k, v] : e.kw) args.kw.push_back({k, eval(*v)});
  return args;
}

Value Interpreter::eval(const Expr& e) {
  charge(1);
  switch (e.kind) {
    case Expr::Kind::Literal: return e.lit;
    case Expr::Kind::Name: return lookup(e.name);
    case Expr::Kind::Attr: return get_attr(*this, eval(*e.a[0]), e.name);
    case Expr::Kind::Item: {
      const Value obj = eval(*e.a[0]);
      return get_item(*this, obj, eval(*e.a[1]));
    }
    case Expr::Kind::Slice: {
      const Value obj = eval(*e.a[0]);
      auto part = [&](size_t k) { return e.a[k] ? eval(*e.a[k]) : Value::none(); };
      const Value a = part(1), b = part(2), c = part(3);
      return get_slice(*this, obj, a, b, c);
    }
    case Expr::Kind::Call: {
      const Value fn = eval(*e.a[0]);
      Args args = eval_args(e, 1);
      return call(fn, args);
    }
    case Expr::Kind::Filter: {
      const Value v = eval(*e.a[0]);
      Args args = eval_args(e, 1);
      return apply_filter(*this, e.name, v, args);
    }
    case Expr::Kind::Test: {
      const Value v = eval(*e.a[0]);
      Args args = eval_args(e, 1);
      return Value::boolean(apply_test(*this, e.name, v, args) != e.negated);
    }
    case Expr::Kind::Neg:
    case Expr::Kind::Pos: {
      const Value v = eval(*e.a[0]);
      DUO_CHECK(v.is_number(), "chat template: bad operand type for unary {}: '{}'",
                e.kind == Expr::Kind::Neg ? "-" : "+", type_name(v));
      if (e.kind == Expr::Kind::Pos) return v.type == Type::Bool ? Value::integer(v.b) : v;
      if (v.type == Type::Float) return Value::number(-v.f);
      const int64_t x = v.type == Type::Bool ? v.b : v.i;
      DUO_CHECK(x != INT64_MIN, "chat template: integer overflow");
      return Value::integer(-x);
    }
    case Expr::Kind::Not: return Value::boolean(!truthy(eval(*e.a[0])));
    case Expr::Kind::And: {
      Value l = eval(*e.a[0]);
      return truthy(l) ? eval(*e.a[1]) : l;
    }
    case Expr::Kind::Or: {
      Value l = eval(*e.a[0]);
      return truthy(l) ? l : eval(*e.a[1]);
    }
    case Expr::Kind::Binary: {
      const Value l = eval(*e.a[0]);
      const Value r = eval(*e.a[1]);
      return eval_binary(e.name, l, r);
    }
    case Expr::Kind::Compare: {
      Value l = eval(*e.a[0]);
      for (size_t k = 0; k < e.ops.size(); ++k) {
        Value r = eval(*e.a[k + 1]);
        if (!compare(e.ops[k], l, r)) return Value::boolean(false);
        l = std::move(r);
      }
      return Value::boolean(true);
    }
    case Expr::Kind::Cond:
      if (truthy(eval(*e.a[1]))) return eval(*e.a[0]);
      return e.a[2] ? eval(*e.a[2]) : Value::undefined();
    case Expr::Kind::ListLit:
    case Expr::Kind::TupleLit: {
      List l;
      for (const auto& x : e.a) l.push_back(eval(*x));
      Value v = Value::of_list(std::move(l));
      v.tuple = e.kind == Expr::Kind::TupleLit;
      return v;
    }
    case Expr::Kind::DictLit: {
      auto d = std::make_shared<Dict>();
      for (size_t k = 0; k + 1 < e.a.size(); k += 2) {
        const Value key = eval(*e.a[k]);
        DUO_CHECK(key.is_str(), "chat template: dict keys must be strings (got {})", type_name(key));
        d->set(key.str, eval(*e.a[k + 1]));
      }
      return Value::of_dict(std::move(d));
    }
  }
  return Value::undefined();
}

Value Interpreter::eval_binary(const std::string& op, const Value& l, const Value& r) {
  if (op == "~") {
    Text t = l.is_undefined() ? Text{} : to_text(l);
    const Text rt = r.is_undefined() ? Text{} : to_text(r);
    check_size(t.s.size() + rt.s.size());
    charge((t.s.size() + rt.s.size()) / 16);
    t.append(rt);
    return Value::string(std::move(t));
  }
  DUO_CHECK(!l.is_undefined() && !r.is_undefined(), "chat template: '{}' is undefined",
            l.is_undefined() ? l.name : r.name);
  if (op == "+") {
    if (l.is_str() && r.is_str()) {
      check_size(l.str.s.size() + r.str.s.size());
      charge((l.str.s.size() + r.str.s.size()) / 16);
      Text t = l.str;
      t.append(r.str);
      return Value::string(std::move(t));
    }
    if (l.type == Type::List && r.type == Type::List) {
      charge(l.list->size() + r.list->size());
      List out = *l.list;
      out.insert(out.end(), r.list->begin(), r.list->end());
      return Value::of_list(std::move(out));
    }
  }
  const bool repeat = (l.is_str() || l.type == Type::List) ? r.type == Type::Int
                                                           : l.type == Type::Int && (r.is_str() || r.type == Type::List);
  if (op == "*" && repeat) {
    const Value& seq = l.type == Type::Int ? r : l;
    const int64_t n = std::max<int64_t>(0, l.type == Type::Int ? l.i : r.i);
    if (seq.is_str()) {
      DUO_CHECK(seq.str.s.empty() || (uint64_t)n <= limits_.max_bytes / seq.str.s.size(),
                "chat template: a string grew past {} bytes", limits_.max_bytes);
      charge(seq.str.s.size() * (uint64_t)n / 16);
      Text t;
      for (int64_t k = 0; k < n; ++k) t.append(seq.str);
      return Value::string(std::move(t));
    }
    DUO_CHECK(seq.list->empty() || (uint64_t)n <= limits_.max_bytes / 64 / seq.list->size(),
              "chat template: a list grew too long");
    charge(seq.list->size() * (uint64_t)n);
    List out;
    for (int64_t k = 0; k < n; ++k) out.insert(out.end(), seq.list->begin(), seq.list->end());
    return Value::of_list(std::move(out));
  }
  if (!l.is_number() || !r.is_number()) type_error(op.c_str(), l, r);
  const bool ints = l.type != Type::Float && r.type != Type::Float;
  const int64_t li = l.type == Type::Bool ? l.b : l.i, ri = r.type == Type::Bool ? r.b : r.i;
  const double lf = l.as_double(), rf = r.as_double();
  int64_t res = 0;
  if (op == "+") {
    if (!ints) return Value::number(lf + rf);
    DUO_CHECK(!__builtin_add_overflow(li, ri, &res), "chat template: integer overflow");
    return Value::integer(res);
  }
  if (op == "-") {
    if (!ints) return Value::number(lf - rf);
    DUO_CHECK(!__builtin_sub_overflow(li, ri, &res), "chat template: integer overflow");
    return Value::integer(res);
  }
  if (op == "*") {
    if (!ints) return Value::number(lf * rf);
    DUO_CHECK(!__builtin_mul_overflow(li, ri, &res), "chat template: integer overflow");
    return Value::integer(res);
  }
  if (op == "/") {
    DUO_CHECK(rf != 0, "chat template: division by zero");
    return Value::number(lf / rf);
  }
  if (op == "//" || op == "%") {
    DUO_CHECK(rf != 0, "chat template: {} by zero", op == "%" ? "modulo" : "integer division");
    if (ints) {
      DUO_CHECK(!(li == INT64_MIN && ri == -1), "chat template: integer overflow");
      const int64_t q = floor_div(li, ri);
      return Value::integer(op == "//" ? q : li - q * ri);
    }
    const double q = std::floor(lf / rf);
    return Value::number(op == "//" ? q : lf - q * rf);
  }
  if (op == "**") {
    if (ints && ri >= 0) {
      int64_t acc = 1;
      for (int64_t k = 0; k < ri; ++k) {
        DUO_CHECK(!__builtin_mul_overflow(acc, li, &acc), "chat template: integer overflow");
        if (acc == 0 || acc == 1) break;
        charge(1);
      }
      return Value::integer(acc);
    }
    return Value::number(std::pow(lf, rf));
  }
  type_error(op.c_str(), l, r);
}

bool Interpreter::compare(const std::string& op, const Value& l, const Value& r) {
  if (op == "==") return equals(l, r);
  if (op == "!=") return !equals(l, r);
  if (op == "in" || op == "not in") {
    bool found = false;
    if (r.is_str()) {
      DUO_CHECK(l.is_str(), "chat template: 'in <string>' requires string as left operand, not {}", type_name(l));
      charge(r.str.s.size() / 16);
      found = r.str.s.find(l.str.s) != std::string::npos;
    } else if (r.type == Type::List) {
      charge(r.list->size());
      for (const auto& x : *r.list)
        if (equals(l, x)) found = true;
    } else if (r.type == Type::Dict) {
      found = l.is_str() && r.dict->find(l.str.s) != nullptr;
    } else if (!r.is_undefined()) {
      fail("chat template: argument of type '{}' is not iterable", type_name(r));
    }
    return op == "in" ? found : !found;
  }
  int c = 0;
  if (l.is_number() && r.is_number()) {
    c = l.as_double() < r.as_double() ? -1 : l.as_double() > r.as_double() ? 1 : 0;
  } else if (l.is_str() && r.is_str()) {
    c = l.str.s.compare(r.str.s);
  } else {
    fail("chat template: '{}' not supported between instances of '{}' and '{}'", op, type_name(l), type_name(r));
  }
  if (op == "<") return c < 0;
  if (op == "<=") return c <= 0;
  if (op == ">") return c > 0;
  return c >= 0;
}

}  // namespace duo::jinja
