"""Calls given up on while their backend's HTTP transport is stuck (backends/courtesy_cancels.py), on a real
`BackendConnection` to a real server-everything over streamable HTTP:

- each caller returns at once, however many gave up before it: the SDK's courtesy cancels wait for the stuck
  writer in the transport's own tasks, at most `MAX_WAITING_CANCELS` at once, and past that they are dropped
  (logged), never waited for by a caller;
- a call's progress stops when the call returns: what the backend still sends while its cancel is held up is not
  relayed after the answer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest

from tests.support import free_port
from tests.test_chaos20_http_stall import EVERYTHING, _everything_over_http
from vmcp_opt.backends import courtesy_cancels
from vmcp_opt.backends.connection import BackendConnection, BackendState
from vmcp_opt.backends.session_pool import DedicatedSession, SessionCallbacks, SessionPool
from vmcp_opt.config import BackendConfig

pytestmark = [pytest.mark.slow, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _everything() -> None:
    if not EVERYTHING.exists():
        pytest.skip("server-everything is not installed (npm ci)")


@contextlib.asynccontextmanager
async def _connected(url: str) -> AsyncIterator[BackendConnection]:
    config = BackendConfig(name="web", transport="streamable-http", url=url)
    connection = BackendConnection(config, base_dir=Path.cwd(), connect_timeout=10, call_timeout=60)
    async with anyio.create_task_group() as group:
        group.start_soon(connection.run)
        with anyio.fail_after(15):
            await connection.wait_ready()
        assert connection.state is BackendState.READY, connection.last_error
        try:
            yield connection
        finally:
            connection.stop()


def _call(name: str, arguments: dict[str, Any]) -> types.CallToolRequest:
    return types.CallToolRequest(params=types.CallToolRequestParams(name=name, arguments=arguments))


async def _given_up(
    connection: BackendConnection | DedicatedSession, request: types.CallToolRequest, **options: Any
) -> float:
    """Seconds until the caller got back from `request`, which it gives up on after 0.2 s."""
    started = time.monotonic()
    with anyio.move_on_after(0.2):
        await connection.request(request, types.CallToolResult, **options)
        raise AssertionError("the backend answered; it should hang")
    return time.monotonic() - started


async def test_callers_giving_up_on_a_stuck_transport_return_at_once_and_its_waiting_cancels_are_bounded(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(courtesy_cancels, "MAX_WAITING_CANCELS", 2)
    caplog.set_level(logging.INFO, logger=courtesy_cancels.__name__)
    writers: list[courtesy_cancels.CancelsWithoutWaiting] = []
    made = courtesy_cancels.CancelsWithoutWaiting.__init__

    def recorded(self: courtesy_cancels.CancelsWithoutWaiting, *args: Any) -> None:
        made(self, *args)
        writers.append(self)

    monkeypatch.setattr(courtesy_cancels.CancelsWithoutWaiting, "__init__", recorded)
    echo = _call("echo", {"message": "hi"})
    with _everything_over_http() as (server, url):
        async with _connected(url) as connection:
            (writer,) = writers
            server.send_signal(signal.SIGSTOP)  # the socket still accepts; nothing answers
            try:
                # The first cancel is taken by the transport's writer at once (its POST then hangs); the next two wait
                # for it in the transport's tasks: the bound; the two after are dropped.
                given_up = [await _given_up(connection, echo) for _ in range(5)]
                assert writer.waiting == 2
            finally:
                server.send_signal(signal.SIGCONT)
    # Each caller went on at its own deadline (0.2 s), none waited for a cancel (the SDK's bound on one: 5 s).
    assert max(given_up) < 4.0, given_up
    assert caplog.text.count("a courtesy cancel not sent") == 2, caplog.text


@contextlib.asynccontextmanager
async def _holding_cancels(target: int, hold: float) -> AsyncIterator[str]:
    """A TCP proxy to 127.0.0.1:`target` that holds each client chunk carrying a `notifications/cancelled` for
    `hold` seconds, its URL: the transport's writer stays busy posting it, as on a backend that is slow to take
    notifications, while responses (and progress on their SSE streams) flow."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, holding: bool) -> None:
        try:
            while chunk := await reader.read(65536):
                if holding and b"notifications/cancelled" in chunk:
                    await asyncio.sleep(hold)
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def serve(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target)
        await asyncio.gather(pipe(client_reader, server_writer, True), pipe(server_reader, client_writer, False))

    port = free_port()
    proxy = await asyncio.start_server(serve, "127.0.0.1", port)
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proxy.close()


@contextlib.asynccontextmanager
async def _dedicated(connection: BackendConnection) -> AsyncIterator[DedicatedSession]:
    """A client's own session to the same backend (session_pool.py), as the gateway opens for round trips."""
    pool = SessionPool()
    async with anyio.create_task_group() as group:
        pool.attach(group)
        try:
            yield await pool.open(connection, SessionCallbacks(capabilities=types.ClientCapabilities()))
        finally:
            pool.stop()


@pytest.mark.parametrize("session", ["shared", "dedicated"])
async def test_no_progress_is_relayed_after_the_call_returned(session: str) -> None:
    seen: list[tuple[float, bool]] = []
    returned = False
    progressed = anyio.Event()

    async def progress(value: float, total: float | None, message: str | None) -> None:
        seen.append((value, returned))
        progressed.set()

    # A progress notification every 0.1 s for 60 s.
    long = {"duration": 60, "steps": 600}
    with _everything_over_http() as (_, url):
        target = int(url.rsplit(":", 1)[1].split("/")[0])
        async with _holding_cancels(target, 3.0) as proxied, _connected(proxied) as shared:
            dedicated = _dedicated(shared) if session == "dedicated" else contextlib.nullcontext(shared)
            async with dedicated as connection:
                async with anyio.create_task_group() as group:
                    watch = anyio.CancelScope()

                    async def watched_call() -> None:
                        nonlocal returned
                        with watch:
                            await connection.request(
                                _call("trigger-long-running-operation", long),
                                types.CallToolResult,
                                progress_callback=progress,
                            )
                        returned = True

                    group.start_soon(watched_call)
                    with anyio.fail_after(30):
                        await progressed.wait()
                    # Another call given up on: its cancel is held in the proxy, so the transport's writer is busy.
                    await _given_up(connection, _call("trigger-long-running-operation", long))
                    watch.cancel()  # the watched call's cancel now waits behind it, up to 3 s; progress goes on
                count = len(seen)
                await anyio.sleep(1.5)
    assert returned and count > 0
    late = [value for value, after in seen if after]
    assert late == [], f"{len(late)} progress notifications relayed after the call returned"
