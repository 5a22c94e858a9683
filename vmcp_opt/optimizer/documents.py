"""The text each tool is indexed by, and the hash that says when it must be re-embedded.

A tool document joins what an agent's request is likely to mention: the backend's name and description,
the tool's name split into words (`get_current_time`, `getCurrentTime` and `get-current-time` all become
"get current time"), its title and description, and the names and descriptions of its parameters.
The vector arm reads `tool_document`; the keyword arm reads `keyword_document`: the same document by
default, or with `optimizer.parameter_weight` above 1 the parameters written in full (no length cut) and
repeated that many times. A request names what it passes ("... for the city of Lyon, in French"), and on
the ToolLens dev split the keyword arm ranked better the more its parameters weighed, but not on the
held-out ToolRet sets (eval/README.md, fifth round), hence the default. With `optimizer.parameter_share`
set (not by default: it lost on toolink), the keyword arm reads `keyword_fields` instead: the head and the
full parameter lines apart, so that the parameters can weigh a fraction (eval/README.md, sixth round).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

# How deep nested object parameters are walked for names and descriptions.
_MAX_SCHEMA_DEPTH = 3
# Parameter descriptions longer than this are cut: long prose drowns the tool's own description.
_MAX_PARAM_DESCRIPTION = 300

_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_SEPARATORS = re.compile(r"[\s_\-./:]+")
_LETTER_DIGIT = re.compile(r"(?<=[A-Za-z])(?=[0-9])|(?<=[0-9])(?=[A-Za-z])")
# "(e.g., 'Asia/Tokyo', ...)" in a parameter description names sample values, not what the tool does: left
# in, mcp-server-time's convert_time outranks get_current_time for "what time is it in Tokyo". The spaces
# before it go too, tried once from where their run starts (`(?<!\s)`): a bare leading `\s*` was tried from
# every space of a long run again, quadratic in a backend's description (see `_without_examples` too).
_EXAMPLE_VALUES = re.compile(r"(?<!\s)\s*+\((?:e\.\s?g\.?|eg\.|for example|for instance|such as)[^)]*\)", re.IGNORECASE)


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
    """The text the vector arm indexes for `record` (one field per line, empty fields left out)."""
    lines = [*_head(record), *_parameter_lines(record.input_schema, full=False)]
    return "\n".join(line for line in lines if line)


def keyword_document(record: ToolRecord, parameter_weight: int = 1) -> str:
    """The text the keyword arm indexes: `tool_document` at weight 1 (the default); above, its fields with
    the parameters in full and repeated `parameter_weight` times.

    A repeated line counts its words again in BM25, the way a field weight would; the description is not
    repeated (that lost on dev). The model's document keeps the length cut: long prose pulls its one vector
    away from what the tool does. Sample values stay out of both (see `_EXAMPLE_VALUES`).
    """
    if parameter_weight <= 1:
        return tool_document(record)
    parameters = _parameter_lines(record.input_schema, full=True) * parameter_weight
    return "\n".join(line for line in (*_head(record), *parameters) if line)


def keyword_fields(record: ToolRecord) -> tuple[str, str]:
    """The keyword arm's two fields for a weight chosen per catalogue: the head (backend, name, title,
    description) and the parameter lines written in full, each joined by lines as `tool_document` joins."""
    head = "\n".join(line for line in _head(record) if line)
    return head, "\n".join(line for line in _parameter_lines(record.input_schema, full=True) if line)


def _head(record: ToolRecord) -> list[str]:
    """Backend line, name line, title and description."""
    own_name = record.original_name or record.name
    lines = [
        f"{' '.join(split_identifier(record.backend))}: {record.backend_description}".strip().rstrip(":"),
        f"{' '.join(split_identifier(own_name))} ({own_name})",
    ]
    if record.title:
        lines.append(record.title)
    if record.description:
        lines.append(record.description.strip())
    return lines


def _parameter_lines(schema: Mapping[str, Any], *, full: bool) -> list[str]:
    """One `words: description` line per parameter; `full` keeps long descriptions whole."""
    lines = []
    for name, description in _parameters(schema, full=full):
        words = " ".join(split_identifier(name))
        lines.append(f"{words}: {description}" if description else words)
    return lines


def content_hash(record: ToolRecord) -> str:
    """sha256 (hex) of the tool document: equal hashes mean the stored vector is still right.

    Hashing the document itself (not the record) means a change to how documents are built also
    invalidates the vectors built from the old ones.
    """
    return document_hash(tool_document(record))


def document_hash(document: str) -> str:
    """`content_hash` of the record whose `tool_document` is `document` (building it again doubled the cost
    of an update's preparation)."""
    return hashlib.sha256(document.encode("utf-8")).hexdigest()


def _without_examples(description: str) -> str:
    """`description` without its sample values. Only its text up to the last `)` is searched: from each `(e.g.`
    with no `)` after it, `[^)]*` would read to the end of the text, once per such opening."""
    end = description.rfind(")") + 1
    return _EXAMPLE_VALUES.sub("", description[:end]) + description[end:]


def _parameters(schema: Mapping[str, Any], depth: int = 0, *, full: bool = False) -> Iterator[tuple[str, str]]:
    """(name, description) of each property, walking nested objects and arrays of objects."""
    if depth >= _MAX_SCHEMA_DEPTH or not isinstance(schema, Mapping):
        return
    properties = schema.get("properties")
    if not isinstance(properties, Mapping):
        return
    for name, spec in properties.items():
        if not isinstance(spec, Mapping):
            yield str(name), ""
            continue
        description = str(spec.get("description") or "").strip() or _own_title(str(name), spec)
        description = _without_examples(description).strip()
        if not full:
            description = description[:_MAX_PARAM_DESCRIPTION]
        yield str(name), description
        yield from _parameters(spec, depth + 1, full=full)
        items = spec.get("items")
        if isinstance(items, Mapping):
            yield from _parameters(items, depth + 1, full=full)


def _own_title(name: str, spec: Mapping[str, Any]) -> str:
    """A parameter's `title` when it says more than its name: pydantic generates `"Repo Path"` for
    `repo_path`, which would put the name in the document twice."""
    title = str(spec.get("title") or "").strip()
    return "" if split_identifier(title) == split_identifier(name) else title
