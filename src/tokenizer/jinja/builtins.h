// Jinja's built-in filters, tests, global functions and the Python methods of str, dict and
// list that chat templates call (message.content.strip(), messages[0].get("x"), ...).
#pragma once
#include <string>
#include <vector>

#include "tokenizer/jinja/value.h"

namespace duo::jinja {

Value apply_filter(Interpreter& in, const std::string& name, const Value& v, Args& args);
bool apply_test(Interpreter& in, const std::string& name, const Value& v, Args& args);
// jinja2's environment.getattr (obj.name) and getitem (obj[key]): a missing key or attribute
// is Undefined; an attribute of Undefined is an error.
Value get_attr(Interpreter& in, const Value& obj, const std::string& name);
Value get_item(Interpreter& in, const Value& obj, const Value& key);
Value get_slice(Interpreter& in, const Value& obj, const Value& start, const Value& stop, const Value& step);
// namespace, range, dict, raise_exception, strftime_now; Undefined for other names.
Value global_function(const std::string& name);
// What a for loop walks: list items, dict keys, string characters; Undefined walks nothing.
std::vector<Value> iterate(const Value& v);
// Python's len(): strings count code points.
int64_t length(const Value& v);

}  // namespace duo::jinja
