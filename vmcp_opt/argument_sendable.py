"""What no request can carry, found before any schema: arguments nested past `MAX_ARGUMENT_DEPTH`, or holding a
lone surrogate. A client's own JSON cannot hold either; only strings the gateway decodes make them (call_tool's
string form, a workflow's `fromjson`). Sent on, the SDK's encoding failed in the gateway (a backend's circuit
counted it) or a stdio backend's session ended on it (vmcp_opt/arguments.py checks every call with this)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from vmcp_opt.display import shorten

# How deep a call's arguments may nest, the arguments object being the first level: as deep as a client can send.
# The SDK reads every message with pydantic-core's JSON parser, which refuses nesting past 201 levels, and arguments
# sit two levels down (the message, its params). Deeper ones come only from a string decoded here (call_tool's
# `arguments`, a workflow's `fromjson`): the SDK cannot encode them for the backend past 255 levels, and a backend
# on the same parser would refuse them.
MAX_ARGUMENT_DEPTH = 199


def unsendable_field(arguments: Mapping[str, Any]) -> str | None:
    """`field 'x': why` for the first field of `arguments` no request can carry, or None: nested past
    `MAX_ARGUMENT_DEPTH` levels (the arguments object is the first), or holding a lone surrogate (`json.loads` makes
    one of the text `"\\ud800"`; UTF-8 has none, and a stdio backend's session ended on it). A client cannot send
    either: they come from strings decoded in the gateway (call_tool's string form, a workflow's `fromjson`)."""
    for key, value in arguments.items():
        problem = _unsendable(key) or _unsendable(value, MAX_ARGUMENT_DEPTH - 1)
        if problem is not None:
            return f"field '{shorten(str(key).encode('utf-8', 'replace').decode(), 200)}': {problem}"
    return None


def _unsendable(value: Any, levels: int = 0) -> str | None:
    """Why `value` cannot go in a request: containers nested more than `levels` deep (`[]` is 1), or a string (a
    value or a key) with a lone surrogate. Iterative; a container shared within the value (a workflow builds
    arguments in Python) is walked again only from a deeper level, and a cycle ends at the bound."""
    deepest: dict[int, int] = {}  # a container's id → the deepest level it was walked from
    stack: list[tuple[Any, int]] = []
    if isinstance(value, str):
        return _SURROGATE_PROBLEM if _has_surrogate(value) else None
    if isinstance(value, dict | list | tuple):
        stack.append((value, 0))
    while stack:
        node, level = stack.pop()
        if level + 1 > levels:
            return (
                f"nested more than {MAX_ARGUMENT_DEPTH} levels deep (the arguments object is the first), deeper "
                "than a request can carry; not sent"
            )
        if deepest.get(id(node), -1) >= level:
            continue
        deepest[id(node)] = level
        if isinstance(node, dict):
            if any(isinstance(key, str) and _has_surrogate(key) for key in node):
                return _SURROGATE_PROBLEM
            node = node.values()
        for child in node:  # the hot loop (300k strings: ~40 ms): strings checked here, never stacked
            if isinstance(child, str):
                if not child.isascii() and _SURROGATE.search(child):
                    return _SURROGATE_PROBLEM
            elif isinstance(child, dict | list | tuple):
                stack.append((child, level + 1))
    return None


def _has_surrogate(text: str) -> bool:
    return not text.isascii() and _SURROGATE.search(text) is not None


_SURROGATE_PROBLEM = "holds a lone surrogate (such as \\ud800), which UTF-8 cannot carry; not sent"
_SURROGATE = re.compile("[\ud800-\udfff]")
