"""A backend the health checks restart (its process hung: SIGSTOP), through a real gateway and a real client.

Stopping a hung stdio process takes seconds (stdin closed, SIGTERM, then SIGKILL); the backend is out of service
from the moment the gateway decides to restart it, and the calls it cuts off say why."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client

from tests.support import Gateway, demo_backend, running_gateway, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _backend(gateway: Gateway, name: str) -> dict[str, Any]:
    body = httpx2.get(f"{gateway.base}/readyz", timeout=5).json()
    (backend,) = [b for b in body["backends"] if b["name"] == name]
    return dict(backend)


def _text(result: types.CallToolResult) -> str:
    return "".join(block.text for block in result.content if isinstance(block, types.TextContent))


async def _until(gateway: Gateway, name: str, ok: Any, what: str, within: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        backend = _backend(gateway, name)
        if ok(backend):
            return backend
        await anyio.sleep(0.05)
    raise AssertionError(f"backend {name} never {what}: {_backend(gateway, name)}\n{gateway.output()}")


async def test_a_backend_the_health_checks_restart_is_out_of_service_at_once_and_its_cut_calls_say_why(
    tmp_path: Path,
) -> None:
    config = {
        "backends": [demo_backend("notes")],
        "health": {"interval": 0.3, "timeout": 0.3, "unhealthy_threshold": 2},
        "timeouts": {"call": 30},
    }
    with running_gateway(write_config(tmp_path, config)) as gateway:
        (process,) = gateway.children()
        async with Client(gateway.url, mode="legacy") as client:
            cut: list[types.CallToolResult] = []

            async def in_flight() -> None:
                cut.append(await client.call_tool("notes_slow_echo", {"message": "x", "seconds": 20}))

            async with anyio.create_task_group() as group:
                group.start_soon(in_flight)
                await anyio.sleep(0.3)  # the call reaches the backend's stdin; its answer never comes
                os.kill(process.pid, signal.SIGSTOP)
                try:
                    await _until(gateway, "notes", lambda b: b["health"]["state"] == "unhealthy", "went unhealthy")
                    # The old process is still being stopped (SIGTERM waits for SIGCONT; SIGKILL comes seconds
                    # later): a call now is refused for the reason, not sent into the closing session.
                    refused = await client.call_tool("notes_whoami", {})
                finally:
                    os.kill(process.pid, signal.SIGCONT)

            assert refused.is_error
            assert _text(refused) == "backend 'notes' is failed", _text(refused)  # the reason: log and /readyz
            assert "Connection closed" not in _text(refused)
            (call,) = cut
            assert call.is_error
            assert "the gateway restarted the backend (unhealthy after 2 failed pings" in _text(call), _text(call)

            await _until(gateway, "notes", lambda b: b["state"] == "ready" and b["restarts"] >= 1, "came back")
            deadline = time.monotonic() + 20
            while True:  # its circuit may be half-open for a moment after the restart
                again = await client.call_tool("notes_whoami", {})
                if not again.is_error or time.monotonic() > deadline:
                    break
                await anyio.sleep(0.2)
            assert not again.is_error, _text(again)
