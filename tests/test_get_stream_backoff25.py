"""A streamable HTTP backend whose GET (SSE) stream says `retry: 0` and ends at once, against a real gateway
process: the SDK reconnected it as fast as it could, ~300 GETs a second for good; the gateway now spaces a
stream's GETs and backs off while they keep ending empty (backends/transports.py, `PacedGetClient`), logs that
it does, and the backend's tools still answer."""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client

from tests.support import running_gateway, write_config
from vmcp_opt.backends.transports import _WatchedGetBody

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

# A priming event (an id, an empty `data`) asking to be reconnected at once, then the end of the stream.
PRIMING_AND_CLOSE = b"id: g1\nretry: 0\ndata: \n\n"
WINDOW_SECONDS = 5.0
# With the backoff (1 s, then 2, 4, ...) a session sends 3 or 4 GETs in the window; without it, hundreds.
MOST_GETS_IN_WINDOW = 15


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class _Counts:
    """The GETs each backend session (by its Mcp-Session-Id) was sent."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.gets: collections.Counter[str] = collections.Counter()
        self.sessions = itertools.count(1)

    def snapshot(self) -> collections.Counter[str]:
        with self.lock:
            return collections.Counter(self.gets)


class _Backend(BaseHTTPRequestHandler):
    """A streamable HTTP backend: JSON answers to POSTs; each GET a priming event with `retry: 0`, then closed."""

    protocol_version = "HTTP/1.1"
    counts: _Counts

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        with self.counts.lock:
            self.counts.gets[self.headers.get("mcp-session-id", "")] += 1
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("connection", "close")
        self.end_headers()
        with contextlib.suppress(OSError):  # the gateway closed first
            self.wfile.write(PRIMING_AND_CLOSE)
        self.close_connection = True

    def do_DELETE(self) -> None:
        self._send(200, b"", "text/plain")

    def do_POST(self) -> None:
        message = json.loads(self.rfile.read(int(self.headers["content-length"])))
        if "id" not in message:
            self._send(202, b"", "text/plain")
            return
        request_id, method, params = message["id"], message.get("method"), message.get("params") or {}
        if method == "initialize":
            session = f"s{next(self.counts.sessions)}"
            result = {
                "protocolVersion": params["protocolVersion"],
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "flaky-get", "version": "1"},
            }
            self._json({"jsonrpc": "2.0", "id": request_id, "result": result}, session)
        elif method == "tools/list":
            tools = [{"name": "echo", "inputSchema": {"type": "object"}}]
            self._json({"jsonrpc": "2.0", "id": request_id, "result": {"tools": tools}})
        elif method == "tools/call":
            content = [{"type": "text", "text": "echoed"}]
            self._json({"jsonrpc": "2.0", "id": request_id, "result": {"content": content}})
        elif method == "ping":
            self._json({"jsonrpc": "2.0", "id": request_id, "result": {}})
        else:
            self._json({"jsonrpc": "2.0", "id": request_id, "error": {"code": -32601, "message": "no such method"}})

    def _json(self, body: dict[str, Any], session: str | None = None) -> None:
        self._send(200, json.dumps(body).encode(), "application/json", session)

    def _send(self, status: int, body: bytes, content_type: str, session: str | None = None) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        if session is not None:
            self.send_header("mcp-session-id", session)
        self.end_headers()
        self.wfile.write(body)


@contextlib.contextmanager
def retry_zero_backend() -> Iterator[tuple[str, _Counts]]:
    counts = _Counts()
    handler = type("Handler", (_Backend,), {"counts": counts})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/mcp", counts
    finally:
        server.shutdown()
        server.server_close()


async def test_a_get_stream_ending_at_once_is_reconnected_with_backoff_and_calls_still_work(tmp_path: Path) -> None:
    with retry_zero_backend() as (url, counts):
        config = write_config(tmp_path, {"backends": [{"name": "flaky", "transport": "streamable-http", "url": url}]})
        with running_gateway(config) as gateway:
            deadline = time.monotonic() + 60
            while not counts.snapshot():  # the backend session's GET stream has started
                assert time.monotonic() < deadline, f"no GET reached the backend\n{gateway.output()}"
                await anyio.sleep(0.05)
            before = counts.snapshot()
            await anyio.sleep(WINDOW_SECONDS)  # an observation window: what is counted is the GETs in it
            after = counts.snapshot()
            in_window = {session: after[session] - before[session] for session in after}
            assert max(in_window.values()) < MOST_GETS_IN_WINDOW, in_window

            async with Client(gateway.url) as client:
                answer = await client.call_tool("flaky_echo", {})
            assert not answer.is_error
            assert [block.text for block in answer.content if block.type == "text"] == ["echoed"]
            assert "backend flaky: its GET stream ended at once, empty" in gateway.output()


async def _body_carries_message(chunks: list[bytes]) -> bool:
    seen: list[bool] = []
    body = _WatchedGetBody(_Chunks(chunks), seen.append)
    async for _ in body:
        pass
    await body.aclose()
    return seen == [True]


class _Chunks(httpx2.AsyncByteStream):
    """A body arriving in the chunks given, as a network could cut it."""

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk


async def test_only_a_data_field_with_something_in_it_counts_as_a_message() -> None:
    message = b'data: {"jsonrpc":"2.0","method":"notifications/message"}\n\n'
    assert await _body_carries_message([PRIMING_AND_CLOSE, message])
    assert await _body_carries_message([b"id: 1\r\nda", b"ta:", b" ", b"{}\r\n\r\n"])  # cut mid-line
    assert not await _body_carries_message([PRIMING_AND_CLOSE, b": a comment\n\n", b"data:  \n\n"])
    assert not await _body_carries_message([b"data:", b"\n\n"])
