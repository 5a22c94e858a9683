"""A size cap on what a backend returns (`limits.max_result_bytes`): an oversize result becomes an error.

The size is measured on the parsed result by walking it and adding up the lengths of its strings (text,
base64 data, URIs, structured content), about its JSON size; the walk stops as soon as the cap is passed,
so measuring costs at most a walk of `cap` characters whatever the backend sent.
"""

from __future__ import annotations

import logging
from typing import Any, TypeVar

import mcp_types as types
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel

logger = logging.getLogger(__name__)

ResultT = TypeVar("ResultT")
_NODE = 8  # what a number, a bracket or a key's quotes add to the JSON


def exceeds(value: Any, cap: int) -> bool:
    """Whether `value` (a result model, or JSON-like data) takes more than about `cap` bytes as JSON."""
    return json_size(value, cap) is None


def json_size(value: Any, cap: int) -> int | None:
    """About `value`'s size as JSON (a result model, or JSON-like data), or None once it passes `cap`: the walk
    stops there."""
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str | bytes):
            total += len(item) + 2
        elif isinstance(item, BaseModel):
            stack.extend(item.__dict__.values())
            if item.__pydantic_extra__:
                stack.extend(item.__pydantic_extra__.values())
            total += _NODE
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
            total += _NODE
        elif isinstance(item, list | tuple):
            stack.extend(item)
            total += _NODE
        else:
            total += _NODE
        if total > cap:
            return None
    return total


def bounded_result(backend: str, result: ResultT, cap: int) -> ResultT:
    """`result` when it is within `cap`; otherwise a tool's error result (for tools/call) or an MCPError (-32603).

    Neither counts as a failure for the backend's circuit breaker: the result is large, not invalid, and the
    backend that sent it is healthy (backends/errors.py, `broken_answer`, says why)."""
    if not exceeds(result, cap):
        return result
    message = (
        f"backend '{backend}' returned a result larger than {cap:,} bytes (limits.max_result_bytes); "
        "it was not passed on"
    )
    logger.warning("%s", message)
    if isinstance(result, types.CallToolResult):
        error = types.CallToolResult(content=[types.TextContent(type="text", text=message)], is_error=True)
        return error  # type: ignore[return-value]
    raise MCPError(types.INTERNAL_ERROR, message)
