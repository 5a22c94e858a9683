"""Tool arguments checked against an input schema before a call leaves the gateway (routed tools and meta-tools)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jsonschema import validators
from jsonschema.exceptions import SchemaError, ValidationError, best_match
from jsonschema.protocols import Validator


class ArgumentError(Exception):
    """Arguments that do not fit the schema; the message names the field and the reason."""


class ArgumentValidator:
    """Compiled validators, cached per tool schema (schemas are re-used on every call)."""

    def __init__(self) -> None:
        self._cache: dict[int, tuple[Mapping[str, Any], Validator | None]] = {}

    def check(self, tool_name: str, schema: Mapping[str, Any], arguments: Mapping[str, Any] | None) -> None:
        validator = self._validator(schema)
        if validator is None:
            return
        errors = list(validator.iter_errors(dict(arguments or {})))
        if errors:
            raise ArgumentError(f"invalid arguments for tool '{tool_name}': {describe(best_match(errors))}")

    def _validator(self, schema: Mapping[str, Any]) -> Validator | None:
        cached = self._cache.get(id(schema))
        if cached is not None and cached[0] is schema:
            return cached[1]
        validator: Validator | None
        try:
            cls = validators.validator_for(schema, default=validators.Draft202012Validator)
            cls.check_schema(dict(schema))
            validator = cls(dict(schema))
        except SchemaError:
            validator = None  # a backend's broken schema is the backend's to enforce
        self._cache[id(schema)] = (schema, validator)
        return validator


def describe(error: ValidationError) -> str:
    """`field 'a.b[0]': reason` — the path a user can find in their call."""
    path = ""
    for part in error.absolute_path:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    if error.validator == "required" and isinstance(error.validator_value, list):
        present = error.instance if isinstance(error.instance, dict) else {}
        missing = next((name for name in error.validator_value if name not in present), None)
        if missing is not None:
            field = f"{path}.{missing}" if path else missing
            return f"field '{field}': required but missing"
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        schema = error.schema if isinstance(error.schema, dict) else {}
        allowed = set(schema.get("properties", {}))
        extra = sorted(set(error.instance) - allowed)
        if extra:
            field = f"{path}.{extra[0]}" if path else extra[0]
            return f"field '{field}': not accepted by this tool"
    return f"field '{path or '(arguments)'}': {error.message}"
