"""A find_tool result as small as a call allows: what to call and with what, without the boilerplate.

Two kinds of text repeat in almost every result and tell an agent nothing it needs to make the call:
- in the description, the rest of a docstring: `Returns:`, `Raises:`, examples and code. The summary and
  its `Note:` sections stay, and what its `Args:` block says of a parameter moves into that parameter's schema when the schema has no
  description of its own (`optimizer/docstrings.py`);
- in the schema, the annotations a generator stamps on every tool: `$schema` (zod-to-json-schema, as the
  npm reference servers send it) and titles spelled from the property's own name (pydantic: `"title":
  "Path"` for `path`, `"title": "read_fileArguments"` for the whole). Everything that decides whether a
  call is valid (types, required, enums, defaults, formats, additionalProperties) is kept as sent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from vmcp_opt.optimizer.docstrings import read_description

_NOT_LETTERS = re.compile(r"[^a-z0-9]")


def answer_description(description: str) -> tuple[str, dict[str, str]]:
    """The description a result shows (its summary, whole, and its notes: a caveat such as "cannot be undone"
    is what an agent must read before the call), and what its docstring says of each argument. A description
    that opens with a section (`Returns:` first) has no summary: it is shown as written, not as nothing."""
    described = read_description(description, limit=None)
    if not described.summary:
        return description.strip(), described.arguments
    if described.notes:
        return f"{described.summary} Note: {described.notes}", described.arguments
    return described.summary, described.arguments


def compact_schema(schema: Mapping[str, Any], name: str, documented: Mapping[str, str]) -> dict[str, Any]:
    """`schema` without generated annotations, its properties described from the docstring where bare."""
    compact = {key: value for key, value in schema.items() if key != "$schema" and not _derived_title(key, value, name)}
    properties = schema.get("properties")
    if isinstance(properties, Mapping):
        compact["properties"] = {
            prop: _compact_property(prop, spec, documented.get(prop)) for prop, spec in properties.items()
        }
    return compact


def _compact_property(name: str, spec: Any, documented: str | None) -> Any:
    if not isinstance(spec, Mapping):
        return spec
    compact = {key: value for key, value in spec.items() if not _derived_title(key, value, name)}
    if documented and not compact.get("description"):
        compact["description"] = documented
    return compact


def _derived_title(key: str, value: Any, name: str) -> bool:
    """A `title` that only respells `name` (or `<name>Arguments`), as schema generators write them."""
    if key != "title" or not isinstance(value, str):
        return False
    spelled = _NOT_LETTERS.sub("", value.lower())
    own = _NOT_LETTERS.sub("", name.lower())
    # `statusArguments` for git_status: the model class is named after the last words of the tool.
    stem = spelled.removesuffix("arguments")
    return spelled == own or (spelled != stem and bool(stem) and own.endswith(stem))
