"""A streamable HTTP backend's answer past `limits.max_result_bytes` that comes as an SSE event, not a JSON body:
refused as the JSON one is (an error result naming the setting, the circuit untouched; a listing served up to
the page before it), not as a broken connection (a real gateway, a raw HTTP backend, a real client)."""

from __future__ import annotations

import contextlib
import gzip
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx2
import pytest
from mcp import Client

from tests.support import Gateway, free_port, running_gateway, serving_mcp, write_config
from tests.test_failure_recovery import backend
from vmcp_opt.backends.http_bodies import CountedEvents, EventTooManyValues

pytestmark = pytest.mark.anyio

CAP = 100_000  # limits.max_result_bytes: an SSE event past ~1.15 MB is refused
# A backend that answers a tools/call (and, with `listsse`, a tools/list) as one SSE event. Its one tool,
# `zeros`, answers {"a": [0] * n}; with `pages` > 0 its tools/list has a second page of that many long tools.
BACKEND = """
import json, sys
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
PORT, PAGES, LIST_SSE = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "listsse"
ZEROS = {"name": "zeros", "inputSchema": {"type": "object", "properties": {"n": {"type": "integer"}}}}

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def empty(self, status):
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def do_GET(self):
        self.empty(405)

    def do_DELETE(self):
        self.empty(200)

    def do_POST(self):
        message = json.loads(self.rfile.read(int(self.headers["content-length"])))
        method, params = message.get("method"), message.get("params") or {}
        if "id" not in message:
            return self.empty(202)
        sse = method == "tools/call" or (LIST_SSE and method == "tools/list")
        if method == "initialize":
            result = {"protocolVersion": params["protocolVersion"], "capabilities": {"tools": {}},
                      "serverInfo": {"name": "raw", "version": "1"}}
        elif method == "tools/list" and params.get("cursor"):
            result = {"tools": [{"name": f"extra{i}", "description": "d" * 200, "inputSchema": {"type": "object"}}
                                for i in range(PAGES)]}
        elif method == "tools/list":
            result = {"tools": [ZEROS], **({"nextCursor": "2"} if PAGES else {})}
        elif method == "tools/call":
            result = {"content": [{"type": "text", "text": "fine"}],
                      "structuredContent": {"a": [0] * int(params["arguments"]["n"])}}
        else:
            result = {}
        body = json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result})
        data = (f"event: message\\ndata: {body}\\n\\n" if sse else body).encode()
        self.send_response(200)
        self.send_header("content-type", "text/event-stream" if sse else "application/json")
        self.send_header("mcp-session-id", "s1")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        try:
            self.wfile.write(data)
        except OSError:
            pass  # the gateway stopped reading an answer past its cap

ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@contextlib.contextmanager
def raw_gateway(tmp_path: Path, limits: dict[str, int], pages: int = 0, list_sse: bool = False) -> Iterator[Gateway]:
    """A gateway in front of `BACKEND` as 'raw'. One failure would open its circuit: an answer refused for
    `limits` must not count as one."""
    script = tmp_path / "raw_backend.py"
    script.write_text(BACKEND, encoding="utf-8")
    port = free_port()
    command = [sys.executable, str(script), str(port), str(pages), "listsse" if list_sse else "json"]
    with serving_mcp(command, port) as url:
        config = {
            "backends": [{"name": "raw", "transport": "streamable-http", "url": url}],
            "health": {"interval": 3600},
            "failure": {"circuit_breaker": {"failure_threshold": 1, "cooldown": 600}},
            "limits": limits,
        }
        with running_gateway(write_config(tmp_path, config)) as gateway:
            yield gateway


async def test_a_call_answered_past_the_cap_as_sse_is_an_error_result_naming_the_setting(tmp_path: Path) -> None:
    with raw_gateway(tmp_path, {"max_result_bytes": CAP}) as gateway:
        async with Client(gateway.url) as client:
            for _ in range(2):
                refused = await client.call_tool("raw_zeros", {"n": 600_000})  # ~1.8 MB in one event
                assert refused.is_error
                text = refused.content[0].text  # type: ignore[union-attr]
                assert "limits.max_result_bytes" in text and "backend 'raw'" in text, text
            small = await client.call_tool("raw_zeros", {"n": 3})
        assert small.structured_content == {"a": [0, 0, 0]}, small.content
        assert backend(gateway, "raw")["circuit"]["state"] == "closed"


async def test_a_listing_page_past_the_cap_as_sse_serves_the_pages_before_it(tmp_path: Path) -> None:
    with raw_gateway(tmp_path, {"max_result_bytes": CAP}, pages=8000, list_sse=True) as gateway:
        async with Client(gateway.url) as client:
            listed = await client.list_tools()
        assert [tool.name for tool in listed.tools] == ["raw_zeros"]
        state = backend(gateway, "raw")
        assert (state["state"], state["restarts"]) == ("ready", 0), state
        assert "a page was too large to take in" in gateway.output()


async def test_a_call_answered_past_max_result_values_as_sse_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    with raw_gateway(tmp_path, {"max_result_values": 1024}) as gateway:
        async with Client(gateway.url) as client:
            refused = await client.call_tool("raw_zeros", {"n": 5000})  # 5,000 values in 10 KB
            text = refused.content[0].text  # type: ignore[union-attr]
            assert refused.is_error and refused.structured_content is None
            assert "limits.max_result_values (1,024)" in text and "backend 'raw'" in text, text
            within = await client.call_tool("raw_zeros", {"n": 1000})
        assert within.structured_content == {"a": [0] * 1000}
        assert backend(gateway, "raw")["circuit"]["state"] == "closed"
        assert "limits.max_result_values" in gateway.output()


class Pieces(httpx2.AsyncByteStream):
    """An SSE body as the network may cut it: one byte a chunk."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for at in range(len(self._body)):
            yield self._body[at : at + 1]


async def test_each_sse_event_is_counted_alone_however_its_bytes_are_cut() -> None:
    within = b"event: message\r\ndata: [" + b"0," * 1000 + b"0]\r\n\r\n"
    past = b"data: [" + b"0," * 600 + b"\r\ndata: " + b"0," * 600 + b"0]\r\n\r\n"  # two data lines, one event
    passed: list[bytes] = []
    with pytest.raises(EventTooManyValues, match=r"about 1,201 values, more than limits.max_result_values \(1,024\)"):
        async for chunk in CountedEvents(Pieces(within * 3 + past + within), "up", 1024):
            passed.append(chunk)
    assert b"".join(passed) == within * 3 + past[:-1]  # the event's last byte, which ends it, never passed


async def test_a_gzip_sse_stream_is_counted_inflated() -> None:
    within = b"data: [" + b"0," * 1000 + b"0]\n\n"
    passed = [chunk async for chunk in CountedEvents(Pieces(gzip.compress(within * 2)), "up", 1024, "gzip")]
    assert b"".join(passed) == within * 2
    body = b"data: [" + b"0," * 2000 + b"0]\n\n"
    with pytest.raises(EventTooManyValues, match="about 2,001 values"):
        async for _ in CountedEvents(Pieces(gzip.compress(body)), "up", 1024, "gzip"):
            pass
