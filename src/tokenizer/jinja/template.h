// A parsed Jinja template (the subset chat templates use; see docs in chat_template.h).
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tokenizer/jinja/ast.h"
#include "tokenizer/jinja/interpreter.h"

namespace duo::jinja {

class Template {
 public:
  // Parses `source`; throws duo::Error for syntax this implementation does not accept.
  explicit Template(const std::string& source);
  // Renders with the given top-level variables; throws duo::Error (raise_exception, type
  // errors, limits).
  Text render(std::vector<std::pair<std::string, Value>> context, const Limits& limits = {}) const;

 private:
  std::shared_ptr<const Body> body_;
};

}  // namespace duo::jinja
