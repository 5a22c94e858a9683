"""A filter call's worst case is charged before it runs, in the real `vmcp serve` with a real client: a
filter's own loop runs past every look at the clocks (`urlize` on 3 MB computed 14 s past the 5 s cap and the
run's timeout, holding its render slot; `batch(1)` on 3.9 MB made 3.9M lists, +389 MB), so an input whose
worst case is past what one call may do is refused, naming the filter, and the gateway keeps answering."""

from __future__ import annotations

from collections.abc import Iterator
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


def workflow(name: str, template: str) -> dict[str, Any]:
    """A workflow echoing `template` rendered over its one parameter, `t` (any JSON)."""
    return {
        "name": name,
        "description": "d",
        "parameters": {"type": "object", "properties": {"t": {}}},
        "timeout": 120,
        "steps": [{"id": "a", "tool": "notes_slow_echo", "arguments": {"message": template, "seconds": 0}}],
    }


WORKFLOWS = [
    workflow("linkify", "{{ (params.t | urlize)[:300] }}"),
    workflow("batches", "n={{ params.t | batch(1) | list | length }}"),
    workflow("wrapped", "n={{ params.t | wordwrap(1) | length }}"),
    workflow("pretty", "n={{ params.t | tojson(indent=5000) | length }}"),
]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp("filter-costs")
    config = {"backends": [demo_backend("notes")], "workflows": WORKFLOWS, "limits": {"max_result_bytes": 10_000_000}}
    with running_gateway(write_config(directory, config)) as running:
        yield running


async def call(gateway: Gateway, name: str, value: Any) -> types.CallToolResult:
    with anyio.fail_after(180):
        async with Client(gateway.url) as client:
            return await client.call_tool(name, {"t": value})


async def test_urlize_on_a_client_sized_text_is_refused_before_it_runs(gateway: Gateway) -> None:
    refused = await call(gateway, "linkify", "ab " * 500_000)  # 1.5 MB: ~7 s of CPU in one uninterrupted call
    small = await call(gateway, "linkify", "see https://example.com now")
    assert refused.is_error
    assert "SecurityError: filter 'urlize' on this input could cost" in text(refused), text(refused)
    assert not small.is_error and small.structured_content is not None, text(small)
    assert '<a href="https://example.com"' in small.structured_content["result"]


async def test_batch_of_one_on_a_long_text_is_refused_for_the_lists_it_would_make(gateway: Gateway) -> None:
    refused = await call(gateway, "batches", "x" * 500_000)  # 500,000 lists of one item: ~50 MB
    fine = await call(gateway, "batches", "x" * 1000)
    assert refused.is_error and "SecurityError: filter 'batch'" in text(refused), text(refused)
    assert not fine.is_error and "n=1000" in text(fine), text(fine)


async def test_wordwrap_breaking_a_long_run_into_short_lines_is_refused(gateway: Gateway) -> None:
    # textwrap slices what is left of a long word for every line: 100,000 spaces at width 1 are ~2.5 s
    refused = await call(gateway, "wrapped", " " * 100_000)
    assert refused.is_error and "SecurityError: filter 'wordwrap'" in text(refused), text(refused)


async def test_tojson_with_a_wide_indent_is_charged_for_the_indentation_it_writes(gateway: Gateway) -> None:
    nested: Any = list(range(300))
    for _ in range(20):
        nested = [nested]
    refused = await call(gateway, "pretty", nested)  # 300 lines of 20 x 5,000 spaces: 30M characters
    fine = await call(gateway, "pretty", [1, 2])
    assert refused.is_error and "SecurityError: filter 'tojson'" in text(refused), text(refused)
    assert not fine.is_error, text(fine)
