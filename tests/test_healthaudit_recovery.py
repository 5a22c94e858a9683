"""Misbehaving backends end to end: a real gateway, real backend processes that crash or hang, real clients.

Each test polls the gateway's own account (/readyz, its log) with a deadline rather than sleeping a guess.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.context import ClientRequestContext

from tests.support import Gateway, demo_backend, running_gateway, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

# `pid` answers with its process id; `crash` ends the process mid-call; with DIE_AFTER set the process exits
# that many seconds after it started, whatever it is doing (a backend that crash-loops after its handshake).
CRASHING_SERVER = """\
import os, threading
from mcp.server.mcpserver import MCPServer

if os.environ.get("DIE_AFTER"):
    threading.Timer(float(os.environ["DIE_AFTER"]), lambda: os._exit(5)).start()
server = MCPServer("crashing")


@server.tool()
def pid() -> int:
    \"\"\"This process's id.\"\"\"
    return os.getpid()


@server.tool()
def crash() -> str:
    \"\"\"End the process mid-call.\"\"\"
    os._exit(7)


server.run()
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def crashing_backend(tmp_path: Path, name: str, **extra: Any) -> dict[str, Any]:
    script = tmp_path / "crashing_server.py"
    script.write_text(CRASHING_SERVER)
    return {"name": name, "command": sys.executable, "args": [str(script)], **extra}


def backend(gateway: Gateway, name: str) -> dict[str, Any]:
    body = httpx2.get(f"{gateway.base}/readyz", timeout=5.0).json()
    return next(b for b in body["backends"] if b["name"] == name)


def text(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def eventually(check: Callable[[], bool], within: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {within}s")
        await anyio.sleep(0.1)


async def sampling(
    context: ClientRequestContext, params: types.CreateMessageRequestParams
) -> types.CreateMessageResult:
    return types.CreateMessageResult(role="assistant", content=types.TextContent(type="text", text="ok"), model="m")


async def test_a_clients_own_session_whose_backend_process_died_is_opened_again(tmp_path: Path) -> None:
    """A 2025-11-25 client that can answer sampling gets backend sessions of its own. When that session's process
    died, every later call of that client to the backend failed "Connection closed" until the client left, and
    those failures opened the backend's circuit for every client."""
    config = {"backends": [crashing_backend(tmp_path, "c")], "health": {"interval": 0.2}}
    with running_gateway(write_config(tmp_path, config)) as gateway:
        async with Client(gateway.url, mode="legacy", sampling_callback=sampling) as client:
            first = await client.call_tool("c_pid", {})
            assert not first.is_error, text(first)
            crashed = await client.call_tool("c_crash", {})
            assert crashed.is_error and "backend 'c'" in text(crashed), text(crashed)
            answers: list[str] = []

            async def served_again() -> bool:
                answer = await client.call_tool("c_pid", {})
                answers.append(text(answer))
                return not answer.is_error

            deadline = time.monotonic() + 15.0
            while not await served_again():
                assert time.monotonic() < deadline, f"never served again: {answers[-3:]}"
                await anyio.sleep(0.2)
            assert json.loads(answers[-1]) != json.loads(text(first))  # a new process
            assert backend(gateway, "c")["circuit"]["state"] == "closed"


async def test_a_backend_that_dies_soon_after_each_start_is_restarted_with_growing_delays(tmp_path: Path) -> None:
    """A session that served a moment used to reset the backoff: a backend crashing a second after each handshake
    was restarted at `initial_delay` for ever (a process, a catalogue rebuild and two list_changed every ~2 s)."""
    entry = crashing_backend(tmp_path, "dies", env={"DIE_AFTER": "0.3"})
    config = {
        "backends": [entry, demo_backend("steady")],
        "failure": {"restart": {"initial_delay": 0.1, "max_delay": 30.0, "multiplier": 2.0, "jitter": 0.0}},
        "health": {"interval": 0.5},
    }
    with running_gateway(write_config(tmp_path, config), "--log-level", "debug") as gateway:

        def attempts() -> list[int]:
            return [
                int(n) for n in re.findall(r"backend dies: reconnecting in [\d.]+s \(attempt (\d+)\)", gateway.output())
            ]

        await eventually(lambda: len(attempts()) >= 3, what="three restarts of the dying backend")
        assert attempts()[:3] == [1, 2, 3], attempts()  # each short-lived session took the backoff a step further
        delays = [float(d) for d in re.findall(r"backend dies: reconnecting in ([\d.]+)s", gateway.output())]
        assert delays[:3] == [0.1, 0.2, 0.4], delays
        async with Client(gateway.url) as client:  # the other backend is served meanwhile
            assert not (await client.call_tool("steady_slow_echo", {"message": "x", "seconds": 0})).is_error


async def test_pings_alone_do_not_close_a_circuit_that_calls_opened(tmp_path: Path) -> None:
    """The demo server answers pings while `slow_echo` hangs. Good pings in half-open used to close the circuit
    opened by timed-out calls, so every cool-down let the next `failure_threshold` calls hang their timeout."""
    config = {
        "backends": [demo_backend("stuck", call_timeout=1.0)],
        "health": {"interval": 0.1, "timeout": 1.0},
        "failure": {"circuit_breaker": {"failure_threshold": 1, "cooldown": 0.5, "trial_calls": 1}},
    }
    with running_gateway(write_config(tmp_path, config)) as gateway:
        async with Client(gateway.url) as client:
            hung = await client.call_tool("stuck_slow_echo", {"message": "x", "seconds": 30})
            assert hung.is_error and "timed out" in text(hung), text(hung)
            assert backend(gateway, "stuck")["circuit"]["state"] == "open"
            await eventually(lambda: backend(gateway, "stuck")["circuit"]["state"] != "open", what="half-open")
            # Several good pings after the cool-down: the circuit waits for a call to prove the backend.
            checks: set[float] = set()

            def five_pings_seen() -> bool:
                checks.add(backend(gateway, "stuck")["health"]["last_check_at"])
                return len(checks) > 5

            await eventually(five_pings_seen, what="five more pings")
            assert backend(gateway, "stuck")["circuit"]["state"] == "half_open"
            assert backend(gateway, "stuck")["health"]["state"] == "healthy"
            # A trial call that answers closes it.
            assert not (await client.call_tool("stuck_slow_echo", {"message": "x", "seconds": 0})).is_error
            assert backend(gateway, "stuck")["circuit"]["state"] == "closed"
