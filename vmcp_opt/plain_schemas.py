"""An exact check of its own for plain input schemas, ahead of jsonschema (vmcp_opt/arguments.py).

Most tools' schemas use only `type`, `properties`, `required`, `additionalProperties`, `items`, string
`enum`s, numeric bounds (`minimum`, `maximum`, their exclusive forms), string and array lengths and annotations (find_tool's
own schema among them). For those (`is_plain`), `plainly_valid` says "valid" in a few µs against
jsonschema's ~40 µs per call, and only where jsonschema agrees; False means "ask jsonschema", which then
gives the verdict and the message (any doubt, such as a float for `integer`, is left to it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

# Keywords that say nothing about validity.
_ANNOTATIONS = frozenset(
    {"title", "description", "default", "examples", "$comment", "deprecated", "readOnly", "writeOnly"}
)
# Bounds on numbers and on string lengths: each applies only to values of its kind (JSON Schema ignores it
# for the others).
_NUMBER_BOUNDS: dict[str, Callable[[Any, Any], bool]] = {
    "minimum": lambda value, bound: value >= bound,
    "maximum": lambda value, bound: value <= bound,
    "exclusiveMinimum": lambda value, bound: value > bound,
    "exclusiveMaximum": lambda value, bound: value < bound,
}
_LENGTH_BOUNDS: dict[str, Callable[[int, int], bool]] = {
    "minLength": lambda length, bound: length >= bound,
    "maxLength": lambda length, bound: length <= bound,
}
# Bounds on an array's length (find_tool's `backends` has `maxItems`: without them its every call went to jsonschema).
_ITEM_BOUNDS: dict[str, Callable[[int, int], bool]] = {
    "minItems": lambda length, bound: length >= bound,
    "maxItems": lambda length, bound: length <= bound,
}
_PLAIN_KEYWORDS = (
    _ANNOTATIONS
    | {"type", "properties", "required", "additionalProperties", "items", "enum"}
    | _NUMBER_BOUNDS.keys()
    | _LENGTH_BOUNDS.keys()
    | _ITEM_BOUNDS.keys()
)
_PLAIN_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda value: isinstance(value, dict),
    "array": lambda value: isinstance(value, list),
    "string": lambda value: isinstance(value, str),
    # Not bool (a bool is an int in Python, not in JSON Schema); a float for "integer" is left to jsonschema.
    "integer": lambda value: isinstance(value, int) and not isinstance(value, bool),
    "number": lambda value: isinstance(value, int | float) and not isinstance(value, bool),
    "boolean": lambda value: isinstance(value, bool),
    "null": lambda value: value is None,
}
_PLAIN_DEPTH = 8


def is_plain(schema: Any, depth: int) -> bool:
    """Only keywords `plainly_valid` checks exactly, with well-formed values (no `$schema`: drafts differ)."""
    if not isinstance(schema, Mapping) or depth > _PLAIN_DEPTH or not _plain_keywords(schema):
        return False
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if kind is not None else []
    # `"type": []` breaks the meta-schema (at least one type), which a plain schema skips: left to jsonschema's
    # meta-schema check, such a schema goes to the backend instead of refusing every call.
    if kind == [] or not all(isinstance(k, str) and k in _PLAIN_TYPES for k in kinds):
        return False
    properties = schema.get("properties", {})
    if not isinstance(properties, Mapping) or not all(is_plain(sub, depth + 1) for sub in properties.values()):
        return False
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(name, str) for name in required):
        return False
    extra = schema.get("additionalProperties", True)
    if not isinstance(extra, bool) and not is_plain(extra, depth + 1):
        return False
    if "items" in schema and not is_plain(schema["items"], depth + 1):
        return False
    if not all(_is_number(schema[key]) for key in _NUMBER_BOUNDS.keys() & schema.keys()):
        return False
    if not all(_is_count(schema[key]) for key in (_LENGTH_BOUNDS.keys() | _ITEM_BOUNDS.keys()) & schema.keys()):
        return False
    enum = schema.get("enum")
    return enum is None or (isinstance(enum, list) and all(isinstance(item, str) for item in enum))


def _plain_keywords(schema: Mapping[str, Any]) -> bool:
    """Only plain keywords, or `x-` extensions (FastMCP's `x-fastmcp-wrap-result`): JSON Schema 2020-12 ignores
    unknown keywords, so an extension says nothing about validity and jsonschema would not check it either."""
    if _PLAIN_KEYWORDS.issuperset(schema):
        return True
    return all(key in _PLAIN_KEYWORDS or (isinstance(key, str) and key.startswith("x-")) for key in schema)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value  # not NaN


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def plainly_valid(schema: Mapping[str, Any], value: Any, depth: int) -> bool:
    """True only when `value` is valid under the plain `schema`; False means "ask jsonschema"."""
    if depth > _PLAIN_DEPTH:
        return False
    kind = schema.get("type")
    if kind is not None:
        kinds = kind if isinstance(kind, list) else [kind]
        if not any(_PLAIN_TYPES[k](value) for k in kinds):
            return False
    enum = schema.get("enum")
    if enum is not None and not (isinstance(value, str) and value in enum):
        return False
    if isinstance(value, int | float) and not isinstance(value, bool):
        # Written as what must hold, so a NaN (which compares False) is never said to be within a bound.
        if not all(check(value, schema[key]) for key, check in _NUMBER_BOUNDS.items() if key in schema):
            return False
    elif isinstance(value, str) and not all(  # JSON Schema counts code points, as `len` does
        check(len(value), schema[key]) for key, check in _LENGTH_BOUNDS.items() if key in schema
    ):
        return False
    if isinstance(value, dict):
        properties: Mapping[str, Any] = schema.get("properties", {})
        for name in schema.get("required", ()):
            if name not in value:
                return False
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            sub = properties.get(name)
            if sub is None:
                if extra is False or (extra is not True and not plainly_valid(extra, item, depth + 1)):
                    return False
            elif not plainly_valid(sub, item, depth + 1):
                return False
    elif isinstance(value, list):
        if not all(check(len(value), schema[key]) for key, check in _ITEM_BOUNDS.items() if key in schema):
            return False
        if "items" in schema:
            items = schema["items"]
            return all(plainly_valid(items, item, depth + 1) for item in value)
    return True
