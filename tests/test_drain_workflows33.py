"""What a SIGTERM's drain waits for beyond the POSTs open, and what a workflow waiting for its user gets.

- A 2026-07-28 client's workflow that asked its user goes on in the background between rounds: its other steps'
  backend calls run with no request of the client open. The drain waits for them. Before, it logged "drained in
  0.0s" and the stop cut the step at its backend.
- A 2025-11-25 call runs in its session, not in its POST: a client that left while its answer streamed (a
  workflow's progress went first) leaves the call running at the backend with no POST open. The drain waits for
  it too. Before, it ended at once and cut the call. A call answered as plain JSON keeps its POST open until its
  answer even when its client has closed the connection, so the drain already waited for it (kept as a check).
- A 2025-11-25 workflow whose step waits for its user's answer when the grace runs out: the client gets a JSON-RPC
  error naming the shutdown, and the step running beside it is cancelled at its backend, not left running
  (already so before this change: kept as a check).

Real `vmcp serve` processes, real backends (held_server.py over stdio, the conformance server over HTTP, which
outlives the gateway and says what was cancelled), the SDK's client and plain HTTP. The tests wait for files and
log lines, never for a time.
"""

from __future__ import annotations

import json
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from tests.support import EXAMPLES, Gateway, free_port, raw_session, running_gateway, serving_mcp, write_config
from tests.test_rev21_batches import call as batch_call
from tests.test_rev21_batches import held_config, opened

pytestmark = [pytest.mark.slow]

HELD_SERVER = EXAMPLES / "backends" / "held_server.py"
CONFORMANCE_SERVER = EXAMPLES / "backends" / "conformance_server.py"
DRAIN_TIMEOUT = 60.0  # far longer than any wait here: these drains end because nothing is left, not by their bound
DEADLINE = 60.0  # a guard against hanging while polling, not a measure
QUESTION = {
    "id": "ask",
    "type": "elicitation",
    "message": "Go on?",
    "requested_schema": {"type": "object", "properties": {"ok": {"type": "boolean"}}},
}
GATED = {
    "name": "ask_and_work",
    "description": "Asks its user while a held step works.",
    "parameters": {"type": "object", "properties": {"gate": {"type": "string"}}, "required": ["gate"]},
    "steps": [
        QUESTION,
        {"id": "work", "tool": "held_held_echo", "arguments": {"message": "done", "gate": "{{ params.gate }}"}},
    ],
}


def _held_config(directory: Path) -> Path:
    backend = {"name": "held", "command": sys.executable, "args": [str(HELD_SERVER)]}
    config = {"backends": [backend], "workflows": [GATED], "server": {"drain_timeout": DRAIN_TIMEOUT}}
    return write_config(directory, config)


async def _exists(path: Path) -> None:
    with anyio.fail_after(DEADLINE):
        while not await anyio.Path(path).exists():  # noqa: ASYNC110 - another process makes the file
            await anyio.sleep(0.05)


async def _logged(gateway: Gateway, text: str) -> None:
    with anyio.fail_after(DEADLINE):
        while text not in gateway.output():  # noqa: ASYNC110 - another process writes the log
            await anyio.sleep(0.05)


async def _exit_code(gateway: Gateway) -> int:
    return await anyio.to_thread.run_sync(lambda: gateway.proc.wait(timeout=DRAIN_TIMEOUT + DEADLINE))


def _drained_after_the_call(log: str) -> None:
    """The held call finished at its backend (the router logs it), then the drain ended with nothing left."""
    assert "tool call held_held_echo" in log, log
    finished = log.index("tool call held_held_echo")
    assert " ok in " in log[finished:].splitlines()[0], log
    assert "drained in" in log[finished:] and "still running after" not in log, log


async def _refused(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
    raise AssertionError("the test reads the question itself (allow_input_required)")


def test_a_workflow_running_steps_between_rounds_holds_the_drain_until_they_end(tmp_path: Path) -> None:
    gate = tmp_path / "gate"

    async def main(gateway: Gateway) -> None:
        http = httpx2.AsyncClient(timeout=DEADLINE)
        transport = streamable_http_client(gateway.url, http_client=http)
        async with Client(transport, mode="auto", elicitation_callback=_refused) as client:  # type: ignore[arg-type]
            assert client.protocol_version == "2026-07-28"
            asked = await client.session.call_tool("ask_and_work", {"gate": str(gate)}, allow_input_required=True)
        assert isinstance(asked, types.InputRequiredResult), asked  # no request of the client is open now
        await _exists(Path(f"{gate}.started"))  # the step beside the question is at its backend
        gateway.proc.send_signal(signal.SIGTERM)
        await _logged(gateway, "draining:")
        gate.touch()
        assert await _exit_code(gateway) == 0

    with running_gateway(_held_config(tmp_path)) as gateway:
        anyio.run(main, gateway)
    _drained_after_the_call(gateway.output())


def test_a_call_whose_client_closed_its_connection_holds_the_drain_until_it_ends(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    call = {"jsonrpc": "2.0", "id": 3, "method": "tools/call"}
    call["params"] = {"name": "held_held_echo", "arguments": {"message": "late", "gate": str(gate)}}

    async def main(gateway: Gateway) -> None:
        headers = raw_session(gateway.url)
        async with httpx2.AsyncClient(timeout=DEADLINE) as http, anyio.create_task_group() as posts:
            posts.start_soon(lambda: http.post(gateway.url, json=call, headers=headers))
            await _exists(Path(f"{gate}.started"))
            posts.cancel_scope.cancel()  # the client leaves: its POST's connection closes, the call runs on
        gateway.proc.send_signal(signal.SIGTERM)
        await _logged(gateway, "draining:")
        gate.touch()
        assert await _exit_code(gateway) == 0

    with running_gateway(_held_config(tmp_path)) as gateway:
        anyio.run(main, gateway)
    _drained_after_the_call(gateway.output())


def test_a_workflow_waiting_for_its_user_when_the_grace_ends_gets_a_shutdown_error_and_its_step_is_cancelled(
    tmp_path: Path,
) -> None:
    slow = {"name": "ask_and_sleep", "description": "Asks its user while a slow step works."}
    slow["steps"] = [QUESTION, {"id": "work", "tool": "c_test_slow", "arguments": {"seconds": 600}}]
    asked = anyio.Event()

    async def unanswered(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.set()
        await anyio.sleep_forever()
        raise AssertionError

    async def backend_says(url: str, tool: str) -> str:
        async with Client(url) as backend:
            [text] = (await backend.call_tool(tool, {})).content
            assert isinstance(text, types.TextContent)
            return text.text

    async def main(gateway: Gateway, backend: str) -> None:
        errors: list[MCPError] = []
        http = httpx2.AsyncClient(timeout=DEADLINE)
        transport = streamable_http_client(gateway.url, http_client=http)
        async with (
            Client(transport, mode="legacy", elicitation_callback=unanswered) as client,  # type: ignore[arg-type]
            anyio.create_task_group() as calls,
        ):

            async def call() -> None:
                with pytest.raises(MCPError) as refused:
                    await client.session.call_tool("ask_and_sleep", {})
                errors.append(refused.value)

            calls.start_soon(call)
            await asked.wait()
            with anyio.fail_after(DEADLINE):
                while await backend_says(backend, "test_running_calls") != "1":  # noqa: ASYNC110 - another process
                    await anyio.sleep(0.05)
            gateway.proc.send_signal(signal.SIGTERM)  # the grace (1 s) runs out: the user never answers
        assert await _exit_code(gateway) == 0
        [error] = errors
        assert error.error.code == -32000 and "shutting down" in error.error.message, error.error
        with anyio.fail_after(DEADLINE):  # the cancel may reach the backend's handler just after the gateway left
            while await backend_says(backend, "test_running_calls") != "0":  # noqa: ASYNC110 - another process
                await anyio.sleep(0.05)
        assert await backend_says(backend, "test_cancelled_calls") == "1"

    port = free_port()
    with serving_mcp([sys.executable, str(CONFORMANCE_SERVER), "--http", "--port", str(port)], port) as backend:
        backends = [{"name": "c", "transport": "streamable-http", "url": backend}]
        config = {"backends": backends, "workflows": [slow], "server": {"drain_timeout": 1}}
        with running_gateway(write_config(tmp_path, config)) as gateway:
            anyio.run(main, gateway, backend)
    assert "still running after 1s" in gateway.output()


def test_a_streaming_call_whose_client_left_holds_the_drain_until_it_ends(tmp_path: Path) -> None:
    """Its answer went to SSE (a step's progress came first); the client read that and left. The call runs on in
    its session with no POST open."""
    gate, opened = tmp_path / "gate", tmp_path / "opened"
    opened.touch()
    two_steps = {
        "name": "two_steps",
        "description": "A quick step, then a held one.",
        "steps": [
            {"id": "quick", "tool": "held_held_echo", "arguments": {"message": "1", "gate": str(opened)}},
            {
                "id": "held",
                "tool": "held_held_echo",
                "arguments": {"message": "2", "gate": str(gate)},
                "depends_on": ["quick"],
            },
        ],
    }
    backend = {"name": "held", "command": sys.executable, "args": [str(HELD_SERVER)]}
    config = {"backends": [backend], "workflows": [two_steps], "server": {"drain_timeout": DRAIN_TIMEOUT}}
    call = {"jsonrpc": "2.0", "id": 4, "method": "tools/call"}
    call["params"] = {"name": "two_steps", "arguments": {}, "_meta": {"progressToken": "p"}}

    async def main(gateway: Gateway) -> None:
        headers = raw_session(gateway.url)
        async with (
            httpx2.AsyncClient(timeout=DEADLINE) as http,
            http.stream("POST", gateway.url, json=call, headers=headers) as response,
        ):
            assert response.headers["content-type"].startswith("text/event-stream")
            async for line in response.aiter_lines():
                if "notifications/progress" in line:
                    break  # the client leaves mid-stream
        await _exists(Path(f"{gate}.started"))
        gateway.proc.send_signal(signal.SIGTERM)
        await _logged(gateway, "draining:")
        gate.touch()
        assert await _exit_code(gateway) == 0

    with running_gateway(write_config(tmp_path, config)) as gateway:
        anyio.run(main, gateway)
    log = gateway.output()
    _drained_after_the_call(log.replace("tool call held_held_echo", "first step", 1))


def test_a_batch_its_client_left_ends_but_its_call_at_the_backend_holds_the_drain(tmp_path: Path) -> None:
    """The batch ends when its client leaves (its next messages are never served), but the message already at
    the backend runs on in its session: the drain waits for that call, not for the batch."""
    gate = tmp_path / "gate"
    with running_gateway(held_config(tmp_path)) as running:
        headers = opened(running)
        batch = [
            batch_call("held", "held_held_echo", {"message": "late", "gate": str(gate)}),
            batch_call("next", "held_held_echo", {"message": "never", "gate": f"{gate}-next"}),
        ]
        body = json.dumps(batch).encode()
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        request = f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{running.port}\r\n{head}content-length: {len(body)}\r\n\r\n"
        with socket.create_connection(("127.0.0.1", running.port), timeout=30) as sock:
            sock.sendall(request.encode() + body)
            anyio.run(_exists, Path(f"{gate}.started"))
        running.proc.send_signal(signal.SIGTERM)
        anyio.run(_logged, running, "draining:")
        gate.touch()
        assert running.proc.wait(timeout=DRAIN_TIMEOUT + DEADLINE) == 0
    output = running.output()
    _drained_after_the_call(output)
    assert not Path(f"{gate}-next.started").exists()  # the batch's next message was never served
    assert "cut off by the shutdown" not in output, output
