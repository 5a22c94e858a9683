"""A streamable HTTP backend whose answer to one call is not HTTP fails that call alone (real gateway process,
a raw asyncio HTTP backend, the SDK's client)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import mcp_types as types
import pytest
from mcp import Client

from tests.support import Gateway, free_port, running_gateway, stop_process, wait_http, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

# Tools `header` (answered with a 2 MB header line, past what h11 reads of a head) and `echo`.
GARBLING_SERVER = r"""
import asyncio, json, sys
def answer(request_id, result, extra=""):
    body = json.dumps({"jsonrpc": "2.0", "id": request_id, "result": result}).encode()
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nMcp-Session-Id: s\r\n{extra}Content-Length: {len(body)}\r\n\r\n"
    return head.encode() + body
async def serve(reader, writer):
    try:
        while True:
            head = (await reader.readuntil(b"\r\n\r\n")).decode()
            length = next((int(l.split(":")[1]) for l in head.split("\r\n") if l.lower().startswith("content-length")), 0)
            message = json.loads(await reader.readexactly(length)) if length else {}
            if not head.startswith("POST") or "id" not in message:
                writer.write(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n" if head.startswith("POST") else b"HTTP/1.1 405 No\r\nContent-Length: 0\r\n\r\n")
            elif message["method"] == "initialize":
                writer.write(answer(message["id"], {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}}, "serverInfo": {"name": "g", "version": "1"}}))
            elif message["method"] == "tools/list":
                writer.write(answer(message["id"], {"tools": [{"name": n, "inputSchema": {"type": "object"}} for n in ("header", "echo")]}))
            elif message["method"] == "tools/call" and message["params"]["name"] == "header":
                writer.write(answer(message["id"], {"content": []}, "X-Big: " + "a" * 2_000_000 + "\r\n"))
            elif message["method"] == "tools/call":
                writer.write(answer(message["id"], {"content": [{"type": "text", "text": "echoed"}]}))
            else:
                writer.write(answer(message["id"], {}))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()
async def main():
    async with await asyncio.start_server(serve, "127.0.0.1", int(sys.argv[1])) as server:
        await server.serve_forever()
asyncio.run(main())
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    script = tmp_path / "garbling.py"
    script.write_text(GARBLING_SERVER, encoding="utf-8")
    port = free_port()
    backend = subprocess.Popen([sys.executable, str(script), str(port)])
    try:
        url = f"http://127.0.0.1:{port}/mcp"
        wait_http(url, expect=(405,), proc=backend)
        config = write_config(tmp_path, {"backends": [{"name": "g", "transport": "streamable-http", "url": url}]})
        with running_gateway(config) as gateway:
            yield gateway
    finally:
        stop_process(backend)


def text(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def test_an_answer_that_is_not_http_fails_its_call_alone_and_the_backend_serves_on(gateway: Gateway) -> None:
    async with Client(gateway.url) as client:
        for _ in range(2):
            broken = await client.call_tool("g_header", {})
            assert broken.is_error
            assert "backend 'g' answered with something that is not HTTP" in text(broken)
            assert "Receive buffer too long" in text(broken)
            served = await client.call_tool("g_echo", {})
            assert not served.is_error, text(served)  # the session went on: the backend was not lost
            assert text(served) == "echoed"
    assert "backend g failed" not in gateway.output()
