"""A streamable HTTP backend that never finishes an answer, or breaks one off, against a real gateway process and
a real MCP client: an answer nobody waits for any more is not read further (its connection is closed), and an
answer cut off mid-body fails that call only, not the backend's session."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from tests.loop_server import LoopServer
from tests.support import running_gateway, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

TOOLS = ["ok", "hang", "drip", "sse_hang", "cut", "echo"]
SECRET_ECHOED = "X-Api-Key: sk-live-0123456789abcdef"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class HostileBackend(LoopServer):
    """A streamable HTTP backend (JSON answers) on plain asyncio: `hang` never sends its headers, `drip` sends a
    byte a second of a body that never ends, `sse_hang` opens an SSE answer and sends nothing, `cut` closes the
    connection mid-body. Counts the connections of calls still open, and the sessions opened."""

    def __init__(self) -> None:
        super().__init__()
        self.open_calls = 0
        self.initializes = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        method = head.split(" ", 1)[0]
        length = next(
            (int(line.split(":")[1]) for line in head.lower().split("\r\n") if line.startswith("content-length:")), 0
        )
        body = await reader.readexactly(length)
        if method != "POST":
            writer.write(b"HTTP/1.1 405 No\r\ncontent-length: 0\r\n\r\n")
            return True
        message = json.loads(body)
        if "id" not in message:
            writer.write(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n")
            return True
        params = message.get("params") or {}
        if message["method"] == "tools/call" and params["name"] != "ok":
            self.open_calls += 1
            try:
                await self._misbehave(params["name"], reader, writer)
            finally:
                self.open_calls -= 1
            return False
        writer.write(self._answer(message["id"], message["method"], params))
        return True

    def _answer(self, request_id: Any, method: str, params: dict[str, Any]) -> bytes:
        result: dict[str, Any] = {}
        if method == "initialize":
            self.initializes += 1
            result = {
                "protocolVersion": params["protocolVersion"],
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "hostile", "version": "1"},
            }
        elif method == "tools/list":
            result = {"tools": [{"name": name, "inputSchema": {"type": "object"}} for name in TOOLS]}
        elif method == "tools/call":
            result = {"content": [{"type": "text", "text": "fine"}]}
        body = json.dumps({"jsonrpc": "2.0", "id": request_id, "result": result}).encode()
        return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)

    async def _misbehave(self, name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if name == "echo":  # JSON, not JSON-RPC, and quoting what it was sent, as a debug page might
            body = json.dumps({"debug": f"you sent {SECRET_ECHOED}"}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body))
            writer.write(body)
            await writer.drain()
            return
        if name == "cut":
            writer.write(b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\r\n{"jsonrpc"')
            await writer.drain()
            return
        if name == "drip":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n")
        elif name == "sse_hang":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n")
        for _ in range(3600):  # until the gateway closes the connection (its end reads EOF)
            if name == "drip":
                writer.write(b" ")
                await writer.drain()
            try:
                if await asyncio.wait_for(reader.read(1), 0.2) == b"":
                    return
            except TimeoutError:
                pass


@contextmanager
def hostile_backend() -> Iterator[HostileBackend]:
    backend = HostileBackend()
    backend.start()
    try:
        yield backend
    finally:
        backend.stop()


def config(port: int) -> dict[str, Any]:
    return {
        "backends": [
            {
                "name": "h",
                "transport": "streamable-http",
                "url": f"http://127.0.0.1:{port}/mcp",
                "call_timeout": 1,
            }
        ],
        "health": {"interval": 3600},
        "failure": {"circuit_breaker": {"enabled": False}},
    }


def wait_for(condition: Any, timeout: float = 30.0) -> bool:  # a hang guard: it returns once true
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


async def test_an_answer_no_call_waits_for_is_not_read_further(tmp_path: Path) -> None:
    with hostile_backend() as backend, running_gateway(write_config(tmp_path, config(backend.port))) as gateway:
        async with Client(gateway.url) as client:
            for tool in ("h_hang", "h_drip", "h_sse_hang"):
                result = await client.call_tool(tool, {})
                assert result.is_error and "timed out" in result.content[0].text  # type: ignore[union-attr]
            # Each timed-out call's POST is closed by the gateway, whatever stage the answer was at.
            assert wait_for(lambda: backend.open_calls == 0), f"{backend.open_calls} answers still being read"
            assert (await client.call_tool("h_ok", {})).is_error is False


async def test_an_answer_broken_off_fails_that_call_and_keeps_the_session(tmp_path: Path) -> None:
    with hostile_backend() as backend, running_gateway(write_config(tmp_path, config(backend.port))) as gateway:
        async with Client(gateway.url) as client:
            result = await client.call_tool("h_cut", {})
            assert result.is_error
            assert "backend 'h' broke off its answer" in result.content[0].text  # type: ignore[union-attr]
            assert (await client.call_tool("h_ok", {})).is_error is False
        assert backend.initializes == 1, "the backend's session was opened again"
        assert "backend h failed" not in gateway.output()


async def test_a_body_that_is_not_json_rpc_is_not_quoted_to_the_client_nor_the_log(tmp_path: Path) -> None:
    with hostile_backend() as backend, running_gateway(write_config(tmp_path, config(backend.port))) as gateway:
        async with Client(gateway.url) as client:
            result = await client.call_tool("h_echo", {})
            assert result.is_error
            text = result.content[0].text  # type: ignore[union-attr]
            assert "not JSON-RPC" in text and SECRET_ECHOED not in text, text
            assert (await client.call_tool("h_ok", {})).is_error is False
        assert SECRET_ECHOED not in gateway.output()
