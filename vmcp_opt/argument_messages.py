"""What a refused tool call's arguments are told: one line per field, values spelled as JSON.

A refusal quotes values in JSON, as the client sent them (`null`, `true`, `"text"`), each cut to a bounded
length on its own, so a long argument cannot push what the schema expects out of the message. The lines are
built from a jsonschema `ValidationError`'s structured fields (keyword, expected value, instance), not from
its message, which spells Python (`None`, `'text'`) and repeats whole values; the two keywords whose reason
only jsonschema's message holds (`unevaluatedProperties`, `unevaluatedItems`) are respelled (`respell`).
Used by vmcp_opt/arguments.py, under its check's deadline (naming fields can run the schema's patterns).
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from jsonschema.exceptions import ValidationError

from vmcp_opt.display import printable, shorten

# `matches(pattern, name)`: whether a `patternProperties` pattern matches a field's name, as the check runs it
# (vmcp_opt/arguments.py: bounded by the check's deadline).
Matcher = Callable[[str, str], bool]


def describe(error: ValidationError, matches: Matcher) -> str:
    """`field 'a.b[0]': reason` — the path a user can find in their call."""
    return _descriptions(error, matches)[0]


def describe_all(errors: Iterable[ValidationError], matches: Matcher) -> list[str]:
    """Every field `errors` find wrong, once each, in the order jsonschema found them."""
    lines: dict[str, None] = {}
    seen: set[tuple[Any, ...]] = set()
    for error in errors:
        # jsonschema yields one `required` error per missing field, each holding the whole list: described once,
        # not once per error (10,000 missing fields made that quadratic).
        key = (error.validator, id(error.validator_value), id(error.instance), id(error.schema), *error.absolute_path)
        if key not in seen:
            seen.add(key)
            lines.update(dict.fromkeys(_descriptions(error, matches)))
    return list(lines)


def _descriptions(error: ValidationError, matches: Matcher) -> list[str]:
    """One line per field: each missing one of a `required` (or `dependentRequired`), each refused one of an
    `additionalProperties` (jsonschema's errors for these point at the object, not the field), else the reason."""
    path = ""
    for part in error.absolute_path:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    path = shorten(path, 200)
    per_field = _missing_fields(error, path) or _refused_fields(error, path, matches)
    if per_field:
        return per_field
    return [f"field '{path or '(arguments)'}': {shorten(_reason(error), 300)}"]


def _missing_fields(error: ValidationError, path: str) -> list[str]:
    if error.validator == "required" and error.validator_value is True:  # draft 3: the path names the field
        return [f"field '{path}': required but missing"]
    present = error.instance if isinstance(error.instance, dict) else None
    if present is None:
        return []
    if error.validator == "required" and isinstance(error.validator_value, list):
        missing = [(name, "") for name in error.validator_value if name not in present]
    elif error.validator in ("dependentRequired", "dependencies") and isinstance(error.validator_value, dict):
        missing = [
            (name, f" when '{shorten(str(given), 100)}' is given")
            for given, needed in error.validator_value.items()
            if given in present
            for name in ([needed] if isinstance(needed, str) else needed if isinstance(needed, list) else [])
            if name not in present
        ]
    else:
        return []
    named = [
        f"field '{shorten(_field(path, name), 200)}': required{why} but missing"
        for name, why in missing[:MAX_NAMED_FIELDS]
    ]
    if len(missing) > MAX_NAMED_FIELDS:
        named.append(
            f"field '{path or '(arguments)'}': {len(missing) - MAX_NAMED_FIELDS:,} more required fields missing"
        )
    return named


def _refused_fields(error: ValidationError, path: str, matches: Matcher) -> list[str]:
    if error.validator != "additionalProperties" or not isinstance(error.instance, dict):
        return []
    schema = error.schema if isinstance(error.schema, dict) else {}
    allowed = schema.get("properties", {})
    patterns = schema.get("patternProperties", {})
    patterns = patterns if isinstance(patterns, dict) else {}
    extra = sorted(
        name
        for name in error.instance
        if name not in allowed and not any(matches(pattern, name) for pattern in patterns)
    )
    named = [f"field '{shorten(_field(path, name), 200)}': not accepted by this tool" for name in extra]
    if len(named) > MAX_NAMED_FIELDS:
        more = f"field '{path or '(arguments)'}': {len(named) - MAX_NAMED_FIELDS:,} more fields not accepted"
        named = [*named[:MAX_NAMED_FIELDS], more]
    return named


def _field(path: str, name: object) -> str:
    return f"{path}.{name}" if path else str(name)


# --- reasons in JSON spelling ------------------------------------------------------------------------------
# The client sent JSON, so a reason quotes its values (and the schema's) as JSON: null, true, "text", not
# jsonschema's Python reprs (None, True, 'text'). Each value is cut on its own, so a long argument cannot
# push the schema's expectation (an enum's choices, a pattern) out of a bounded message.

MAX_NAMED_FIELDS = 32
_VALUE_LIMIT = 60
SCHEMA_LIMIT = 200
_SIZE_REASONS = {
    "minLength": "{got} is too short (at least {limit} characters)",
    "maxLength": "{got} is too long (at most {limit} characters)",
    "minItems": "{got} has too few items (at least {limit})",
    "maxItems": "{got} has too many items (at most {limit})",
    "minProperties": "{got} has too few properties (at least {limit})",
    "maxProperties": "{got} has too many properties (at most {limit})",
}


def _reason(error: ValidationError) -> str:
    keyword, expected, value = error.validator, error.validator_value, error.instance
    got = spell(value)
    if keyword is None:  # a `false` schema
        return f"{got} is not allowed here (the schema accepts no value)"
    if keyword == "type":
        return f"{got} is not of type {_type_names(expected)}"
    if keyword == "enum":
        return f"{got} is not one of {spell(expected, SCHEMA_LIMIT)}"
    if keyword == "const":
        return f"{spell(expected, SCHEMA_LIMIT)} was expected, not {got}"
    if keyword in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        return _bound_reason(keyword, expected, got, error.schema)
    if keyword == "multipleOf":
        return f"{got} is not a multiple of {spell(expected)}"
    if keyword in _SIZE_REASONS:
        return _SIZE_REASONS[keyword].format(got=got, limit=spell(expected))
    if keyword == "pattern":
        return f"{got} does not match {spell(expected, SCHEMA_LIMIT)}"
    if keyword == "format":
        return f"{got} is not a valid {spell(expected)}"
    return _structural_reason(str(keyword), expected, got, error)


def _structural_reason(keyword: str, expected: Any, got: str, error: ValidationError) -> str:
    """Keywords about a value's parts or about subschemas."""
    if keyword in ("anyOf", "oneOf") and error.context:
        return f"{got} is not valid under any of the given schemas"
    if keyword == "oneOf":
        return f"{got} is valid under more than one of the given schemas (it must match exactly one)"
    if keyword == "not":
        return f"{got} should not be valid under {spell(expected, SCHEMA_LIMIT)}"
    if keyword == "contains":
        return f"{got} does not contain items matching the given schema"
    if keyword == "disallow":
        return f"{got} is of a disallowed type ({_type_names(expected)})"
    if keyword in ("items", "additionalItems") and isinstance(value := error.instance, list):
        prefix = _prefix_length(error.schema, keyword)
        return f"at most {prefix} items are accepted, got {len(value)}: {spell(value[prefix:])} unexpected"
    if keyword == "additionalProperties" and isinstance(error.instance, dict):
        return f"{got} has properties this tool does not accept"
    return respell(
        shorten(error.message, 2000)
    )  # the rest quote no argument (uniqueItems, minContains) or rarely meet one


def _bound_reason(keyword: str, expected: Any, got: str, schema: Any) -> str:
    lower = keyword.lower().endswith("minimum")
    # Draft 4 spells an exclusive bound as a boolean beside `minimum`/`maximum`.
    exclusive = keyword.startswith("exclusive") or (
        isinstance(schema, dict) and schema.get(f"exclusive{keyword.title()}") is True
    )
    relation = ("less than" if lower else "greater than") + (" or equal to" if exclusive else "")
    return f"{got} is {relation} the {'minimum' if lower else 'maximum'} of {spell(expected)}"


def _type_names(types: Any) -> str:
    names = types if isinstance(types, list) else [types]
    return ", ".join(spell(name.get("name", name) if isinstance(name, dict) else name) for name in names)


def _prefix_length(schema: Any, keyword: str) -> int:
    """How many leading items a tuple-like schema describes (`prefixItems`, or an `items` array before 2020-12)."""
    if not isinstance(schema, dict):
        return 0
    described = schema.get("prefixItems" if keyword == "items" else "items", [])
    return len(described) if isinstance(described, list) else 0


def spell(value: Any, limit: int = _VALUE_LIMIT) -> str:
    """`value` in JSON spelling, cut after about `limit` characters (with "…"): a walk that stops at the
    limit, so a huge argument costs no more than a small one."""
    parts: list[str] = []
    budget = [limit]
    complete = _spell_into(value, parts, budget)
    text = "".join(parts)
    if complete and len(text) <= limit:
        return printable(text)
    whole = f" ({len(value):,} characters)" if isinstance(value, str) else ""
    return printable(f"{text[:limit]}…{whole}")


def _spell_into(value: Any, parts: list[str], budget: list[int]) -> bool:
    """Appends `value`'s JSON to `parts` until `budget[0]` characters are spent; False when cut short."""
    if isinstance(value, Mapping):
        return _spell_sequence("{", "}", value.items(), parts, budget, pairs=True)
    if isinstance(value, list | tuple):
        return _spell_sequence("[", "]", value, parts, budget, pairs=False)
    if isinstance(value, str):
        room = max(budget[0], 0) + 1
        text, cut = json.dumps(value[:room], ensure_ascii=False), len(value) > room
    else:
        text, cut = _scalar(value), False
    parts.append(text)
    budget[0] -= len(text)
    return not cut and budget[0] >= 0


def _spell_sequence(
    opening: str, closing: str, items: Iterable[Any], parts: list[str], budget: list[int], pairs: bool
) -> bool:
    parts.append(opening)
    budget[0] -= 1
    for index, item in enumerate(items):
        if budget[0] < 0:
            return False
        if index:
            parts.append(", ")
            budget[0] -= 2
        if pairs:
            key, item = item
            if not _spell_into(str(key), parts, budget):
                return False
            parts.append(": ")
            budget[0] -= 2
        if not _spell_into(item, parts, budget):
            return False
    parts.append(closing)
    budget[0] -= 1
    return budget[0] >= 0


def _scalar(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 10_000:
        return f"(an integer of about {int(value.bit_length() * math.log10(2)):,} digits)"  # past str()'s limit
    try:
        return json.dumps(value)  # null, true, 1.5, NaN
    except (TypeError, ValueError):  # not a JSON value
        return shorten(repr(value), _VALUE_LIMIT)


# A Python literal in a message: a quoted string (repr picks ' or "), or one of the three named constants. A
# quote never closed (the message was cut) runs to the end as one unparsable literal, left as it is: tried
# instead as no literal, it was read to the end again from each quote after it (`"\` repeated: quadratic).
_PYTHON_LITERAL = re.compile(
    r"""'(?:[^'\\]|\\.)*+(?:'|\\?\Z)|"(?:[^"\\]|\\.)*+(?:"|\\?\Z)|\b(?:None|True|False)\b""", re.DOTALL
)
_PYTHON_CONSTANTS = {"None": "null", "True": "true", "False": "false"}


def respell(message: str) -> str:
    """jsonschema's message with its Python literals ('x', None, {'a': True}) written as JSON; for the reasons
    `_reason` does not build itself. A literal that does not parse back is left as it was."""

    def json_spelling(match: re.Match[str]) -> str:
        literal = match.group()
        if literal in _PYTHON_CONSTANTS:
            return _PYTHON_CONSTANTS[literal]
        try:
            return json.dumps(ast.literal_eval(literal), ensure_ascii=False)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return literal

    return _PYTHON_LITERAL.sub(json_spelling, message)
