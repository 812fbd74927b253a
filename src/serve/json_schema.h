// A JSON Schema (the subset structured-output clients send: OpenAI's json_schema response
// format, pydantic, LangChain) compiled into a graph that JsonMatcher walks byte by byte.
//
// Supported: boolean schemas; type (one name or a list): object, array, string, number,
// integer, boolean, null; properties, required, additionalProperties (false, true or a schema);
// items (a schema), minItems, maxItems; enum, const; anyOf, oneOf (alternatives that provably
// cannot both match: different types, different constants, or objects told apart by a required
// constant property, as pydantic's discriminated unions are); allOf of one schema (what older
// pydantic wraps a $ref in); $ref to "#" or a JSON pointer into the same document ($defs,
// definitions). Annotations are ignored: title, description, default, examples, $schema, $id,
// $comment, deprecated, readOnly, writeOnly, discriminator. Every other keyword is refused
// with a SchemaError naming it and where it is, never silently ignored.
//
// Where the recogniser is stricter than JSON Schema's definition of valid (it only ever
// narrows what generation may produce; what it accepts is valid):
//  - "integer" is written as an integer (no "1.0" or "1e2", which JSON Schema counts as
//    integers); enum / const values are written compactly as nlohmann::json dumps them
//    (no blanks inside an object or array constant, no "1.0" for 1, no "\u0061" for "a");
//  - object keys are written without backslash escapes, and a property appears once;
//  - whitespace runs are bounded (JsonMatcher::kMaxWhitespace), nesting too (kMaxDepth).
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

namespace duo::serve {

// A schema this server cannot honour: `where` is the JSON pointer of the offending keyword.
struct SchemaError : std::runtime_error {
  std::string where;
  SchemaError(const std::string& message, std::string where) : std::runtime_error(message), where(std::move(where)) {}
};

// Bits of SchemaNode::types.
enum JsonType : uint8_t {
  kObject = 1,
  kArray = 2,
  kString = 4,
  kNumber = 8,   // any number (integers included)
  kInteger = 16, // integers only (kNumber covers these too)
  kBoolean = 32,
  kNull = 64,
  kAllTypes = 127,
};

constexpr int kMaxProperties = 64;    // named properties of one object schema (a bit mask each)
constexpr int kMaxAlternatives = 16;  // anyOf / oneOf alternatives after flattening

struct SchemaNode {
  // A union (anyOf / oneOf): the value matches one of these nodes; nothing else applies.
  std::vector<int> alts;
  // enum / const: the value is one of these texts (compact JSON, sorted); nothing else applies.
  std::vector<std::string> literals;
  bool has_literals = false;
  uint8_t types = kAllTypes;
  // Objects.
  std::vector<std::string> prop_names;
  std::vector<int> prop_nodes;
  uint64_t required = 0;     // bit i: prop_names[i] must appear
  uint64_t live = 0;         // bit i: prop_names[i]'s schema is satisfiable (it may be written)
  int additional = -1;       // node for other keys, -1: none allowed
  int key_trie = -1;         // root of prop_names' trie in CompiledSchema::key_trie
  // Arrays.
  int items = -1;            // the items' node (CompiledSchema::any when not given)
  uint64_t min_items = 0, max_items = UINT64_MAX;
  bool satisfiable = false;  // some finite JSON value matches (set by compile)
};

// Trie of an object schema's property names: a key is read through it, and `below` (the
// properties whose names continue from here) says whether a key prefix can still name one.
struct KeyTrieNode {
  std::vector<std::pair<unsigned char, int>> next;  // byte, child
  uint64_t below = 0;
  int prop = -1;  // the property this node completes
};

struct CompiledSchema {
  std::vector<SchemaNode> nodes;
  std::vector<KeyTrieNode> key_trie;
  int root = 0;
  int any = 0;  // the node that matches every JSON value
  int lit_true = 0, lit_false = 0, lit_null = 0;  // the literals' own nodes
};

// Compiles `schema`. Throws SchemaError for what is not supported, and for a schema that no
// JSON value can satisfy (no text could be generated).
std::shared_ptr<const CompiledSchema> compile_json_schema(const nlohmann::json& schema);

// JSON mode ({"type": "json_object"}): any JSON object.
std::shared_ptr<const CompiledSchema> any_json_object_schema();

}  // namespace duo::serve
