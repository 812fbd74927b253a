#include "tokenizer/jinja/template.h"

#include "tokenizer/jinja/parser.h"

namespace duo::jinja {

Template::Template(const std::string& source) : body_(std::make_shared<const Body>(parse(source))) {}

Text Template::render(std::vector<std::pair<std::string, Value>> context, const Limits& limits) const {
  Interpreter in(std::move(context), limits);
  return in.render(*body_);
}

}  // namespace duo::jinja
