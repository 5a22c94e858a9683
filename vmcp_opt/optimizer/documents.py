"""The text each tool is indexed by, and the hash that says when it must be re-embedded.

A tool document joins what an agent's request is likely to mention: the backend's name and description,
the tool's name split into words (`get_current_time`, `getCurrentTime` and `get-current-time` all become
"get current time"), its title and description, and the names and descriptions of its parameters.
Both arms of the index (keywords and vectors) read the same document. A description written as a docstring
gives its summary only; its `Args:` block describes parameters the schema leaves undescribed
(`optimizer/docstrings.py`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from vmcp_opt.optimizer.docstrings import read_description

# How deep nested object parameters are walked for names and descriptions.
_MAX_SCHEMA_DEPTH = 3
# Parameter descriptions longer than this are cut: long prose drowns the tool's own description.
_MAX_PARAM_DESCRIPTION = 300

_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_SEPARATORS = re.compile(r"[\s_\-./:]+")
_LETTER_DIGIT = re.compile(r"(?<=[A-Za-z])(?=[0-9])|(?<=[0-9])(?=[A-Za-z])")
# "(e.g., 'Asia/Tokyo', ...)" in a parameter description names sample values, not what the tool does: left
# in, mcp-server-time's convert_time outranks get_current_time for "what time is it in Tokyo".
_EXAMPLE_VALUES = re.compile(r"\s*\((?:e\.\s?g\.?|eg\.|for example|for instance|such as)[^)]*\)", re.IGNORECASE)


@dataclass(frozen=True)
class ToolRecord:
    """One tool as the gateway exposes it; `name` is the routable name and the record's key."""

    name: str
    backend: str
    description: str = ""
    # Excluded from the hash (a dict is not hashable); still part of equality.
    input_schema: Mapping[str, Any] = field(default_factory=dict, hash=False)
    title: str | None = None
    backend_description: str = ""
    # The backend's own tool name, when the gateway renamed it (prefixing, overrides).
    original_name: str | None = None


def split_identifier(name: str) -> list[str]:
    """Words of an identifier: snake_case, camelCase, PascalCase, kebab-case, dotted and digits.

    >>> split_identifier("getHTTPResponse_v2-beta")
    ['get', 'http', 'response', 'v', '2', 'beta']
    """
    words: list[str] = []
    for part in _SEPARATORS.split(name):
        if not part:
            continue
        for piece in _CAMEL_BOUNDARY.split(part):
            words.extend(w.lower() for w in _LETTER_DIGIT.split(piece) if w)
    return words


def tool_document(record: ToolRecord) -> str:
    """The text indexed for `record` (one field per line, empty fields left out)."""
    own_name = record.original_name or record.name
    described = read_description(record.description)
    lines = [
        f"{' '.join(split_identifier(record.backend))}: {record.backend_description}".strip().rstrip(":"),
        f"{' '.join(split_identifier(own_name))} ({own_name})",
    ]
    if record.title:
        lines.append(record.title)
    if described.summary:
        lines.append(described.summary)
    for name, description in _parameters(record.input_schema, described.arguments):
        words = " ".join(split_identifier(name))
        lines.append(f"{words}: {description}" if description else words)
    return "\n".join(line for line in lines if line)


def content_hash(record: ToolRecord) -> str:
    """sha256 (hex) of the tool document: equal hashes mean the stored vector is still right.

    Hashing the document itself (not the record) means a change to how documents are built also
    invalidates the vectors built from the old ones.
    """
    return hashlib.sha256(tool_document(record).encode("utf-8")).hexdigest()


def _parameters(schema: Mapping[str, Any], documented: Mapping[str, str], depth: int = 0) -> Iterator[tuple[str, str]]:
    """(name, description) of each property, walking nested objects and arrays of objects; a property the
    schema leaves undescribed takes the docstring's words for it (`documented`), and with no properties at
    all the docstring's arguments stand for them."""
    if depth >= _MAX_SCHEMA_DEPTH or not isinstance(schema, Mapping):
        return
    properties = schema.get("properties")
    if not isinstance(properties, Mapping) or not properties:
        if depth == 0:
            yield from ((name, _parameter_text(text)) for name, text in documented.items())
        return
    for name, spec in properties.items():
        if not isinstance(spec, Mapping):
            yield str(name), _parameter_text(documented.get(str(name), ""))
            continue
        own = str(spec.get("description") or spec.get("title") or "")
        yield str(name), _parameter_text(own or documented.get(str(name), ""))
        yield from _parameters(spec, {}, depth + 1)
        items = spec.get("items")
        if isinstance(items, Mapping):
            yield from _parameters(items, {}, depth + 1)


def _parameter_text(text: str) -> str:
    return _EXAMPLE_VALUES.sub("", text).strip()[:_MAX_PARAM_DESCRIPTION]
