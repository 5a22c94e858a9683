"""SIGTERM under a load balancer: the replica fails `/readyz`, refuses new sessions, finishes what runs, exits 0.

A real `vmcp serve` with a backend whose tool answers only when the test creates a file, so a call is
held in flight for as long as the test needs, whatever the machine's load.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
from mcp import Client

from tests.support import EXAMPLES, Gateway, raw_session, running_gateway, sse_messages, write_config
from tests.test_host_binding import HEADERS, INITIALIZE

HELD_SERVER = EXAMPLES / "backends" / "held_server.py"
DRAIN_TIMEOUT = 60.0


def config(directory: Path, **extra: object) -> Path:
    backend = {"name": "held", "command": sys.executable, "args": [str(HELD_SERVER)]}
    return write_config(directory, {"backends": [backend], "server": {"drain_timeout": DRAIN_TIMEOUT}, **extra})


async def wait_for(path: Path) -> None:
    with anyio.fail_after(60):
        while not await anyio.Path(path).exists():  # noqa: ASYNC110 - another process makes the file
            await anyio.sleep(0.05)


async def exit_code(proc: subprocess.Popen[bytes], within: float) -> int:
    return await anyio.to_thread.run_sync(lambda: proc.wait(timeout=within))


def answer_to(response: httpx2.Response, request_id: int) -> dict[str, Any]:
    """The one JSON-RPC answer under `request_id` in a POST's response: its JSON body, or the event answering it
    in its SSE stream, which is what a call silent for 15 s gets (`COMMIT_SSE_AFTER`: a busy machine can take
    that long to reach the backend and send the signal)."""
    if response.headers["content-type"] == "application/json":
        return dict(response.json())
    assert response.headers["content-type"].startswith("text/event-stream"), response.text
    [answer] = [m for _, m in sse_messages(iter(response.text.splitlines())) if m and m.get("id") == request_id]
    return answer


async def draining_readyz(gateway: Gateway, http: httpx2.AsyncClient) -> httpx2.Response:
    """`/readyz` once the signal has been handled (the handler runs on the event loop)."""
    with anyio.fail_after(30):
        while True:
            answer = await http.get(f"{gateway.base}/readyz")
            if answer.status_code == 503:
                return answer
            await anyio.sleep(0.05)


def test_sigterm_drains_a_call_in_flight_then_exits_zero(tmp_path: Path) -> None:
    gate = tmp_path / "gate"

    async def main(gateway: Gateway) -> None:
        outcome: list[types.CallToolResult] = []

        async def held_call() -> None:
            async with Client(gateway.url) as client:
                # Listed first: the client validates a result against the tool's output schema, and would
                # otherwise list the tools after the result came, when the replica may have stopped.
                await client.list_tools()
                outcome.append(await client.call_tool("held_held_echo", {"message": "finished", "gate": str(gate)}))

        async with anyio.create_task_group() as calls, httpx2.AsyncClient(timeout=30) as http:
            calls.start_soon(held_call)
            await wait_for(Path(f"{gate}.started"))  # the call is at the backend
            gateway.proc.send_signal(signal.SIGTERM)

            readyz = await draining_readyz(gateway, http)
            assert readyz.json() == {"status": "draining"}
            late = await http.post(gateway.url, json=INITIALIZE, headers=HEADERS)
            assert late.status_code == 503 and late.headers["retry-after"] == "1"
            assert "shutting down" in late.json()["error"]["message"]
            assert gateway.proc.poll() is None  # still serving the call in flight

            gate.touch()
        [result] = outcome
        assert not result.is_error
        assert [c.text for c in result.content if isinstance(c, types.TextContent)] == ["finished"]
        assert await exit_code(gateway.proc, DRAIN_TIMEOUT) == 0

    with running_gateway(config(tmp_path)) as gateway:
        anyio.run(main, gateway)
    assert "draining: /readyz fails" in gateway.output()


def test_sigterm_with_nothing_in_flight_exits_zero_at_once(tmp_path: Path) -> None:
    with running_gateway(config(tmp_path)) as gateway:
        gateway.proc.send_signal(signal.SIGTERM)
        assert gateway.proc.wait(timeout=2 * DRAIN_TIMEOUT) == 0
    # Nothing held the drain: it began with no request in flight and ended drained, not at its timeout (which
    # says "still running after 60s"). Judged by the log, not by how long a busy machine took to stop.
    log = gateway.output()
    assert "0 requests in flight" in log and "drained in" in log


def test_ctrl_c_answers_a_call_in_flight_with_a_json_rpc_error_and_exits_zero(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call"}
    call["params"] = {"name": "held_held_echo", "arguments": {"message": "never", "gate": str(gate)}}

    async def main(gateway: Gateway) -> None:
        answers: list[httpx2.Response] = []
        headers = raw_session(gateway.url)
        async with anyio.create_task_group() as calls:

            async def held_call() -> None:
                post = partial(httpx2.post, gateway.url, json=call, headers=headers, timeout=60)
                answers.append(await anyio.to_thread.run_sync(post))

            calls.start_soon(held_call)
            await wait_for(Path(f"{gate}.started"))  # the call is at the backend, and its gate never opens
            gateway.proc.send_signal(signal.SIGINT)
        [response] = answers
        answer = answer_to(response, 7)
        assert answer["id"] == 7 and "shutting down" in answer["error"]["message"]
        assert await exit_code(gateway.proc, DRAIN_TIMEOUT) == 0

    # timeouts.shutdown is far longer than any wait here: Ctrl-C must not wait for it.
    with running_gateway(config(tmp_path, timeouts={"shutdown": 600})) as gateway:
        anyio.run(main, gateway)
    assert "SIGINT: stopping now" in gateway.output()
    assert "Traceback" not in gateway.output()
