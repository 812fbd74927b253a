#include "tokenizer/jinja/parser.h"

#include "core/error.h"
#include "tokenizer/jinja/lexer.h"

namespace duo::jinja {

namespace {

using K = Token::Kind;

class Parser {
 public:
  explicit Parser(std::vector<Token> toks) : t_(std::move(toks)) {}

  Body parse_all() {
    std::string end;
    Body b = parse_body({}, end);
    return b;
  }

 private:
  // Depth guard for the recursive descent.
  struct Nest {
    explicit Nest(Parser& p) : p_(p) {
      if (++p_.depth_ > kMaxNesting) p_.error("the template nests deeper than {} levels", kMaxNesting);
    }
    ~Nest() { --p_.depth_; }
    Parser& p_;
  };

  template <typename... A>
  [[noreturn]] void error(fmt::format_string<A...> f, A&&... args) {
    fail("chat template: {} (at offset {})", fmt::format(f, std::forward<A>(args)...), cur().pos);
  }
  const Token& cur() const { return t_[i_]; }
  const Token& peek(size_t k = 1) const { return t_[std::min(i_ + k, t_.size() - 1)]; }
  bool is_op(const char* op) const { return cur().kind == K::Op && cur().s == op; }
  bool is_name(const char* n) const { return cur().kind == K::Name && cur().s == n; }
  void advance() {
    if (i_ + 1 < t_.size()) ++i_;
  }
  void expect_op(const char* op) {
    if (!is_op(op)) error("expected '{}'", op);
    advance();
  }
  std::string expect_name() {
    if (cur().kind != K::Name) error("expected a name");
    std::string n = cur().s;
    advance();
    return n;
  }
  void expect_block_end() {
    if (cur().kind != K::BlockEnd) error("expected '%}}'");
    advance();
  }

  // Statements up to one of `ends` (a block tag whose keyword is in the list); `found` gets it.
  Body parse_body(const std::vector<std::string>& ends, std::string& found) {
    Nest nest(*this);
    Body body;
    for (;;) {
      const Token& t = cur();
      if (t.kind == K::End) {
        if (!ends.empty()) error("missing {{% {} %}}", ends.back());
        found.clear();
        return body;
      }
      if (t.kind == K::Text) {
        auto n = std::make_unique<Node>();
        n->kind = Node::Kind::Text;
        n->pos = t.pos;
        n->text = t.s;
        body.push_back(std::move(n));
        advance();
      } else if (t.kind == K::VarBegin) {
        auto n = std::make_unique<Node>();
        n->kind = Node::Kind::Output;
        n->pos = t.pos;
        advance();
        n->expr = parse_tuple_or_expr();
        if (cur().kind != K::VarEnd) error("expected '}}}}'");
        advance();
        body.push_back(std::move(n));
      } else if (t.kind == K::BlockBegin) {
        const Token& kw = peek();
        if (kw.kind != K::Name) {
          advance();
          error("expected a statement keyword");
        }
        for (const auto& e : ends)
          if (kw.s == e) {
            found = e;
            advance();
            advance();
            return body;
          }
        advance();
        body.push_back(parse_statement());
      } else {
        error("unexpected token");
      }
    }
  }

  NodeP parse_statement() {
    const size_t pos = cur().pos;
    const std::string kw = expect_name();
    auto n = std::make_unique<Node>();
    n->pos = pos;
    std::string found;
    if (kw == "if") {
      n->kind = Node::Kind::If;
      ExprP cond = parse_expr();
      expect_block_end();
      for (;;) {
        Body b = parse_body({"elif", "else", "endif"}, found);
        n->branches.push_back({std::move(cond), std::move(b)});
        if (found == "elif") {
          cond = parse_expr();
          expect_block_end();
          continue;
        }
        if (found == "else") {
          expect_block_end();
          n->else_body = parse_body({"endif"}, found);
        }
        expect_block_end();
        break;
      }
    } else if (kw == "for") {
      n->kind = Node::Kind::For;
      const bool paren = is_op("(");
      if (paren) advance();
      n->names.push_back(expect_name());
      while (is_op(",")) {
        advance();
        n->names.push_back(expect_name());
      }
      if (paren) expect_op(")");
      if (!is_name("in")) error("expected 'in'");
      advance();
      n->expr = parse_cond(false);  // "if" here filters the loop
      if (is_name("if")) {
        advance();
        n->filter = parse_expr();
      }
      if (is_name("recursive")) error("recursive loops are not supported");
      expect_block_end();
      n->body = parse_body({"else", "endfor"}, found);
      if (found == "else") {
        expect_block_end();
        n->else_body = parse_body({"endfor"}, found);
      }
      expect_block_end();
    } else if (kw == "set") {
      const std::string name = expect_name();
      if (cur().kind == K::BlockEnd) {
        n->kind = Node::Kind::SetBlock;
        n->names.push_back(name);
        advance();
        n->body = parse_body({"endset"}, found);
        expect_block_end();
        return n;
      }
      n->kind = Node::Kind::Set;
      auto target = std::make_unique<Expr>();
      target->kind = Expr::Kind::Name;
      target->name = name;
      target->pos = pos;
      if (is_op(".")) {
        advance();
        auto attr = std::make_unique<Expr>();
        attr->kind = Expr::Kind::Attr;
        attr->name = expect_name();
        attr->a.push_back(std::move(target));
        target = std::move(attr);
      }
      n->target = std::move(target);
      expect_op("=");
      n->expr = parse_tuple_or_expr();
      expect_block_end();
    } else if (kw == "macro") {
      n->kind = Node::Kind::Macro;
      n->names.push_back(expect_name());
      expect_op("(");
      while (!is_op(")")) {
        std::string p = expect_name();
        ExprP def;
        if (is_op("=")) {
          advance();
          def = parse_expr();
        }
        n->params.push_back({p, std::move(def)});
        if (!is_op(",")) break;
        advance();
      }
      expect_op(")");
      expect_block_end();
      n->body = parse_body({"endmacro"}, found);
      expect_block_end();
    } else if (kw == "break" || kw == "continue") {
      n->kind = kw == "break" ? Node::Kind::Break : Node::Kind::Continue;
      expect_block_end();
    } else if (kw == "generation") {
      n->kind = Node::Kind::Scope;
      expect_block_end();
      n->body = parse_body({"endgeneration"}, found);
      expect_block_end();
    } else {
      error("unsupported statement '{}'", kw);
    }
    return n;
  }

  // {{ a, b }} and {% set x = a, b %} make tuples.
  ExprP parse_tuple_or_expr() {
    const size_t pos = cur().pos;
    ExprP e = parse_expr();
    if (!is_op(",")) return e;
    auto t = node(Expr::Kind::TupleLit, pos);
    t->a.push_back(std::move(e));
    while (is_op(",")) {
      advance();
      if (cur().kind == K::VarEnd || cur().kind == K::BlockEnd) break;
      t->a.push_back(parse_expr());
    }
    return t;
  }

  static ExprP node(Expr::Kind k, size_t pos) {
    auto e = std::make_unique<Expr>();
    e->kind = k;
    e->pos = pos;
    return e;
  }
  static ExprP binary(Expr::Kind k, std::string op, ExprP l, ExprP r, size_t pos) {
    auto e = node(k, pos);
    e->name = std::move(op);
    e->a.push_back(std::move(l));
    e->a.push_back(std::move(r));
    return e;
  }

  ExprP parse_expr() { return parse_cond(true); }

  ExprP parse_cond(bool with_cond) {
    Nest nest(*this);
    ExprP e = parse_or();
    while (with_cond && is_name("if")) {
      const size_t pos = cur().pos;
      advance();
      ExprP cond = parse_or();
      ExprP other;
      if (is_name("else")) {
        advance();
        other = parse_cond(true);
      }
      auto c = node(Expr::Kind::Cond, pos);
      c->a.push_back(std::move(e));
      c->a.push_back(std::move(cond));
      c->a.push_back(std::move(other));
      e = std::move(c);
    }
    return e;
  }

  ExprP parse_or() {
    ExprP e = parse_and();
    while (is_name("or")) {
      const size_t pos = cur().pos;
      advance();
      e = binary(Expr::Kind::Or, "or", std::move(e), parse_and(), pos);
    }
    return e;
  }

  ExprP parse_and() {
    ExprP e = parse_not();
    while (is_name("and")) {
      const size_t pos = cur().pos;
      advance();
      e = binary(Expr::Kind::And, "and", std::move(e), parse_not(), pos);
    }
    return e;
  }

  ExprP parse_not() {
    if (is_name("not")) {
      Nest nest(*this);
      const size_t pos = cur().pos;
      advance();
      auto e = node(Expr::Kind::Not, pos);
      e->a.push_back(parse_not());
      return e;
    }
    return parse_compare();
  }

  ExprP parse_compare() {
    const size_t pos = cur().pos;
    ExprP first = parse_math1();
    ExprP cmp;
    for (;;) {
      std::string op;
      if (cur().kind == K::Op && (cur().s == "==" || cur().s == "!=" || cur().s == "<" || cur().s == "<=" ||
                                  cur().s == ">" || cur().s == ">=")) {
        op = cur().s;
        advance();
      } else if (is_name("in")) {
        op = "in";
        advance();
      } else if (is_name("not") && peek().kind == K::Name && peek().s == "in") {
        op = "not in";
        advance();
        advance();
      } else {
        break;
      }
      if (!cmp) {
        cmp = node(Expr::Kind::Compare, pos);
        cmp->a.push_back(std::move(first));
      }
      cmp->ops.push_back(op);
      cmp->a.push_back(parse_math1());
    }
    return cmp ? std::move(cmp) : std::move(first);
  }

  ExprP parse_math1() {
    ExprP e = parse_concat();
    while (is_op("+") || is_op("-")) {
      const size_t pos = cur().pos;
      const std::string op = cur().s;
      advance();
      e = binary(Expr::Kind::Binary, op, std::move(e), parse_concat(), pos);
    }
    return e;
  }

  ExprP parse_concat() {
    ExprP e = parse_math2();
    while (is_op("~")) {
      const size_t pos = cur().pos;
      advance();
      e = binary(Expr::Kind::Binary, "~", std::move(e), parse_math2(), pos);
    }
    return e;
  }

  ExprP parse_math2() {
    ExprP e = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const size_t pos = cur().pos;
      const std::string op = cur().s;
      advance();
      e = binary(Expr::Kind::Binary, op, std::move(e), parse_pow(), pos);
    }
    return e;
  }

  ExprP parse_pow() {
    ExprP e = parse_unary(true);
    while (is_op("**")) {
      const size_t pos = cur().pos;
      advance();
      e = binary(Expr::Kind::Binary, "**", std::move(e), parse_unary(true), pos);
    }
    return e;
  }

  ExprP parse_unary(bool with_filter) {
    Nest nest(*this);
    const size_t pos = cur().pos;
    ExprP e;
    if (is_op("-") || is_op("+")) {
      const bool neg = is_op("-");
      advance();
      e = node(neg ? Expr::Kind::Neg : Expr::Kind::Pos, pos);
      e->a.push_back(parse_unary(false));
    } else {
      e = parse_primary();
    }
    e = parse_postfix(std::move(e));
    if (with_filter) e = parse_filters(std::move(e));
    return e;
  }

  ExprP parse_primary() {
    Nest nest(*this);
    const Token& t = cur();
    const size_t pos = t.pos;
    auto lit = [&](Value v) {
      auto e = node(Expr::Kind::Literal, pos);
      e->lit = std::move(v);
      advance();
      return e;
    };
    switch (t.kind) {
      case K::String: {
        std::string s = t.s;
        advance();
        while (cur().kind == K::String) {  // adjacent literals concatenate
          s += cur().s;
          advance();
        }
        auto e = node(Expr::Kind::Literal, pos);
        e->lit = Value::string(Text::literal(std::move(s)));
        return e;
      }
      case K::Int: return lit(Value::integer(t.i));
      case K::Float: return lit(Value::number(t.f));
      case K::Name: {
        const std::string& n = t.s;
        if (n == "true" || n == "True") return lit(Value::boolean(true));
        if (n == "false" || n == "False") return lit(Value::boolean(false));
        if (n == "none" || n == "None") return lit(Value::none());
        auto e = node(Expr::Kind::Name, pos);
        e->name = n;
        advance();
        return e;
      }
      case K::Op:
        if (t.s == "(") {
          advance();
          if (is_op(")")) {
            advance();
            return node(Expr::Kind::TupleLit, pos);
          }
          ExprP e = parse_expr();
          if (is_op(",")) {
            auto tup = node(Expr::Kind::TupleLit, pos);
            tup->a.push_back(std::move(e));
            while (is_op(",")) {
              advance();
              if (is_op(")")) break;
              tup->a.push_back(parse_expr());
            }
            e = std::move(tup);
          }
          expect_op(")");
          return e;
        }
        if (t.s == "[") {
          advance();
          auto l = node(Expr::Kind::ListLit, pos);
          while (!is_op("]")) {
            l->a.push_back(parse_expr());
            if (!is_op(",")) break;
            advance();
          }
          expect_op("]");
          return l;
        }
        if (t.s == "{") {
          advance();
          auto d = node(Expr::Kind::DictLit, pos);
          while (!is_op("}")) {
            d->a.push_back(parse_expr());
            expect_op(":");
            d->a.push_back(parse_expr());
            if (!is_op(",")) break;
            advance();
          }
          expect_op("}");
          return d;
        }
        break;
      default: break;
    }
    error("unexpected '{}'", t.kind == K::Op || t.kind == K::Name ? t.s : std::string("end of tag"));
  }

  void parse_call_args(Expr& e) {
    expect_op("(");
    while (!is_op(")")) {
      if (cur().kind == K::Name && peek().kind == K::Op && peek().s == "=") {
        std::string k = cur().s;
        advance();
        advance();
        e.kw.push_back({k, parse_expr()});
      } else {
        if (!e.kw.empty()) error("positional argument after a keyword argument");
        e.a.push_back(parse_expr());
      }
      if (!is_op(",")) break;
      advance();
    }
    expect_op(")");
  }

  ExprP parse_postfix(ExprP e) {
    for (int n = 0;; ++n) {
      if (n > kMaxNesting * 64) error("expression too long");
      const size_t pos = cur().pos;
      if (is_op(".")) {
        advance();
        auto a = node(Expr::Kind::Attr, pos);
        if (cur().kind == K::Int) {  // foo.0 is foo[0]
          a->kind = Expr::Kind::Item;
          auto idx = node(Expr::Kind::Literal, pos);
          idx->lit = Value::integer(cur().i);
          advance();
          a->a.push_back(std::move(e));
          a->a.push_back(std::move(idx));
        } else {
          a->name = expect_name();
          a->a.push_back(std::move(e));
        }
        e = std::move(a);
      } else if (is_op("[")) {
        advance();
        ExprP parts[3];
        int n_colons = 0;
        for (;;) {
          if (!is_op(":") && !is_op("]")) parts[n_colons] = parse_expr();
          if (is_op(":") && n_colons < 2) {
            ++n_colons;
            advance();
            continue;
          }
          break;
        }
        expect_op("]");
        auto s = node(n_colons ? Expr::Kind::Slice : Expr::Kind::Item, pos);
        s->a.push_back(std::move(e));
        if (!n_colons && !parts[0]) error("empty subscript");
        s->a.push_back(std::move(parts[0]));
        if (n_colons) {
          s->a.push_back(std::move(parts[1]));
          s->a.push_back(std::move(parts[2]));
        }
        e = std::move(s);
      } else if (is_op("(")) {
        auto c = node(Expr::Kind::Call, pos);
        c->a.push_back(std::move(e));
        parse_call_args(*c);
        e = std::move(c);
      } else {
        return e;
      }
    }
  }

  ExprP parse_filters(ExprP e) {
    for (int n = 0;; ++n) {
      if (n > kMaxNesting * 64) error("expression too long");
      const size_t pos = cur().pos;
      if (is_op("|")) {
        advance();
        auto f = node(Expr::Kind::Filter, pos);
        f->name = expect_name();
        f->a.push_back(std::move(e));
        if (is_op("(")) parse_call_args(*f);
        e = std::move(f);
      } else if (is_name("is")) {
        advance();
        auto t = node(Expr::Kind::Test, pos);
        if (is_name("not")) {
          t->negated = true;
          advance();
        }
        t->name = expect_name();
        t->a.push_back(std::move(e));
        if (is_op("(")) {
          parse_call_args(*t);
        } else if ((cur().kind == K::String || cur().kind == K::Int || cur().kind == K::Float ||
                    (cur().kind == K::Name && cur().s != "else" && cur().s != "or" && cur().s != "and" &&
                     cur().s != "is" && cur().s != "if" && cur().s != "in" && cur().s != "not")) ||
                   is_op("[") || is_op("{")) {
          // "x is divisibleby 3": one argument without parentheses.
          t->a.push_back(parse_postfix(parse_primary()));
        }
        e = std::move(t);
      } else if (is_op("(")) {
        auto c = node(Expr::Kind::Call, pos);
        c->a.push_back(std::move(e));
        parse_call_args(*c);
        e = std::move(c);
      } else {
        return e;
      }
    }
  }

  std::vector<Token> t_;
  size_t i_ = 0;
  int depth_ = 0;
};

}  // namespace

Body parse(const std::string& src) { return Parser(lex(src)).parse_all(); }

}  // namespace duo::jinja
