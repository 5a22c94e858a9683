"""A streamable HTTP backend that hangs (SIGSTOP: its socket still accepts, nothing answers), through a real
gateway: the health checks restart its session, and the old session's close (the SDK's DELETE, which nothing
answers) is bounded, so the gateway gets on with reconnecting instead of waiting for the backend to wake up."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client

from tests.support import NODE_BIN, Gateway, free_port, running_gateway, stop_process, wait_http, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

EVERYTHING = NODE_BIN / "mcp-server-everything"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _web(gateway: Gateway) -> dict[str, Any]:
    body = httpx2.get(f"{gateway.base}/readyz", timeout=5).json()
    (backend,) = [b for b in body["backends"] if b["name"] == "web"]
    return dict(backend)


async def _until(gateway: Gateway, ok: Any, what: str, within: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        backend = _web(gateway)
        if ok(backend):
            return backend
        await anyio.sleep(0.1)
    raise AssertionError(f"backend web never {what}: {_web(gateway)}\n{gateway.output()}")


@contextlib.contextmanager
def _everything_over_http() -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """server-everything (TypeScript SDK) over streamable HTTP, and its URL: a 2025-11-25 session with an id,
    which the SDK's client ends with a DELETE."""
    port = free_port()
    server = subprocess.Popen(
        [str(EVERYTHING), "streamableHttp"],
        env={**os.environ, "PORT": str(port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        wait_http(url, expect=(200, 400, 404, 405, 406), proc=server)
        yield server, url
    finally:
        server.send_signal(signal.SIGCONT)
        stop_process(server)


async def test_a_hung_http_backend_is_reconnected_while_it_stays_hung(tmp_path: Path) -> None:
    with _everything_over_http() as (server, url):
        config = {
            "backends": [{"name": "web", "transport": "streamable-http", "url": url}],
            "health": {"interval": 0.3, "timeout": 0.3, "unhealthy_threshold": 2},
            "timeouts": {"connect": 2},
            "failure": {"restart": {"initial_delay": 0.1, "max_delay": 0.5}},
        }
        with running_gateway(write_config(tmp_path, config)) as gateway:
            server.send_signal(signal.SIGSTOP)
            try:
                await _until(gateway, lambda b: b["health"]["state"] == "unhealthy", "went unhealthy")
                # Still hung: the old session is given up on (its close is bounded) and new attempts are made.
                backend = await _until(gateway, lambda b: b["restarts"] >= 1, "was tried again while hung")
                assert backend["state"] != "ready"
            finally:
                server.send_signal(signal.SIGCONT)
            await _until(gateway, lambda b: b["state"] == "ready" and b["health"]["state"] == "healthy", "recovered")
            async with Client(gateway.url, mode="legacy") as client:
                deadline = time.monotonic() + 20
                while True:  # its circuit may still be half-open for a moment
                    result = await client.call_tool("web_echo", {"message": "back"})
                    if not result.is_error or time.monotonic() > deadline:
                        break
                    await anyio.sleep(0.2)
                assert not result.is_error, result
            assert "Traceback" not in gateway.output()
