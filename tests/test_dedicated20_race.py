"""A client's own backend session (routing/dedicated.py) still opening when the client's session ends.

A 2025-11-25 client that can answer sampling gets its own session to each backend it calls; its first call to
a stdio backend starts a process for it. If the client's session ends (DELETE) while that process is starting,
the opening must not outlive it: no process left running until the gateway stops, and no slot of
`limits.max_dedicated_sessions` kept. A real gateway, a stdio backend (tests/scripted_backend.py behind a shell
that holds its start while a file exists), raw HTTP for the session that ends, a real SDK client after it.

Two things keep it so. The SDK cancels a connection's requests before it runs the connection's exit callbacks
(where the caller's sessions are closed), and anyio's `start` cancels the opening it started with them; and
should an opening ever outlive them, `CallerBackends.session_for` closes a session that opens after `close`.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.context import ClientRequestContext

from tests.scripted_backend import SCRIPT
from tests.support import RAW_HEADERS, Gateway, running_gateway, write_config

pytestmark = [pytest.mark.anyio]

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {"sampling": {}},  # a backend may ask it: every call gets the client's own session
        "clientInfo": {"name": "raw", "version": "1"},
    },
}
CALL = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "slow_ok", "arguments": {}}}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def held_backend(directory: Path) -> dict[str, Any]:
    """The scripted backend; each start appends its pid to `pids` and, while the file `hold` exists, touches
    `opening` and waits before it reads `initialize`."""
    pids, hold, opening = (shlex.quote(str(directory / name)) for name in ("pids", "hold", "opening"))
    script = (
        f"echo $$ >> {pids}; "
        f"if [ -e {hold} ]; then : > {opening}; while [ -e {hold} ]; do sleep 0.05; done; fi; "
        f"exec {shlex.quote(sys.executable)} {shlex.quote(str(SCRIPT))}"
    )
    return {"name": "slow", "command": "/bin/sh", "args": ["-c", script]}


def started(directory: Path) -> list[int]:
    """The backend's processes, in the order they started (the shell `exec`s the backend: same pid)."""
    return [int(line) for line in (directory / "pids").read_text().split()]


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, its parent has not collected it yet) runs no more.
    stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def sampling(
    context: ClientRequestContext, params: types.CreateMessageRequestParams
) -> types.CreateMessageResult:
    return types.CreateMessageResult(role="assistant", content=types.TextContent(type="text", text="ok"), model="m")


async def wait_for(path: Path) -> None:
    with anyio.fail_after(20):
        while not await anyio.Path(path).exists():  # noqa: ASYNC110 - another process makes the file
            await anyio.sleep(0.05)


async def end_session_while_its_backend_session_opens(gateway: Gateway, directory: Path) -> None:
    """A raw 2025-11-25 session calls `slow_ok`, and is deleted while its own backend process starts."""
    async with httpx.AsyncClient(timeout=30) as http:
        opened = await http.post(gateway.url, json=INITIALIZE, headers=RAW_HEADERS)
        assert opened.status_code == 200, opened.text
        headers = {
            **RAW_HEADERS,
            "mcp-session-id": opened.headers["mcp-session-id"],
            "mcp-protocol-version": "2025-11-25",
        }
        initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        assert (await http.post(gateway.url, json=initialized, headers=headers)).status_code == 202
        (directory / "hold").touch()
        async with anyio.create_task_group() as calls:

            async def call() -> None:
                await http.post(gateway.url, json=CALL, headers=headers)  # its answer: the session ended

            calls.start_soon(call)
            await wait_for(directory / "opening")  # the client's own backend process is starting
            assert (await http.delete(gateway.url, headers=headers)).status_code == 200
            (directory / "hold").unlink()  # the process goes on to answer `initialize`


async def test_a_session_ended_while_its_own_backend_session_opens_leaves_no_process_and_no_slot(
    tmp_path: Path,
) -> None:
    config = {
        "backends": [held_backend(tmp_path)],
        "health": {"interval": 3600},
        "limits": {"max_dedicated_sessions": 1},  # a slot kept by the ended session would refuse the next client
    }
    with running_gateway(write_config(tmp_path, config)) as gateway:
        [shared] = started(tmp_path)
        await end_session_while_its_backend_session_opens(gateway, tmp_path)
        [_, own] = started(tmp_path)
        with anyio.move_on_after(15):
            while running(own):  # noqa: ASYNC110 - the gateway ends another process
                await anyio.sleep(0.05)
        assert not running(own), f"the ended session's backend process {own} still runs\n{gateway.output()}"

        # The next client gets the one slot: its own process, not the shared session.
        async with Client(gateway.url, mode="legacy", sampling_callback=sampling) as client:
            result = await client.call_tool("slow_ok", {})
        assert not result.is_error and started(tmp_path)[2:], gateway.output()
        assert running(shared)
        output = gateway.output()
    assert "no dedicated session" not in output, output
    assert "Traceback" not in output, output
