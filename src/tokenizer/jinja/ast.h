// The parsed template: statements (Node) holding expressions (Expr).
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tokenizer/jinja/value.h"

namespace duo::jinja {

struct Expr;
using ExprP = std::unique_ptr<Expr>;
using Kwargs = std::vector<std::pair<std::string, ExprP>>;

struct Expr {
  enum class Kind {
    Literal,   // lit
    Name,      // name
    Attr,      // a[0].name
    Item,      // a[0][a[1]]
    Slice,     // a[0][a[1]:a[2]:a[3]] (null parts absent)
    Call,      // a[0](a[1..], kw)
    Filter,    // a[0] | name(a[1..], kw)
    Test,      // a[0] is [not] name(a[1..], kw)
    Neg,       // -a[0]
    Pos,       // +a[0]
    Not,       // not a[0]
    Binary,    // a[0] name a[1]: + - * / // % ** ~ in "not in"
    And,       // a[0] and a[1]
    Or,        // a[0] or a[1]
    Compare,   // a[0] ops[0] a[1] ops[1] a[2] ...
    Cond,      // a[0] if a[1] else a[2] (a[2] null: undefined)
    ListLit,   // [a...]
    TupleLit,  // (a...) (a list)
    DictLit,   // {a[0]: a[1], a[2]: a[3], ...}
  };
  Kind kind = Kind::Literal;
  size_t pos = 0;
  Value lit;
  std::string name;
  std::vector<ExprP> a;
  std::vector<std::string> ops;
  Kwargs kw;
  bool negated = false;
};

struct Node;
using NodeP = std::unique_ptr<Node>;
using Body = std::vector<NodeP>;

struct Node {
  enum class Kind {
    Text,      // text
    Output,    // {{ expr }}
    If,        // branches (cond, body)..., else_body
    For,       // for names in expr [if filter]: body, else_body
    Set,       // set target = expr (target: a Name, or an Attr of a namespace)
    SetBlock,  // set names[0]: the rendered body
    Macro,     // macro names[0](params): body
    Break,
    Continue,
    Scope,     // a block rendered in place ({% generation %} of HF templates)
  };
  Kind kind = Kind::Text;
  size_t pos = 0;
  std::string text;
  ExprP expr, target, filter;
  std::vector<std::string> names;
  std::vector<std::pair<ExprP, Body>> branches;
  Body body, else_body;
  std::vector<std::pair<std::string, ExprP>> params;  // default may be null
};

}  // namespace duo::jinja
