"""A backend tool's structured result is checked against its output schema only where the client applies that
schema: its own tools/call of the tool. Not for the optimizer's call_tool (call_tool lists no output schema) nor
for a workflow's step, where a result that passed before must still pass. The error result that replaces a
non-conforming answer keeps the backend's `_meta`. (A real gateway process, a raw JSON-RPC stdio backend, the
SDK's client.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client

from tests.support import Gateway, running_gateway, tools_backend, write_config

pytestmark = [pytest.mark.slow]

# `lying` declares {"count": integer} and answers a string for it, with a `_meta` of its own.
SERVER = r"""
COUNTED = {"type": "object", "properties": {"count": {"type": "integer"}}, "required": ["count"]}
TOOLS = [{"name": "lying", "description": "Count the things", "inputSchema": {"type": "object"}, "outputSchema": COUNTED}]
LYING = {
    "content": [{"type": "text", "text": "many things"}],
    "structuredContent": {"count": "many"},
    "_meta": {"trace": "t-17"},
}
RESULTS = {"lying": LYING}
"""

WORKFLOW: dict[str, Any] = {
    "name": "count_twice",
    "description": "Count the things through a step.",
    "parameters": {"type": "object", "properties": {}},
    "steps": [{"id": "count", "tool": "o_lying"}],
    "output": {"counted": "{{ steps.count.output.count }}"},
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp("rev21b_out")
    config = write_config(
        directory,
        {
            "backends": [tools_backend("o", directory / "lying.py", SERVER)],
            "workflows": [WORKFLOW],
            "optimizer": {"enabled": True, "index_dir": str(directory / "index")},
        },
    )
    with running_gateway(config) as gateway:
        yield gateway


def text(result: types.CallToolResult) -> str:
    return "\n".join(block.text for block in result.content if isinstance(block, types.TextContent))


@pytest.mark.anyio
async def test_the_clients_own_call_gets_an_error_result_that_keeps_the_backends_meta(gateway: Gateway) -> None:
    with anyio.fail_after(30):
        async with Client(gateway.url) as client:
            result = await client.call_tool("o_lying", {})
    assert result.is_error and "breaks the tool's output schema" in text(result)
    assert result.meta is not None and result.meta.get("trace") == "t-17"


@pytest.mark.anyio
async def test_call_tool_passes_the_targets_result_on_as_before(gateway: Gateway) -> None:
    with anyio.fail_after(30):
        async with Client(gateway.url) as client:
            result = await client.call_tool("call_tool", {"tool_name": "o_lying", "arguments": {}})
    assert not result.is_error, text(result)
    assert result.structured_content == {"count": "many"}
    assert text(result) == "many things"


@pytest.mark.anyio
async def test_a_workflow_step_gets_the_tools_result_as_before(gateway: Gateway) -> None:
    with anyio.fail_after(30):
        async with Client(gateway.url) as client:
            result = await client.call_tool("count_twice", {})
    assert not result.is_error, text(result)
    output = result.structured_content if result.structured_content is not None else json.loads(text(result))
    assert output == {"counted": "many"}
