"""A backend's tools page validated in slices gives what the whole page's validation gives."""

from __future__ import annotations

from typing import Any

import mcp_types as types
import pytest
from mcp_types.methods import serialize_server_result, validate_server_result
from pydantic import ValidationError

from vmcp_opt.backends.listing import TOOLS_SLICE, _validated_in_slices


def page(count: int) -> dict[str, Any]:
    """A page of varied tools: titles, annotations, output schemas, _meta, icons, odd text."""
    tools = []
    for n in range(count):
        tool: dict[str, Any] = {
            "name": f"tool_{n}",
            "description": f'Tool {n}: «ünïcødé» 東京 \\ "quoted"',
            "inputSchema": {"type": "object", "properties": {"q": {"type": "string", "pattern": "^[a-z]+$"}}},
        }
        if n % 3 == 0:
            tool["title"] = f"Tool number {n}"
            tool["annotations"] = {"readOnlyHint": True, "title": "read only"}
        if n % 5 == 0:
            tool["outputSchema"] = {"type": "object", "properties": {"n": {"type": "integer"}}}
            tool["_meta"] = {"example.com/rank": n}
        if n % 7 == 0:
            tool["icons"] = [{"src": f"https://example.com/{n}.png", "mimeType": "image/png"}]
        tools.append(tool)
    return {"tools": tools, "nextCursor": "page-2", "_meta": {"example.com/page": 1}}


@pytest.mark.parametrize("version", ["2025-11-25", "2026-07-28"])
def test_a_page_validated_in_slices_equals_the_whole_pages_validation(version: str) -> None:
    fields = {"resultType": "complete", "ttlMs": 60_000, "cacheScope": "private"} if version == "2026-07-28" else {}
    raw = serialize_server_result("tools/list", version, {**page(TOOLS_SLICE * 2 + 37), **fields})
    validate_server_result("tools/list", version, raw)
    whole = types.ListToolsResult.model_validate(raw, by_name=False)
    sliced = _validated_in_slices(version, raw, raw, raw["tools"])
    assert sliced == whole
    assert len(sliced.tools) == TOOLS_SLICE * 2 + 37 and sliced.next_cursor == "page-2"


def test_an_invalid_tool_in_any_slice_fails_the_page_as_it_would_whole() -> None:
    raw = serialize_server_result("tools/list", "2025-11-25", page(TOOLS_SLICE * 2))
    raw["tools"][TOOLS_SLICE + 3]["inputSchema"] = []
    with pytest.raises(ValidationError):
        validate_server_result("tools/list", "2025-11-25", raw)
    with pytest.raises(ValidationError):
        _validated_in_slices("2025-11-25", raw, raw, raw["tools"])
