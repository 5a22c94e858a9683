"""The size cap on backend results (pure): what counts, and what an oversize result becomes."""

from __future__ import annotations

import mcp_types as types
import pytest
from mcp.shared.exceptions import MCPError

from vmcp_opt.backends.results import bounded_result, exceeds


def tool_result(text: str, structured: dict[str, object] | None = None) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], structured_content=structured)


def test_text_data_and_structured_content_all_count() -> None:
    assert not exceeds(tool_result("x" * 900), 1000)
    assert exceeds(tool_result("x" * 1100), 1000)
    assert exceeds(tool_result("x", {"rows": [{"v": "y" * 50} for _ in range(100)]}), 1000)
    blob = types.BlobResourceContents(uri="file:///a", blob="A" * 5000)
    assert exceeds(types.ReadResourceResult(contents=[blob]), 1000)


def test_an_oversize_tool_result_becomes_an_error_result_naming_the_backend_and_the_cap() -> None:
    small = tool_result("ok")
    assert bounded_result("svc", small, 1000) is small
    capped = bounded_result("svc", tool_result("x" * 5000), 1000)
    assert capped.is_error
    [content] = capped.content
    assert isinstance(content, types.TextContent)
    assert "backend 'svc'" in content.text and "1,000 bytes" in content.text and "max_result_bytes" in content.text


def test_other_oversize_results_become_an_error_response() -> None:
    contents = [types.TextResourceContents(uri="file:///a", text="x" * 5000)]
    with pytest.raises(MCPError, match="backend 'svc' returned a result larger than 1,000 bytes"):
        bounded_result("svc", types.ReadResourceResult(contents=contents), 1000)
