"""What one caller, or many, can make the gateway hold: dedicated backend sessions (processes, for stdio
backends) and calls waiting for input are bounded per caller and in total, and idle ones are closed.

A real gateway fronts the conformance backend over stdio; real SDK clients declare sampling, which on the
2025-11-25 handshake earns each its own backend session.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack

import anyio
import httpx2
import mcp_types as types
import psutil
import pytest
from mcp import Client
from mcp.client.session import ClientRequestContext

from tests.support import EXAMPLES, Gateway, running_gateway, write_config

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")]

CONFORMANCE_SERVER = EXAMPLES / "backends" / "conformance_server.py"
IDLE = 3.0  # limits.dedicated_idle_timeout in these tests


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = {
        "backends": [{"name": "conformance", "command": sys.executable, "args": [str(CONFORMANCE_SERVER)]}],
        "aggregation": {"conflict_resolution": "priority"},
        "limits": {"max_dedicated_sessions": 2, "dedicated_idle_timeout": IDLE},
    }
    with running_gateway(write_config(tmp_path_factory.mktemp("limits"), config)) as running:
        yield running


async def sampling(
    context: ClientRequestContext, params: types.CreateMessageRequestParams
) -> types.CreateMessageResult:
    return types.CreateMessageResult(
        role="assistant", content=types.TextContent(type="text", text="fine"), model="test-model"
    )


def backend_processes(gateway: Gateway) -> int:
    count = 0
    for process in gateway.children():
        try:
            count += any(str(CONFORMANCE_SERVER) in part for part in process.cmdline())
        except psutil.NoSuchProcess:
            continue
    return count


def settles_at(gateway: Gateway, expected: int, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while backend_processes(gateway) != expected and time.monotonic() < deadline:
        time.sleep(0.2)
    return backend_processes(gateway)


def text(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


def test_many_sampling_clients_hold_at_most_the_total_of_dedicated_sessions_and_all_are_served(
    gateway: Gateway,
) -> None:
    assert settles_at(gateway, 1) == 1  # the shared session's process

    async def main() -> tuple[list[str], int]:
        async with AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(Client(gateway.url, mode="legacy", sampling_callback=sampling))
                for _ in range(5)
            ]
            answers = [text(await client.call_tool("test_simple_text", {})) for client in clients]
            during = backend_processes(gateway)
            # The healthz of the gateway and another client's call still answer.
            assert httpx2.get(f"{gateway.base}/healthz", timeout=5).status_code == 200
            return answers, during

    answers, during = anyio.run(main)
    assert len(answers) == 5 and all(answers)  # past the bound, calls go on the shared session
    assert during <= 1 + 2  # the shared process and at most limits.max_dedicated_sessions more
    assert "limits.max_dedicated_sessions" in gateway.output()
    assert gateway.output().count("no dedicated session") == 1  # said once a minute, not per call


def test_an_idle_dedicated_session_is_closed_and_reopened_at_the_next_call(gateway: Gateway) -> None:
    assert settles_at(gateway, 1) == 1

    async def main() -> tuple[int, int, str]:
        async with Client(gateway.url, mode="legacy", sampling_callback=sampling) as client:
            await client.call_tool("test_simple_text", {})
            opened = backend_processes(gateway)
            reaped = await anyio.to_thread.run_sync(settles_at, gateway, 1)  # the client stays connected
            again = await client.call_tool("test_sampling", {"prompt": "still there?"})
            return opened, reaped, text(again)

    opened, reaped, again = anyio.run(main)
    assert opened == 2 and reaped == 1
    assert again == "LLM response: fine"  # reopened: sampling reaches the client again
