"""What an audit log whose output does not keep up may cost the gateway in memory, over real processes: the
gateway (`vmcp serve`) with its audit on stdout into a pipe nobody reads (a log shipper that stalled), the demo
backend echoing a client's megabyte, the SDK client.

Each waiting event used to hold its whole operation: the client's arguments, the backend's result, the
request's exchange. 10,000 of them (`queue_size`) of a megabyte each is ten gigabytes: the gateway's memory
grew by ~2.5 MB per call until the kernel killed it. A waiting event now holds the result's size only, and with
`include_data` its arguments and result up to `max_queued_data_bytes` for all of them together.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import httpx2
import psutil
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.support import (
    Gateway,
    demo_backend,
    free_port,
    raw_session,
    stop_process,
    wait_http,
    wait_started,
    write_config,
)
from tests.test_obs_telemetry_limits import F_SETPIPE_SZ, poll

pytestmark = [pytest.mark.slow, pytest.mark.anyio]
MEGABYTE = "m" * 1_000_000
_READ: set[int] = set()  # gateways whose stdout a thread reads (`read_lines`)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@contextmanager
def gateway_with_unread_stdout(config: Path) -> Iterator[Gateway]:
    """A gateway whose stdout is a pipe of one page that this test does not read: its audit writer blocks once
    the pipe is full, as it does on a log shipper that stalled."""
    port = free_port()
    log = config.parent / "gateway.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vmcp_opt", "serve", "-c", str(config), "--port", str(port)],
            stdout=subprocess.PIPE,
            stderr=sink,
        )
    assert proc.stdout is not None
    fcntl.fcntl(proc.stdout.fileno(), F_SETPIPE_SZ, 4096)
    gateway = Gateway(proc, port, log)
    try:
        wait_http(f"{gateway.base}/healthz", proc=proc)
        wait_started(gateway, 60)
        yield gateway
    finally:
        if proc.pid in _READ:  # the reader unblocked the writer; closing under it would wait for its lock
            stop_process(proc)
            proc.stdout.close()
        else:  # closed first, a writer blocked on the pipe fails at once rather than hold the shutdown
            proc.stdout.close()
            stop_process(proc)


def read_lines(gateway: Gateway) -> list[str]:
    """The gateway's stdout from now on, read by a thread into the list returned (the writer unblocks)."""
    lines: list[str] = []
    stdout = gateway.proc.stdout
    assert stdout is not None

    def read() -> None:
        with contextlib.suppress(ValueError, OSError):  # the pipe closed under it at the end
            for line in stdout:
                lines.append(line.decode("utf-8", "replace"))

    _READ.add(gateway.proc.pid)
    threading.Thread(target=read, daemon=True).start()
    return lines


async def echo_megabytes(url: str, calls: int) -> None:
    async with Client(streamable_http_client(url)) as client:
        for _ in range(calls):
            with anyio.fail_after(30):
                echoed = await client.call_tool("notes_slow_echo", {"message": MEGABYTE, "seconds": 0})
            assert not echoed.is_error


def post_megabytes(url: str, calls: int) -> None:
    """The same calls as plain HTTP in one session, several times faster than the SDK client's."""
    session = raw_session(url)
    with httpx2.Client(timeout=30) as http:
        for n in range(calls):
            params = {"name": "notes_slow_echo", "arguments": {"message": MEGABYTE, "seconds": 0}}
            call = {"jsonrpc": "2.0", "id": n + 2, "method": "tools/call", "params": params}
            answer = http.post(url, json=call, headers=session)
            assert answer.status_code == 200 and '"isError":false' in answer.text


def test_a_stalled_audit_output_does_not_hold_every_waiting_result_in_memory(tmp_path: Path) -> None:
    config = {"backends": [demo_backend("notes")], "telemetry": {"audit": {"enabled": True, "output": "stdout"}}}
    with gateway_with_unread_stdout(write_config(tmp_path, config)) as gateway:
        post_megabytes(gateway.url, 5)  # the pipe fills, the writer blocks; the allocator warms up
        before = psutil.Process(gateway.proc.pid).memory_info().rss
        post_megabytes(gateway.url, 50)
        grown = psutil.Process(gateway.proc.pid).memory_info().rss - before
    # Held, 50 events were ~190 MB (arguments, result, structured result, parsed and raw); measured, a few
    # kilobytes each.
    assert grown < 90_000_000, f"the gateway grew by {grown / 1e6:.0f} MB over 50 queued events"


async def test_include_data_keeps_queued_data_within_its_byte_budget(tmp_path: Path) -> None:
    # A call holds ~3 MB of data (a megabyte of arguments, the echo twice in its result): the budget holds one.
    # While the writer is blocked, one call's data waits and one more may be formatted (its line is cut to
    # `max_data_bytes`); the others wait without theirs.
    audit = {"enabled": True, "output": "stdout", "include_data": True, "max_queued_data_bytes": 4_000_000}
    config = {"backends": [demo_backend("notes")], "telemetry": {"audit": audit}}
    with gateway_with_unread_stdout(write_config(tmp_path, config)) as gateway:
        await echo_megabytes(gateway.url, 6)
        lines = read_lines(gateway)
        poll(lambda: sum('"mcp_tool_call"' in line for line in lines) == 6, "the six calls audited")
    events = [json.loads(line) for line in lines if line.startswith("{")]
    calls = [e for e in events if e["type"] == "mcp_tool_call"]
    with_data = [e for e in calls if "data" in e]
    assert 1 <= len(with_data) <= 2 and all(e["data"]["request"]["truncated"] is True for e in with_data)
    dropped = [e for e in calls if "data" not in e]
    assert len(dropped) >= 4
    assert all(e["metadata"]["extra"]["data_dropped"] == "max_queued_data_bytes" for e in dropped)
    assert all(e["metadata"]["extra"]["response_size_bytes"] > 1_000_000 for e in calls)  # measured all the same
