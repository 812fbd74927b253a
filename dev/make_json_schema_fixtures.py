#!/usr/bin/env python3
"""Reference verdicts for tests/serve/json_matcher_test.cpp: JSON documents and whether each is
valid under a schema, decided by the Python `jsonschema` package (PyPI; Draft 2020-12) after
`json.loads`, independently of duo's recogniser (src/serve/json_matcher.*).

Run: python3 dev/make_json_schema_fixtures.py   (pip install jsonschema; tested with 4.x)
Writes tests/fixtures/json_schema/cases.json: {"cases": [{"name", "schema", "docs": [{"text",
"valid"}]}], "refused": [{"schema", "keyword"}]}.

Documents per schema: instances generated from the schema, the same mutated (a key dropped or
added, a value replaced, an array grown or emptied), random JSON values, and byte-level edits of
all of these (truncated, a byte inserted or deleted), written compactly or indented. Texts where
duo is stricter than JSON Schema by design (src/serve/json_schema.h) are left out, so that the
verdicts must agree exactly: integral numbers written as floats ("2.0", which JSON Schema counts as
an integer), "\\u" escapes, keys needing escapes, duplicate keys, NaN/Infinity (Python's json
extension), and whitespace runs longer than duo's bound.
"""
import json
import os
import random
import re

import jsonschema

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "json_schema", "cases.json")
DOCS_PER_SCHEMA = 160
MAX_WS = 16  # JsonMatcher::kMaxWhitespace

SCHEMAS = {
    "flat_object": {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "score": {"type": "number"},
                       "ok": {"type": "boolean"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    },
    "pydantic_nested": {  # as pydantic v2 writes a model with a nested model and an Optional field
        "$defs": {
            "Address": {
                "properties": {"street": {"title": "Street", "type": "string"},
                               "zip": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None}},
                "required": ["street"], "title": "Address", "type": "object", "additionalProperties": False},
        },
        "properties": {"name": {"title": "Name", "type": "string"}, "address": {"$ref": "#/$defs/Address"},
                       "tags": {"items": {"type": "string"}, "type": "array", "minItems": 1, "maxItems": 3}},
        "required": ["name", "address", "tags"], "title": "Person", "type": "object",
        "additionalProperties": False,
    },
    "enum_const": {
        "type": "object",
        "properties": {"color": {"enum": ["red", "green", "blue"]}, "kind": {"const": "fruit"},
                       "n": {"enum": [1, 2, 12, "x", None, True, 2.5]}},
        "required": ["color", "kind"],
    },
    "array_of_objects": {
        "type": "array",
        "items": {"type": "object", "properties": {"id": {"type": "integer"}, "v": {"type": ["string", "null"]}},
                  "required": ["id"], "additionalProperties": False},
        "minItems": 1, "maxItems": 4,
    },
    "any_of_overlapping": {
        "anyOf": [
            {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"], "additionalProperties": False},
            {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "boolean"}},
             "required": ["a", "b"], "additionalProperties": False},
            {"type": "array", "items": {"type": "integer"}, "maxItems": 2},
        ],
    },
    "one_of_discriminated": {
        "oneOf": [
            {"type": "object", "properties": {"kind": {"const": "cat"}, "lives": {"type": "integer"}},
             "required": ["kind", "lives"], "additionalProperties": False},
            {"type": "object", "properties": {"kind": {"const": "dog"}, "bark": {"type": "string"}},
             "required": ["kind"], "additionalProperties": False},
        ],
        "discriminator": {"propertyName": "kind"},
    },
    "recursive_tree": {
        "$ref": "#/$defs/Node",
        "$defs": {"Node": {"type": "object", "properties": {
            "value": {"type": "integer"},
            "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}, "maxItems": 2}},
            "required": ["value"], "additionalProperties": False}},
    },
    "additional_schema": {
        "type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": {"type": "string"},
    },
    "draft7_definitions_allof": {  # pydantic v1 style
        "definitions": {"Item": {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]}},
        "type": "object",
        "properties": {"item": {"allOf": [{"$ref": "#/definitions/Item"}]}, "note": {"type": "string"}},
        "required": ["item"],
    },
    "any_value": {},
    "json_object": {"type": "object"},
    "root_number": {"type": "number"},
    "root_enum_prefixes": {"enum": [1, 12, 123, "a", "ab"]},
    "nullable_integer": {"type": ["integer", "null"]},
    "nested_arrays": {"type": "array", "items": {"type": "array", "items": {"type": "integer"}, "maxItems": 2},
                      "minItems": 2},
    "required_without_properties": {"type": "object", "required": ["id"], "properties": {}},
}

# Schemas duo refuses, with the word its message must contain.
REFUSED = [
    ({"type": "string", "pattern": "^a"}, "pattern"),
    ({"type": "string", "minLength": 2}, "minLength"),
    ({"type": "string", "format": "date-time"}, "format"),
    ({"type": "number", "minimum": 0}, "minimum"),
    ({"type": "array", "prefixItems": [{"type": "integer"}]}, "prefixItems"),
    ({"type": "array", "items": [{"type": "integer"}]}, "items"),
    ({"$ref": "https://example.com/schema.json"}, "$ref"),
    ({"$ref": "#/$defs/Missing"}, "$ref"),
    ({"oneOf": [{"type": "integer"}, {"type": "number"}]}, "oneOf"),
    ({"allOf": [{"type": "object"}, {"required": ["a"]}]}, "allOf"),
    ({"not": {"type": "null"}}, "not"),
    ({"type": "object", "properties": {"a": {"type": "integer"}}, "if": {"required": ["a"]}}, "if"),
    ({"type": "object", "required": ["a"], "additionalProperties": False}, "satisfies"),
    ({"type": "strnig"}, "strnig"),
    ({"type": "integer", "enum": ["a"]}, "satisfies"),
    ({"anyOf": [{"type": "string"}], "type": "string"}, "anyOf"),
    ({"nullable": True, "type": "string"}, "nullable"),
]

KEYS = ["name", "age", "score", "ok", "street", "zip", "address", "tags", "color", "kind", "n", "id", "v", "a", "b",
        "lives", "bark", "value", "children", "x", "item", "note", "other", ""]
STRINGS = ["", "a", "ab", "red", "green", "fruit", "cat", "dog", "x", "hello world", 'quote"d', "back\\slash",
           "line\nbreak", "tab\there", "é ü", "1"]
NUMBERS = [0, 1, 2, 12, 123, -7, 2.5, -0.25, 1e-3, 3.14159, 10**20, -1]


def random_value(rng, depth=0):
    r = rng.random()
    if depth > 3 or r < 0.45:
        return rng.choice([None, True, False, rng.choice(NUMBERS), rng.choice(STRINGS)])
    if r < 0.75:
        return {rng.choice(KEYS): random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))}
    return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]


def resolve(schema, root):
    while isinstance(schema, dict) and ("$ref" in schema or "allOf" in schema):
        if "$ref" in schema:
            ptr = schema["$ref"][2:].split("/")
            schema = root
            for p in ptr:
                schema = schema[p]
        else:
            schema = schema["allOf"][0]
    return schema


def instance(schema, root, rng, depth=0):
    """A value the schema (most likely) accepts; the verdict comes from jsonschema regardless."""
    schema = resolve(schema, root)
    if schema is True or schema == {} or depth > 4:
        return random_value(rng, 3)
    for k in ("anyOf", "oneOf"):
        if k in schema:
            return instance(rng.choice(schema[k]), root, rng, depth + 1)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return rng.choice(schema["enum"])
    types = schema.get("type", ["object", "array", "string", "number", "integer", "boolean", "null"])
    t = rng.choice(types if isinstance(types, list) else [types])
    if t == "object":
        props = schema.get("properties", {})
        out = {}
        for k, s in props.items():
            if k in schema.get("required", []) or rng.random() < 0.5:
                out[k] = instance(s, root, rng, depth + 1)
        for k in schema.get("required", []):
            out.setdefault(k, random_value(rng, 3))
        if schema.get("additionalProperties", True) is not False and rng.random() < 0.3:
            extra = schema.get("additionalProperties", True)
            out["other"] = instance(extra, root, rng, depth + 1) if isinstance(extra, dict) else random_value(rng, 3)
        keys = list(out)
        rng.shuffle(keys)
        return {k: out[k] for k in keys}
    if t == "array":
        lo, hi = schema.get("minItems", 0), min(schema.get("maxItems", 4), 4)
        return [instance(schema.get("items", {}), root, rng, depth + 1) for _ in range(rng.randint(lo, max(lo, hi)))]
    if t == "string":
        return rng.choice(STRINGS)
    if t == "integer":
        return rng.choice([0, 1, -7, 42, 10**20])
    if t == "number":
        return rng.choice(NUMBERS)
    if t == "boolean":
        return rng.random() < 0.5
    return None


def mutate_value(v, rng):
    if isinstance(v, dict) and v and rng.random() < 0.7:
        v = dict(v)
        k = rng.choice(list(v))
        r = rng.random()
        if r < 0.3:
            del v[k]
        elif r < 0.6:
            v[k] = mutate_value(v[k], rng)
        else:
            v[rng.choice(KEYS)] = random_value(rng, 2)
        return v
    if isinstance(v, list) and rng.random() < 0.7:
        v = list(v)
        r = rng.random()
        if r < 0.3 and v:
            v.pop(rng.randrange(len(v)))
        elif r < 0.6 and v:
            i = rng.randrange(len(v))
            v[i] = mutate_value(v[i], rng)
        else:
            v.append(random_value(rng, 2))
        return v
    return random_value(rng, 2)


def dump(v, rng):
    style = rng.randrange(3)
    if style == 0:
        return json.dumps(v, ensure_ascii=False, separators=(",", ":"))
    if style == 1:
        return json.dumps(v, ensure_ascii=False)
    return json.dumps(v, ensure_ascii=False, indent=rng.choice([1, 2]))


def edit_text(text, rng):
    r = rng.random()
    if r < 0.4 and text:
        return text[:rng.randrange(len(text))]
    i = rng.randrange(len(text) + 1)
    if r < 0.7:
        return text[:i] + rng.choice('{}[]",:0123456789.-eE truefalsn\n') + text[i:]
    return text[:i] + text[i + 1:]


class Skip(Exception):
    pass


def strict_parse(text):
    """json.loads, raising Skip where duo is stricter by design, ValueError for invalid JSON."""
    if "\\u" in text or re.search(r"\s{%d}" % (MAX_WS + 1), text):
        raise Skip
    def pairs(items):
        keys = [k for k, _ in items]
        if len(set(keys)) != len(keys) or any(c in k for k in keys for c in '"\\') or \
                any(ord(c) < 0x20 for k in keys for c in k):
            raise Skip
        return dict(items)
    def float_(s):
        x = float(s)
        if x != x or x in (float("inf"), float("-inf")) or x == int(x):
            raise Skip
        return x
    def constant(s):
        raise Skip
    return json.loads(text, object_pairs_hook=pairs, parse_float=float_, parse_constant=constant)


def verdict(text, validator):
    try:
        value = strict_parse(text)
    except Skip:
        return None
    except ValueError:
        return False
    return validator.is_valid(value)


def main():
    rng = random.Random(19)
    cases = []
    for name, schema in SCHEMAS.items():
        jsonschema.Draft202012Validator.check_schema(schema)
        validator = jsonschema.Draft202012Validator(schema)
        docs, seen = [], set()
        tries = 0
        while len(docs) < DOCS_PER_SCHEMA and tries < 50 * DOCS_PER_SCHEMA:
            tries += 1
            r = rng.random()
            v = instance(schema, schema, rng)
            if r < 0.35:
                pass
            elif r < 0.7:
                v = mutate_value(v, rng)
            elif r < 0.8:
                v = random_value(rng)
            text = dump(v, rng)
            if rng.random() < 0.3:
                text = edit_text(text, rng)
            if text in seen:
                continue
            ok = verdict(text, validator)
            if ok is None:
                continue
            seen.add(text)
            docs.append({"text": text, "valid": ok})
        n_valid = sum(d["valid"] for d in docs)
        print(f"{name}: {len(docs)} documents, {n_valid} valid")
        assert 5 <= n_valid <= 0.9 * len(docs), (name, n_valid)
        cases.append({"name": name, "schema": schema, "docs": docs})
    refused = [{"schema": s, "keyword": k} for s, k in REFUSED]
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump({"generator": "dev/make_json_schema_fixtures.py", "jsonschema": jsonschema_version(),
                   "cases": cases, "refused": refused}, f, ensure_ascii=False, indent=0)
        f.write("\n")


def jsonschema_version():
    from importlib.metadata import version
    return version("jsonschema")


if __name__ == "__main__":
    main()
