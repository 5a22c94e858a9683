"""The size cap on backend results (pure): what counts, and what an oversize result becomes."""

from __future__ import annotations

import json

import mcp_types as types
import pytest
from mcp.shared.exceptions import MCPError

from vmcp_opt.backends.results import NAIVE_HELD_BYTES, ValueCounter, bounded_result, exceeds


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


# Valid JSON with `{`, `[` and `,` inside its strings, escapes before quotes, and a string after a backslash pair:
# 8 values outside its strings, 14 naively.
CSV_ANSWER = rb'{"rows": ["a,b,c", "say \"x,y\"", "back\\", "{[,"], "n": [1, 2]}'


def exact_values(text: bytes) -> int:
    counter = ValueCounter()
    counter.feed(text)
    return counter.values


def test_a_value_counter_told_its_limit_is_exact_whenever_the_text_passes_it() -> None:
    exact = exact_values(CSV_ANSWER)
    assert exact == 8 and json.loads(CSV_ANSWER)
    for most in range(exact + 10):
        for cut in range(len(CSV_ANSWER) + 1):  # a string, an escape, cut between two pieces
            counter = ValueCounter(most)
            counter.feed(CSV_ANSWER[:cut])
            counter.feed(CSV_ANSWER[cut:])
            assert (counter.values > most) == (exact > most), (most, cut)
            assert counter.values == exact if counter.values > most else counter.values >= exact


def test_a_value_counter_within_its_limit_gives_the_naive_count_without_the_exact_pass() -> None:
    counter = ValueCounter(most=100)
    counter.feed(CSV_ANSWER)
    assert counter.values == 14  # every `{`, `[` and `,`: never fewer than the values, and cheap to count


def test_a_value_counter_counts_exactly_past_the_bytes_it_keeps_to_recount() -> None:
    counter = ValueCounter(most=10**9)
    counter.feed(b'["' + b"a," * (NAIVE_HELD_BYTES // 2))  # one string of commas, cut before its end
    counter.feed(b'", "b"]')
    assert counter.values == 2
