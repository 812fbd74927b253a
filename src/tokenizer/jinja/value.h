// Values of the Jinja subset chat templates use, with Python's semantics where templates can
// observe them (str() of numbers, None and lists; truthiness; equality). Lists and dicts are
// shared and never changed after creation, except namespace() objects, which templates
// assign attributes of ({% set ns.x = ... %}) and which may therefore form cycles: every
// recursive operation here takes a depth bound.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "tokenizer/jinja/text.h"

namespace duo::jinja {

struct Value;
struct Args;
class Interpreter;
using List = std::vector<Value>;
struct Dict;
using Function = std::function<Value(Interpreter&, Args&)>;

enum class Type { Undefined, None, Bool, Int, Float, Str, List, Dict, Func };

struct Value {
  Type type = Type::Undefined;
  bool b = false;
  int64_t i = 0;
  double f = 0;
  Text str;
  std::shared_ptr<const List> list;
  std::shared_ptr<Dict> dict;
  std::shared_ptr<const Function> func;
  std::string name;  // what an Undefined stands for, or a function's name (for messages)
  bool tuple = false;  // a List that Python would hold as a tuple: repr() writes (a, b)

  static Value undefined(std::string what = "") {
    Value v;
    v.name = std::move(what);
    return v;
  }
  static Value none() { return make(Type::None); }
  static Value boolean(bool x) {
    Value v = make(Type::Bool);
    v.b = x;
    return v;
  }
  static Value integer(int64_t x) {
    Value v = make(Type::Int);
    v.i = x;
    return v;
  }
  static Value number(double x) {
    Value v = make(Type::Float);
    v.f = x;
    return v;
  }
  static Value string(Text t) {
    Value v = make(Type::Str);
    v.str = std::move(t);
    return v;
  }
  static Value of_list(List l) {
    Value v = make(Type::List);
    v.list = std::make_shared<const List>(std::move(l));
    return v;
  }
  static Value of_dict(std::shared_ptr<Dict> d) {
    Value v = make(Type::Dict);
    v.dict = std::move(d);
    return v;
  }
  static Value function(std::string name, Function fn) {
    Value v = make(Type::Func);
    v.name = std::move(name);
    v.func = std::make_shared<const Function>(std::move(fn));
    return v;
  }
  // Conversation data: every string in it counts as not written by the template.
  static Value from_json(const nlohmann::ordered_json& j, int depth = 0);

  bool is_undefined() const { return type == Type::Undefined; }
  bool is_none() const { return type == Type::None; }
  bool is_str() const { return type == Type::Str; }
  bool is_number() const { return type == Type::Int || type == Type::Float || type == Type::Bool; }
  double as_double() const { return type == Type::Float ? f : (double)(type == Type::Bool ? b : i); }

 private:
  static Value make(Type t) {
    Value v;
    v.type = t;
    return v;
  }
};

// A dict keeps insertion order (as Python's does); keys are strings.
struct Dict {
  std::vector<std::pair<Text, Value>> items;
  bool is_namespace = false;
  const Value* find(const std::string& key) const;
  void set(const Text& key, Value v);
};

// Positional and keyword arguments of a call.
struct Args {
  std::vector<Value> pos;
  std::vector<std::pair<std::string, Value>> kw;
  // The argument at position i or named `name`, else Undefined.
  Value get(size_t i, const std::string& name) const;
};

// Limits on recursive value operations (namespace cycles) and on string sizes.
inline constexpr int kMaxValueDepth = 64;

const char* type_name(const Value& v);
bool truthy(const Value& v);
// Python's str(): strings as they are, None -> "None", True -> "True", lists as their repr.
Text to_text(const Value& v);
std::string repr(const Value& v, int depth = 0);
bool equals(const Value& a, const Value& b, int depth = 0);
// HF's tojson filter: json.dumps(x, ensure_ascii=False, indent=indent, separators=..., sort_keys=...).
struct JsonStyle {
  int indent = -1;  // < 0: one line
  std::string item_sep = ", ", key_sep = ": ";
  bool sort_keys = false;
  bool ensure_ascii = false;
};
std::string to_json_text(const Value& v, const JsonStyle& style);
// Python's repr() of a float.
std::string float_repr(double x);

}  // namespace duo::jinja
