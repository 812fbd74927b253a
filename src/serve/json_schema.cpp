#include "serve/json_schema.h"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <set>

namespace duo::serve {

using nlohmann::json;

namespace {

// Keywords that only describe: ignoring them changes nothing a validator checks.
const std::set<std::string> kAnnotations = {"title",    "description", "default",  "examples",  "$schema",
                                            "$id",      "$comment",    "deprecated", "readOnly", "writeOnly",
                                            "discriminator", "$defs",  "definitions"};
// Keywords that make a schema a reference or a union: nothing but annotations may stand beside them.
const std::set<std::string> kComposite = {"$ref", "allOf", "anyOf", "oneOf"};
const std::set<std::string> kValidation = {"type",  "properties", "required", "additionalProperties", "items",
                                           "minItems", "maxItems", "enum",     "const"};

std::string escape_pointer(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '~')
      out += "~0";
    else if (c == '/')
      out += "~1";
    else
      out += c;
  }
  return out;
}

std::string at(const std::string& ptr) { return "#" + ptr; }

uint8_t type_bit(const std::string& name, const std::string& where) {
  if (name == "object") return kObject;
  if (name == "array") return kArray;
  if (name == "string") return kString;
  if (name == "number") return kNumber | kInteger;
  if (name == "integer") return kInteger;
  if (name == "boolean") return kBoolean;
  if (name == "null") return kNull;
  throw SchemaError(fmt::format("unknown type '{}' at {}", name, where), where);
}

// The type bits a value has (an integral number is an integer, as JSON Schema counts it).
uint8_t value_types(const json& v) {
  switch (v.type()) {
    case json::value_t::object: return kObject;
    case json::value_t::array: return kArray;
    case json::value_t::string: return kString;
    case json::value_t::boolean: return kBoolean;
    case json::value_t::null: return kNull;
    case json::value_t::number_integer:
    case json::value_t::number_unsigned: return kNumber | kInteger;
    case json::value_t::number_float: {
      const double x = v.get<double>();
      return x == (double)(int64_t)x ? (kNumber | kInteger) : kNumber;
    }
    default: return 0;
  }
}

// Numbers of either kind are one family where overlap is concerned.
uint8_t family(uint8_t t) { return (t & (kNumber | kInteger)) ? (t | kNumber | kInteger) : t; }

uint64_t count_limit(const json& v, const std::string& where) {
  if (!v.is_number_unsigned() && !(v.is_number_integer() && v.get<int64_t>() >= 0))
    throw SchemaError(fmt::format("{} must be a non-negative integer", where), where);
  return v.get<uint64_t>();
}

class Compiler {
 public:
  explicit Compiler(const json& doc) : doc_(doc) {}

  CompiledSchema run() {
    out_.any = new_node();
    SchemaNode& any = out_.nodes[out_.any];
    any.additional = out_.any;
    any.items = out_.any;
    out_.lit_true = literal_node("true");
    out_.lit_false = literal_node("false");
    out_.lit_null = literal_node("null");
    out_.root = compile(doc_, "");
    resolve_aliases();
    flatten_unions();
    filter_literals();
    find_satisfiable();
    if (!out_.nodes[out_.root].satisfiable) throw SchemaError("no JSON value satisfies the schema", "#");
    check_one_ofs();
    prune();
    build_key_tries();
    return std::move(out_);
  }

 private:
  int new_node() {
    out_.nodes.emplace_back();
    alias_.push_back(-1);
    one_of_.push_back(false);
    lit_values_.emplace_back();
    return (int)out_.nodes.size() - 1;
  }

  int literal_node(const char* text) {
    const int id = new_node();
    out_.nodes[id].has_literals = true;
    lit_values_[id].push_back(json::parse(text));
    return id;
  }

  // The node for the schema at JSON pointer `ptr` (each location compiled once, so a $ref
  // cycle is a cycle of nodes).
  int compile(const json& s, const std::string& ptr) {
    if (auto it = by_pointer_.find(ptr); it != by_pointer_.end()) return it->second;
    const int id = new_node();
    by_pointer_[ptr] = id;
    if (s.is_boolean()) {
      if (s.get<bool>())
        alias_[id] = out_.any;
      else
        out_.nodes[id].types = 0;
      return id;
    }
    if (!s.is_object()) throw SchemaError(fmt::format("the schema at {} must be an object or a boolean", at(ptr)), at(ptr));
    std::string composite, validation;
    for (auto it = s.begin(); it != s.end(); ++it) {
      const std::string& k = it.key();
      if (kComposite.count(k)) {
        if (!composite.empty())
          throw SchemaError(fmt::format("'{}' beside '{}' at {} is not supported", k, composite, at(ptr)), at(ptr + "/" + k));
        composite = k;
      } else if (kValidation.count(k)) {
        if (validation.empty()) validation = k;
      } else if (!kAnnotations.count(k)) {
        throw SchemaError(fmt::format("keyword '{}' at {} is not supported", k, at(ptr)), at(ptr + "/" + escape_pointer(k)));
      }
    }
    if (!composite.empty() && !validation.empty())
      throw SchemaError(fmt::format("'{}' beside '{}' at {} is not supported", validation, composite, at(ptr)),
                        at(ptr + "/" + validation));
    if (s.contains("$ref")) {
      alias_[id] = compile_ref(s["$ref"], ptr + "/$ref");
      return id;
    }
    if (s.contains("allOf")) {
      const json& a = s["allOf"];
      if (!a.is_array() || a.size() != 1)
        throw SchemaError(fmt::format("'allOf' at {} is supported with exactly one schema", at(ptr)), at(ptr + "/allOf"));
      alias_[id] = compile(a[0], ptr + "/allOf/0");
      return id;
    }
    for (const char* k : {"anyOf", "oneOf"})
      if (s.contains(k)) {
        const json& a = s[k];
        const std::string where = ptr + "/" + k;
        if (!a.is_array() || a.empty()) throw SchemaError(fmt::format("'{}' at {} must be a non-empty array", k, at(ptr)), at(where));
        std::vector<int> alts;
        for (size_t i = 0; i < a.size(); ++i) alts.push_back(compile(a[i], fmt::format("{}/{}", where, i)));
        out_.nodes[id].alts = std::move(alts);
        one_of_[id] = std::string(k) == "oneOf";
        return id;
      }
    compile_plain(s, ptr, id);
    return id;
  }

  int compile_ref(const json& ref, const std::string& where) {
    if (!ref.is_string()) throw SchemaError(fmt::format("'$ref' at {} must be a string", at(where)), at(where));
    const std::string r = ref.get<std::string>();
    if (r.empty() || r[0] != '#')
      throw SchemaError(fmt::format("'$ref' \"{}\" at {}: only references inside the schema (\"#/...\") are supported", r, at(where)),
                        at(where));
    const std::string ptr = r.substr(1);
    const json* target = nullptr;
    try {
      target = &doc_.at(json::json_pointer(ptr));
    } catch (const json::exception&) {
      throw SchemaError(fmt::format("'$ref' \"{}\" at {} points at nothing", r, at(where)), at(where));
    }
    return compile(*target, ptr);
  }

  void compile_plain(const json& s, const std::string& ptr, int id) {
    SchemaNode n;
    if (auto it = s.find("type"); it != s.end()) {
      const std::string where = at(ptr + "/type");
      n.types = 0;
      if (it->is_string()) {
        n.types = type_bit(it->get<std::string>(), where);
      } else if (it->is_array() && !it->empty()) {
        for (const auto& t : *it) {
          if (!t.is_string()) throw SchemaError(fmt::format("'type' at {} must hold type names", at(ptr)), where);
          n.types |= type_bit(t.get<std::string>(), where);
        }
      } else {
        throw SchemaError(fmt::format("'type' at {} must be a type name or a list of them", at(ptr)), where);
      }
    }
    // Objects: named properties first, then required names no property lists (their values
    // follow additionalProperties, as JSON Schema has it).
    int additional = out_.any;
    if (auto it = s.find("additionalProperties"); it != s.end()) {
      if (it->is_boolean() && !it->get<bool>())
        additional = -1;
      else
        additional = compile(*it, ptr + "/additionalProperties");
    }
    if (auto it = s.find("properties"); it != s.end()) {
      if (!it->is_object()) throw SchemaError(fmt::format("'properties' at {} must be an object", at(ptr)), at(ptr + "/properties"));
      for (auto p = it->begin(); p != it->end(); ++p) {
        n.prop_names.push_back(p.key());
        n.prop_nodes.push_back(compile(*p, ptr + "/properties/" + escape_pointer(p.key())));
      }
    }
    if (auto it = s.find("required"); it != s.end()) {
      if (!it->is_array()) throw SchemaError(fmt::format("'required' at {} must be an array of names", at(ptr)), at(ptr + "/required"));
      for (const auto& r : *it) {
        if (!r.is_string()) throw SchemaError(fmt::format("'required' at {} must hold names", at(ptr)), at(ptr + "/required"));
        const std::string name = r.get<std::string>();
        auto f = std::find(n.prop_names.begin(), n.prop_names.end(), name);
        size_t i = f - n.prop_names.begin();
        if (f == n.prop_names.end()) {
          n.prop_names.push_back(name);
          n.prop_nodes.push_back(additional < 0 ? unsatisfiable() : additional);
        }
        if (i < (size_t)kMaxProperties) n.required |= uint64_t(1) << i;
      }
    }
    if (n.prop_names.size() > (size_t)kMaxProperties)
      throw SchemaError(fmt::format("the object at {} names {} properties, more than the {} supported", at(ptr),
                                    n.prop_names.size(), kMaxProperties),
                        at(ptr + "/properties"));
    for (const auto& name : n.prop_names)
      for (unsigned char c : name)
        if (c == '"' || c == '\\' || c < 0x20)
          throw SchemaError(fmt::format("property name {} at {} needs escapes, which are not supported", json(name).dump(), at(ptr)),
                            at(ptr + "/properties"));
    n.additional = additional;
    n.items = out_.any;
    if (auto it = s.find("items"); it != s.end()) {
      if (it->is_array())
        throw SchemaError(fmt::format("'items' as an array (tuples) at {} is not supported", at(ptr)), at(ptr + "/items"));
      n.items = compile(*it, ptr + "/items");
    }
    if (auto it = s.find("minItems"); it != s.end()) n.min_items = count_limit(*it, at(ptr + "/minItems"));
    if (auto it = s.find("maxItems"); it != s.end()) n.max_items = count_limit(*it, at(ptr + "/maxItems"));
    // enum and const: the values both allow (checked against the rest of the schema later).
    std::optional<std::vector<json>> values;
    if (auto it = s.find("enum"); it != s.end()) {
      if (!it->is_array()) throw SchemaError(fmt::format("'enum' at {} must be an array", at(ptr)), at(ptr + "/enum"));
      values = std::vector<json>(it->begin(), it->end());
    }
    if (auto it = s.find("const"); it != s.end()) {
      if (!values || std::find(values->begin(), values->end(), *it) != values->end())
        values = std::vector<json>{*it};
      else
        values = std::vector<json>{};
    }
    if (values) {
      n.has_literals = true;
      lit_values_[id] = *values;
    }
    out_.nodes[id] = std::move(n);
  }

  int unsatisfiable() {
    const int id = new_node();
    out_.nodes[id].types = 0;
    return id;
  }

  int resolve(int id) const {
    int steps = 0;
    while (alias_[id] >= 0) {
      id = alias_[id];
      if (++steps > (int)alias_.size()) throw SchemaError("the schema's $ref / allOf references go round in a cycle", "#");
    }
    return id;
  }

  void resolve_aliases() {
    out_.root = resolve(out_.root);
    for (auto& n : out_.nodes) {
      for (int& a : n.alts) a = resolve(a);
      for (int& p : n.prop_nodes) p = resolve(p);
      if (n.additional >= 0) n.additional = resolve(n.additional);
      if (n.items >= 0) n.items = resolve(n.items);
    }
  }

  // Unions of unions become one union (a oneOf inside an anyOf keeps its own check).
  void flatten_unions() {
    for (size_t id = 0; id < out_.nodes.size(); ++id) {
      if (out_.nodes[id].alts.empty()) continue;
      std::vector<int> flat;
      std::set<int> seen{(int)id};
      std::vector<int> todo(out_.nodes[id].alts.rbegin(), out_.nodes[id].alts.rend());
      while (!todo.empty()) {
        const int a = todo.back();
        todo.pop_back();
        if (!seen.insert(a).second) continue;
        if (!out_.nodes[a].alts.empty() && one_of_[a] == one_of_[id])
          todo.insert(todo.end(), out_.nodes[a].alts.rbegin(), out_.nodes[a].alts.rend());
        else
          flat.push_back(a);
      }
      if (flat.size() > (size_t)kMaxAlternatives)
        throw SchemaError(fmt::format("a union of {} alternatives, more than the {} supported", flat.size(), kMaxAlternatives), "#");
      out_.nodes[id].alts = std::move(flat);
    }
  }

  // Whether `v` matches node `id` (the compiled graph as a validator).
  bool validate(int id, const json& v, int depth = 0) const {
    if (depth > 64) return false;
    const SchemaNode& n = out_.nodes[id];
    if (!n.alts.empty()) {
      for (int a : n.alts)
        if (validate(a, v, depth + 1)) return true;
      return false;
    }
    if (n.has_literals && std::find(lit_values_[id].begin(), lit_values_[id].end(), v) == lit_values_[id].end())
      return false;
    if (!(value_types(v) & n.types)) return false;
    if (v.is_object()) {
      uint64_t present = 0;
      for (auto it = v.begin(); it != v.end(); ++it) {
        auto f = std::find(n.prop_names.begin(), n.prop_names.end(), it.key());
        if (f != n.prop_names.end()) {
          const size_t i = f - n.prop_names.begin();
          present |= uint64_t(1) << i;
          if (!validate(n.prop_nodes[i], *it, depth + 1)) return false;
        } else if (n.additional < 0 || !validate(n.additional, *it, depth + 1)) {
          return false;
        }
      }
      return (present & n.required) == n.required;
    }
    if (v.is_array()) {
      if (v.size() < n.min_items || v.size() > n.max_items || (n.items < 0 && !v.empty())) return false;
      for (const auto& x : v)
        if (!validate(n.items, x, depth + 1)) return false;
    }
    return true;
  }

  // A node with enum / const keeps the values the rest of its schema allows, as texts.
  void filter_literals() {
    for (size_t id = 0; id < out_.nodes.size(); ++id) {
      SchemaNode& n = out_.nodes[id];
      if (!n.has_literals) continue;
      std::set<std::string> texts;
      for (const json& v : lit_values_[id])
        if (validate((int)id, v)) texts.insert(v.dump());
      out_.nodes[id].literals.assign(texts.begin(), texts.end());
    }
  }

  // Least fixed point: a node is satisfiable when a finite value matches it.
  void find_satisfiable() {
    for (bool changed = true; changed;) {
      changed = false;
      for (auto& n : out_.nodes) {
        if (n.satisfiable) continue;
        bool sat = false;
        if (!n.alts.empty()) {
          for (int a : n.alts) sat = sat || out_.nodes[a].satisfiable;
        } else if (n.has_literals) {
          sat = !n.literals.empty();
        } else {
          sat = (n.types & (kString | kNumber | kInteger | kBoolean | kNull)) != 0;
          if (!sat && (n.types & kObject)) {
            sat = true;
            for (size_t i = 0; i < n.prop_nodes.size(); ++i)
              if ((n.required >> i & 1) && !out_.nodes[n.prop_nodes[i]].satisfiable) sat = false;
          }
          if (!sat && (n.types & kArray))
            sat = n.min_items <= n.max_items && (n.min_items == 0 || (n.items >= 0 && out_.nodes[n.items].satisfiable));
        }
        if (sat) n.satisfiable = changed = true;
      }
    }
  }

  bool disjoint(int a, int b) const {
    const SchemaNode &x = out_.nodes[a], &y = out_.nodes[b];
    auto types_of = [&](int id) {
      const SchemaNode& n = out_.nodes[id];
      if (!n.has_literals) return family(n.types);
      uint8_t t = 0;
      for (const auto& v : lit_values_[id])
        if (validate(id, v)) t |= family(value_types(v));
      return t;
    };
    if (!(types_of(a) & types_of(b))) return true;
    auto literals_outside = [&](int lit, int other) {
      for (const auto& v : lit_values_[lit])
        if (validate(lit, v) && validate(other, v)) return false;
      return true;
    };
    if (x.has_literals) return literals_outside(a, b);
    if (y.has_literals) return literals_outside(b, a);
    // Objects told apart by a property both require whose constants differ.
    if (x.alts.empty() && y.alts.empty() && x.types == kObject && y.types == kObject)
      for (size_t i = 0; i < x.prop_names.size(); ++i) {
        if (!(x.required >> i & 1)) continue;
        auto f = std::find(y.prop_names.begin(), y.prop_names.end(), x.prop_names[i]);
        if (f == y.prop_names.end()) continue;
        const size_t j = f - y.prop_names.begin();
        if (!(y.required >> j & 1)) continue;
        const int p = x.prop_nodes[i], q = y.prop_nodes[j];
        if (out_.nodes[p].has_literals && literals_outside(p, q)) return true;
      }
    return false;
  }

  // oneOf is matched as anyOf where no value can match two of its alternatives.
  void check_one_ofs() const {
    for (size_t id = 0; id < out_.nodes.size(); ++id) {
      if (!one_of_[id]) continue;
      const auto& alts = out_.nodes[id].alts;
      for (size_t i = 0; i < alts.size(); ++i)
        for (size_t j = i + 1; j < alts.size(); ++j)
          if (out_.nodes[alts[i]].satisfiable && out_.nodes[alts[j]].satisfiable && !disjoint(alts[i], alts[j]))
            throw SchemaError(fmt::format("'oneOf' alternatives {} and {} may both match a value; only alternatives of "
                                          "different types or constants are supported (anyOf has no such limit)",
                                          i, j),
                              "#");
    }
  }

  // What the recogniser may enter is satisfiable, so every prefix it accepts can be completed.
  void prune() {
    auto& nodes = out_.nodes;
    for (auto& n : nodes) {
      std::erase_if(n.alts, [&](int a) { return !nodes[a].satisfiable; });
      if (n.additional >= 0 && !nodes[n.additional].satisfiable) n.additional = -1;
      if (n.items >= 0 && !nodes[n.items].satisfiable) n.max_items = 0;
      for (size_t i = 0; i < n.prop_nodes.size(); ++i)
        if (nodes[n.prop_nodes[i]].satisfiable) n.live |= uint64_t(1) << i;
    }
  }

  void build_key_tries() {
    auto& trie = out_.key_trie;
    for (auto& n : out_.nodes) {
      if (n.alts.size() || n.has_literals || !(n.types & kObject)) continue;
      n.key_trie = (int)trie.size();
      trie.emplace_back();
      // Every named property is in the trie, so that a key naming one whose schema cannot be
      // met is refused rather than read as an additional property.
      for (size_t i = 0; i < n.prop_names.size(); ++i) {
        int at_node = n.key_trie;
        trie[at_node].below |= uint64_t(1) << i;
        for (unsigned char c : n.prop_names[i]) {
          int next = -1;
          for (auto [b, child] : trie[at_node].next)
            if (b == c) next = child;
          if (next < 0) {
            next = (int)trie.size();
            trie[at_node].next.push_back({c, next});
            trie.emplace_back();
          }
          at_node = next;
          trie[at_node].below |= uint64_t(1) << i;
        }
        trie[at_node].prop = (int)i;
      }
    }
  }

  const json& doc_;
  CompiledSchema out_;
  std::map<std::string, int> by_pointer_;
  std::vector<int> alias_;
  std::vector<bool> one_of_;
  std::vector<std::vector<json>> lit_values_;
};

}  // namespace

std::shared_ptr<const CompiledSchema> compile_json_schema(const json& schema) {
  return std::make_shared<const CompiledSchema>(Compiler(schema).run());
}

std::shared_ptr<const CompiledSchema> any_json_object_schema() {
  static const auto schema = compile_json_schema(json{{"type", "object"}});
  return schema;
}

}  // namespace duo::serve
