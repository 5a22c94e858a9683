"""Template values that are not yet JSON data (a `map` without `| list`, `.items()`, `range`), and the steps a
run's abort cancels, as a real client sees them from a real `vmcp serve` over the demo backend."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client

from tests.support import Gateway, demo_backend, running_gateway, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def text(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


PEOPLE = {"type": "array", "items": {"type": "string"}, "default": ["ada", "grace"]}
SEARCH = {"id": "search", "tool": "notes_search_notes", "arguments": {"query": "x"}}
WORKFLOWS: list[dict[str, Any]] = [
    {
        "name": "wf_mapped",
        "description": "Names upper-cased by a map filter, without `| list`, in the output and a step's arguments.",
        "parameters": {"type": "object", "properties": {"people": PEOPLE}},
        "steps": [
            {"id": "save", "tool": "notes_save_note", "arguments": {"title": "t", "text": "{{ 'x' }}"}},
            {
                "id": "each",
                "type": "for_each",
                "tool": "notes_search_notes",
                "over": "{{ params.people | map('upper') }}",
                "arguments": {"query": "{{ item }}"},
            },
        ],
        "output": {"names": "{{ params.people | map('upper') }}", "count": "{{ steps.each.output | length }}"},
    },
    {
        "name": "wf_views",
        "description": "A dict's items and a range in the output.",
        "parameters": {"type": "object", "properties": {"obj": {"type": "object", "default": {"k": "v"}}}},
        "steps": [SEARCH],
        "output": {"pairs": "{{ params.obj.items() }}", "numbers": "{{ range(3) }}", "nested": "{{ [range(2)] }}"},
    },
    {
        "name": "wf_empty_selection",
        "description": "A step whose condition selects nothing.",
        "parameters": {"type": "object", "properties": {"nums": {"type": "array", "default": [1, 2]}}},
        "steps": [{**SEARCH, "condition": "{{ params.nums | select('gt', 5) }}"}],
        "output": {"status": "{{ steps.search.status }}"},
    },
    {
        "name": "wf_not_data",
        "description": "An expression giving a function.",
        "steps": [{"id": "search", "tool": "notes_search_notes", "arguments": {"query": "{{ range }}"}}],
    },
    {
        "name": "wf_aborted",
        "description": "A slow step running when another step fails.",
        "steps": [
            {"id": "slow", "tool": "notes_slow_echo", "arguments": {"message": "hi", "seconds": 30}},
            {"id": "bad", "tool": "notes_search_notes", "arguments": {"query": "{{ 1 / 0 }}"}},
        ],
    },
]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    directory: Path = tmp_path_factory.mktemp("wf-template-data")
    config = {"backends": [demo_backend("notes")], "workflows": WORKFLOWS}
    with running_gateway(write_config(directory, config)) as running:
        yield running


async def call(gateway: Gateway, name: str) -> types.CallToolResult:
    with anyio.fail_after(60):
        async with Client(gateway.url) as client:
            return await client.call_tool(name, {})


async def test_a_map_without_list_is_a_list_in_the_text_the_structured_content_and_a_for_each(
    gateway: Gateway,
) -> None:
    result = await call(gateway, "wf_mapped")
    assert not result.is_error, text(result)
    assert json.loads(text(result)) == {"names": ["ADA", "GRACE"], "count": 2}
    assert result.structured_content == {"names": ["ADA", "GRACE"], "count": 2}


async def test_dict_items_and_ranges_reach_the_client_as_arrays(gateway: Gateway) -> None:
    result = await call(gateway, "wf_views")
    assert not result.is_error, text(result)
    assert json.loads(text(result)) == {"pairs": [["k", "v"]], "numbers": [0, 1, 2], "nested": [[0, 1]]}


async def test_a_condition_that_selects_nothing_skips_its_step(gateway: Gateway) -> None:
    result = await call(gateway, "wf_empty_selection")
    assert not result.is_error, text(result)
    assert json.loads(text(result)) == {"status": "skipped"}


async def test_an_expression_that_is_no_data_fails_its_step_by_name(gateway: Gateway) -> None:
    result = await call(gateway, "wf_not_data")
    assert result.is_error
    assert "step 'search' failed: arguments.query: TypeError: the expression gives a " in text(result)
    assert "which is not JSON data" in text(result)


async def test_a_step_the_abort_cancelled_is_reported_cancelled_not_running(gateway: Gateway) -> None:
    result = await call(gateway, "wf_aborted")
    assert result.is_error
    assert "step 'bad' failed: arguments.query: ZeroDivisionError" in text(result)
    assert "steps: slow: cancelled, bad: failed" in text(result)
