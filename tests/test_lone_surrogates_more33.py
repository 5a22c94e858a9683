"""A backend's lone surrogates (an unpaired `\\ud800` escape, which JSON allows) beyond its listings and results: in its
log messages, progress and questions (elicitation) over stdio, and anywhere in an HTTP backend's JSON bodies and SSE
streams. Served with U+FFFD in their place, over HTTP in both protocol eras and over `vmcp serve --stdio`.

Before: a stdio backend's log or progress text holding one reached the client's writer, which could not encode it (a
2025-11-25 client's call got no answer, its SSE stream ended); a question holding one never reached the client; an
HTTP backend's body holding one was refused whole by the SDK's parse, so its listing failed (its tools gone) and a call
got "the body is not JSON-RPC". Real gateway processes, a stdio backend and an HTTP backend written here, and the SDK's
client."""

from __future__ import annotations

import json
import queue
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import anyio
import mcp_types as types
import pytest
from mcp import Client

from tests.support import (
    GatedServer,
    Gateway,
    JsonAnswers,
    gated,
    running_gateway,
    stdio_gateway,
    wait_until,
    write_config,
)
from vmcp_opt.backends.lone_surrogates import EscapeMender

pytestmark = [pytest.mark.anyio]

MENDED = "\ufffd"
# A stdio backend whose one tool, called, sends a progress notification (when asked for), a log message and an
# elicitation request, each text ending in a lone surrogate, then answers with the action its question got.
STDIO_BACKEND = r"""
import json, sys
def send(message):
    print(json.dumps(message), flush=True)
TOOLS = [{"name": "chat", "description": "talks", "inputSchema": {"type": "object"}}]
for line in sys.stdin:
    request = json.loads(line)
    if "id" not in request or "method" not in request:
        continue
    method = request["method"]
    if method == "initialize":
        capabilities = {"tools": {}, "logging": {}}
        result = {"protocolVersion": "2025-11-25", "capabilities": capabilities, "serverInfo": {"name": "s", "version": "1"}}
    elif method == "tools/list":
        result = {"tools": TOOLS}
    elif method in ("ping", "logging/setLevel"):
        result = {}
    elif method == "tools/call":
        token = (request["params"].get("_meta") or {}).get("progressToken")
        if token is not None:
            progress = {"progressToken": token, "progress": 1, "total": 2, "message": "p\ud800x"}
            send({"jsonrpc": "2.0", "method": "notifications/progress", "params": progress})
        log = {"level": "warning", "logger": "chat", "data": {"text": "l\ud800x", "k\udc00": 1}}
        send({"jsonrpc": "2.0", "method": "notifications/message", "params": log})
        ask = {"mode": "form", "message": "e\ud800x", "requestedSchema": {"type": "object", "properties": {}}}
        send({"jsonrpc": "2.0", "id": "ask", "method": "elicitation/create", "params": ask})
        for answer in sys.stdin:
            answer = json.loads(answer)
            if answer.get("id") == "ask" and "method" not in answer:
                break
        action = (answer.get("result") or {}).get("action", "none")
        result = {"content": [{"type": "text", "text": "asked: " + action}]}
    else:
        send({"jsonrpc": "2.0", "id": request["id"], "error": {"code": -32601, "message": "no"}})
        continue
    send({"jsonrpc": "2.0", "id": request["id"], "result": result})
"""


class Heard:
    """What a client's callbacks received: log data, progress messages, elicitation messages."""

    def __init__(self) -> None:
        self.logs: list[Any] = []
        self.progress: list[str | None] = []
        self.asked: list[str] = []
        self.logged = anyio.Event()
        self.progressed = anyio.Event()

    async def log(self, params: types.LoggingMessageNotificationParams) -> None:
        self.logs.append(params.data)
        self.logged.set()

    async def on_progress(self, progress: float, total: float | None, message: str | None) -> None:
        self.progress.append(message)
        self.progressed.set()

    async def elicit(self, context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        self.asked.append(params.message)
        return types.ElicitResult(action="accept", content={})


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def _stdio_config(directory: Path) -> Path:
    script = directory / "chat_backend.py"
    script.write_text(STDIO_BACKEND, encoding="utf-8")
    return write_config(directory, {"backends": [{"name": "odd", "command": sys.executable, "args": [str(script)]}]})


@pytest.fixture(scope="module")
def stdio_backed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with running_gateway(_stdio_config(tmp_path_factory.mktemp("lone-more-stdio"))) as running:
        yield running


async def test_a_2025_client_gets_a_stdio_backends_log_progress_and_question_mended(stdio_backed: Gateway) -> None:
    heard = Heard()
    async with Client(
        stdio_backed.url, mode="legacy", logging_callback=heard.log, elicitation_callback=heard.elicit
    ) as client:
        await client.set_logging_level("info")
        with anyio.fail_after(60):
            result = await client.call_tool("odd_chat", {}, progress_callback=heard.on_progress)
            await heard.logged.wait()  # the client runs its callbacks in tasks of their own
            await heard.progressed.wait()
    assert [block.text for block in result.content if isinstance(block, types.TextContent)] == ["asked: accept"]
    assert heard.asked == [f"e{MENDED}x"]
    assert heard.logs == [{"text": f"l{MENDED}x", f"k{MENDED}": 1}]
    assert heard.progress == [f"p{MENDED}x"]
    said = "backend odd: notifications/message had lone surrogates"
    wait_until(lambda: said in stdio_backed.output(), message=stdio_backed.output)
    assert "Logging error" not in stdio_backed.output() and "Traceback" not in stdio_backed.output()


async def test_a_2026_client_gets_a_stdio_backends_question_and_log_mended(stdio_backed: Gateway) -> None:
    heard = Heard()
    async with Client(
        stdio_backed.url,
        mode="2026-07-28",
        logging_callback=heard.log,
        log_level="info",
        elicitation_callback=heard.elicit,
    ) as client:
        with anyio.fail_after(60):
            result = await client.call_tool("odd_chat", {})
    assert [block.text for block in result.content if isinstance(block, types.TextContent)] == ["asked: accept"]
    assert heard.asked == [f"e{MENDED}x"]


def _send(pipe: IO[bytes], *messages: dict[str, Any]) -> None:
    pipe.write(b"".join(json.dumps(message).encode() + b"\n" for message in messages))
    pipe.flush()


def _lines(out: IO[bytes]) -> queue.SimpleQueue[bytes]:
    lines: queue.SimpleQueue[bytes] = queue.SimpleQueue()
    threading.Thread(target=lambda: [lines.put(raw) for raw in iter(out.readline, b"")], daemon=True).start()
    return lines


def _next(lines: queue.SimpleQueue[bytes]) -> dict[str, Any]:
    """The next line, checked to be UTF-8 a strict parser takes (as the SDK's client reads: no lone escapes)."""
    text = lines.get(timeout=60).decode("utf-8")
    types.jsonrpc_message_adapter.validate_json(text)
    parsed: dict[str, Any] = json.loads(text)
    return parsed


def test_over_stdio_a_backends_log_and_question_are_lines_the_client_can_read(tmp_path: Path) -> None:
    capabilities = {"elicitation": {"form": {}}}
    initialize = {
        "protocolVersion": "2025-11-25",
        "capabilities": capabilities,
        "clientInfo": {"name": "t", "version": "1"},
    }
    with stdio_gateway(_stdio_config(tmp_path), tmp_path / "stderr.log") as proc:
        assert proc.stdin is not None and proc.stdout is not None
        lines = _lines(proc.stdout)
        _send(proc.stdin, {"jsonrpc": "2.0", "id": "init", "method": "initialize", "params": initialize})
        _send(proc.stdin, {"jsonrpc": "2.0", "method": "notifications/initialized"})
        _send(proc.stdin, {"jsonrpc": "2.0", "id": "level", "method": "logging/setLevel", "params": {"level": "info"}})
        call = {"name": "odd_chat", "arguments": {}, "_meta": {"progressToken": "tok"}}
        _send(proc.stdin, {"jsonrpc": "2.0", "id": "call", "method": "tools/call", "params": call})
        seen: dict[str, dict[str, Any]] = {}
        while "call" not in seen:
            message = _next(lines)
            if message.get("method") == "elicitation/create":
                answer = {"jsonrpc": "2.0", "id": message["id"], "result": {"action": "decline"}}
                _send(proc.stdin, answer)
            seen[str(message.get("method") or message.get("id"))] = message
        assert proc.poll() is None
    assert seen["call"]["result"]["content"] == [{"type": "text", "text": "asked: decline"}]
    assert seen["elicitation/create"]["params"]["message"] == f"e{MENDED}x"
    assert seen["notifications/message"]["params"]["data"] == {"text": f"l{MENDED}x", f"k{MENDED}": 1}
    assert seen["notifications/progress"]["params"]["message"] == f"p{MENDED}x"


# An HTTP backend answering by hand: tools/list and tools/call as JSON bodies, or a call as an SSE stream carrying a
# log message first; every text spoilt with an escape (`\ud800`) the SDK's parse refused, one kept as a valid pair.
def _spoilt(message: dict[str, Any]) -> bytes:
    # `json.dumps` writes the pair as `\ud83d\ude00` and the lone one as `\ud800`; an escaped backslash stays so.
    return json.dumps(message).encode()


class SpoiltBackend(JsonAnswers):
    def do_GET(self) -> None:
        self.send_response(405)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_DELETE(self) -> None:
        self.do_GET()

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if "id" not in request:
            self.send_response(202)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        method = request["method"]
        if method == "initialize":
            capabilities = {"tools": {}, "logging": {}}
            info = {"name": "h", "version": "1"}
            result: dict[str, Any] = {"protocolVersion": "2025-11-25", "capabilities": capabilities, "serverInfo": info}
        elif method == "tools/list":
            tool = {"name": "weird", "description": "w\ud800x \U0001f600 \\ud800", "inputSchema": {"type": "object"}}
            plain = [{"name": name, "inputSchema": {"type": "object"}} for name in ("plain", "streamed")]
            result = {"tools": [tool, *plain]}
        elif method == "tools/call" and request["params"]["name"] == "streamed":
            log = {"level": "warning", "logger": "h", "data": "l\udc00x"}
            events = [
                {"jsonrpc": "2.0", "method": "notifications/message", "params": log},
                {"jsonrpc": "2.0", "id": request["id"], "result": {"content": [{"type": "text", "text": "s\ud800x"}]}},
            ]
            body = b"".join(b"data: " + _spoilt(event) + b"\n\n" for event in events)
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        elif method == "tools/call":
            result = {"content": [{"type": "text", "text": "o\ud800x"}]}
        else:
            result = {}
        body = _spoilt({"jsonrpc": "2.0", "id": request["id"], "result": result})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def http_backed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with gated(GatedServer(SpoiltBackend)) as backend:
        config = {"backends": [{"name": "web", "transport": "streamable-http", "url": f"{backend.base}/mcp"}]}
        with running_gateway(write_config(tmp_path_factory.mktemp("lone-more-http"), config)) as running:
            yield running


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_an_http_backends_listing_and_result_with_lone_surrogates_are_served_mended(
    http_backed: Gateway, mode: Any
) -> None:
    async with Client(http_backed.url, mode=mode) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        result = await client.call_tool("web_weird", {})
    assert tools["web_weird"].description == f"w{MENDED}x \U0001f600 \\ud800"
    assert "web_plain" in tools
    assert not result.is_error
    assert [block.text for block in result.content if isinstance(block, types.TextContent)] == [f"o{MENDED}x"]


async def test_an_http_backends_sse_answer_and_its_log_message_are_served_mended(http_backed: Gateway) -> None:
    heard = Heard()
    async with Client(http_backed.url, mode="legacy", logging_callback=heard.log) as client:
        await client.set_logging_level("info")
        result = await client.call_tool("web_streamed", {})
        with anyio.fail_after(30):  # the client runs its callback apart from the answer
            await heard.logged.wait()
    assert [block.text for block in result.content if isinstance(block, types.TextContent)] == [f"s{MENDED}x"]
    assert heard.logs == [f"l{MENDED}x"]


@pytest.mark.parametrize("size", [1, 2, 5, 11, 12, 13, 64])
def test_the_byte_mender_rewrites_lone_escapes_only_whatever_the_chunks(size: int) -> None:
    body = rb'["\ud800", "\\ud800", "\\\ud800", "\ud83d\ude00", "\udc00\ud800", "\uD83D\uDE00", "\u00e9", "\ud800'
    expected = rb'["\ufffd", "\\ud800", "\\\ufffd", "\ud83d\ude00", "\ufffd\ufffd", "\uD83D\uDE00", "\u00e9", "\ufffd'
    mender = EscapeMender()
    out = b"".join(mender.feed(body[at : at + size]) for at in range(0, len(body), size)) + mender.flush()
    assert out == expected
    assert mender.mended == 5


def test_the_byte_mender_holds_back_little_of_a_long_run_of_backslashes() -> None:
    mender = EscapeMender()
    sent = sum(len(mender.feed(b"\\" * 4096)) for _ in range(256))
    assert 256 * 4096 - sent < 16  # what is held is not rescanned chunk after chunk
