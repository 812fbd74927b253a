// Renders a parsed template. A template is untrusted input (it comes with the model file), so
// rendering is bounded: every evaluation step and every byte of string built is charged against
// Limits::max_steps, output and strings have a size cap, macro calls a depth cap. Exceeding one
// throws duo::Error; so does raise_exception() and any type error, with Python's wording where
// jinja2 would have raised.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "tokenizer/jinja/ast.h"

namespace duo::jinja {

struct Limits {
  uint64_t max_steps = 50'000'000;   // evaluation steps (a byte of string built costs 1/16)
  size_t max_bytes = 256u << 20;     // any one string, the output included
  int max_call_depth = 32;           // nested macro calls
};

class Interpreter {
 public:
  Interpreter(std::vector<std::pair<std::string, Value>> globals, Limits limits);
  Text render(const Body& body);

  // For the built-in filters and functions.
  void charge(uint64_t steps);
  // Whether v is, or holds at any depth, the dict `target` (charged a step a value visited).
  bool holds(const Value& v, const Dict* target, int depth);
  void check_size(size_t bytes) const;
  Value call(const Value& fn, Args& args);
  const Limits& limits() const { return limits_; }

 private:
  enum class Flow { Normal, Break, Continue };
  using Frame = std::vector<std::pair<std::string, Value>>;

  Flow exec(const Body& body, Text& out);
  Flow exec(const Node& n, Text& out);
  Value eval(const Expr& e);
  Value eval_binary(const std::string& op, const Value& l, const Value& r);
  bool compare(const std::string& op, const Value& l, const Value& r);
  Args eval_args(const Expr& e, size_t first);
  Value lookup(const std::string& name);
  void assign(const std::string& name, Value v);
  Value make_macro(const Node& n);
  void emit(Text& out, const Text& t);

  std::vector<std::pair<std::string, Value>> globals_;
  Limits limits_;
  std::vector<Frame> frames_;
  size_t barrier_ = 0;  // frames below this index (but 0) are hidden: a macro's caller's locals
  uint64_t steps_ = 0;
  int call_depth_ = 0;
  int loop_depth_ = 0;
};

}  // namespace duo::jinja
