"""A client's reserved `_meta` keys the gateway does not implement stay with the gateway (F5), through a real
gateway process, the reference `everything` backend and the SDK client, in both protocol eras.

`io.modelcontextprotocol/related-task` (2025-11-25 tasks) forwarded on a backend session made a task-capable
backend hold the call as part of a task no one follows: it never answered, the call ran into `timeouts.call`, and
the breaker counted each such call as the backend's failure, so any caller could open the backend's circuit for
everyone. Unreserved keys (`traceparent`, `com.example.mcp/...`) still go on: checked on `forwarded_meta`, which
both forwarding paths (routing/providers.py's tools/call, routing/router.py's reads, prompts and completions) use.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client

from tests.support import NODE_BIN, Gateway, running_gateway, unavailable, write_config
from vmcp_opt.routing.exchange import forwarded_meta

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

EVERYTHING = NODE_BIN / "mcp-server-everything"
RELATED_TASK = {"io.modelcontextprotocol/related-task": {"taskId": "t-1"}}
DOCUMENT = "demo://resource/static/document/architecture.md"
# Short, so the test fails in seconds before the fix; the breaker opens at the second such timeout.
CALL_TIMEOUT = 5.0
FAILURE_THRESHOLD = 2
ERAS = ["legacy", "auto"]  # 2025-11-25 (initialize) and 2026-07-28


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    if not EVERYTHING.exists():
        unavailable("server-everything is not installed (npm ci)")
    directory: Path = tmp_path_factory.mktemp("reserved-meta30")
    config = {
        "backends": [{"name": "everything", "command": str(EVERYTHING)}],
        "optimizer": {"enabled": False},
        "timeouts": {"call": CALL_TIMEOUT},
        "failure": {"circuit_breaker": {"failure_threshold": FAILURE_THRESHOLD, "cooldown": 3600}},
    }
    with running_gateway(write_config(directory, config), "--log-level", "warning") as running:
        yield running


def echoed(result: types.CallToolResult) -> str:
    assert not result.is_error, result
    block = result.content[0]
    assert isinstance(block, types.TextContent), block
    return block.text


@pytest.mark.parametrize("mode", ERAS)
async def test_a_tools_call_carrying_a_related_task_key_is_answered(gateway: Gateway, mode: str) -> None:
    async with Client(gateway.url, mode=mode) as client:  # type: ignore[arg-type]
        result = await client.call_tool("everything_echo", {"message": "hi"}, meta=RELATED_TASK)  # type: ignore[arg-type]
    assert echoed(result) == "Echo: hi"


@pytest.mark.parametrize("mode", ERAS)
async def test_a_resource_read_carrying_a_related_task_key_is_answered(gateway: Gateway, mode: str) -> None:
    async with Client(gateway.url, mode=mode) as client:  # type: ignore[arg-type]
        result = await client.read_resource(DOCUMENT, meta=RELATED_TASK)  # type: ignore[arg-type]
    assert result.contents and str(result.contents[0].uri) == DOCUMENT


async def test_related_task_calls_leave_the_circuit_closed_for_another_caller(gateway: Gateway) -> None:
    async def task_call(client: Client, index: int) -> None:
        meta = {"io.modelcontextprotocol/related-task": {"taskId": f"t-{index}"}}
        await client.call_tool("everything_echo", {"message": "x"}, meta=meta)  # type: ignore[arg-type]

    # As many at once as open the circuit when each one counts as the backend's failure.
    async with Client(gateway.url, mode="legacy") as sender, anyio.create_task_group() as group:
        for index in range(FAILURE_THRESHOLD):
            group.start_soon(task_call, sender, index)
    async with Client(gateway.url, mode="legacy") as other:
        result = await other.call_tool("everything_echo", {"message": "still served"})
    assert echoed(result) == "Echo: still served"


def test_only_reserved_keys_the_gateway_does_not_implement_are_dropped() -> None:
    meta: dict[str, Any] = {
        **RELATED_TASK,
        "io.modelcontextprotocol/some-future-key": 1,
        "dev.mcp/x": 1,
        "org.modelcontextprotocol.api/x": 1,
        "IO.ModelContextProtocol/related-task": 1,
        types.PROTOCOL_VERSION_META_KEY: "2026-07-28",
        types.LOG_LEVEL_META_KEY: "debug",
        "progressToken": 7,
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "com.example.mcp/x": 1,  # its second label is `example`: not reserved
        "mcp": 1,
        "tenant": "a",
    }
    kept = forwarded_meta(meta)  # type: ignore[arg-type]
    assert kept == {"traceparent": meta["traceparent"], "com.example.mcp/x": 1, "mcp": 1, "tenant": "a"}
    assert forwarded_meta(RELATED_TASK) is None  # type: ignore[arg-type]
