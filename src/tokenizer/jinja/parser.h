// Parses the token stream of lexer.h into statements. Grammar and operator precedence follow
// jinja2's parser (conditional < or < and < not < comparisons < + - < ~ < * / // % < ** <
// unary minus < filters and tests < postfix). Nesting is bounded (kMaxNesting): a template is
// untrusted input and must not overflow the stack.
#pragma once
#include <string>

#include "tokenizer/jinja/ast.h"

namespace duo::jinja {

inline constexpr int kMaxNesting = 128;

// Throws duo::Error naming the offset of the problem.
Body parse(const std::string& src);

}  // namespace duo::jinja
