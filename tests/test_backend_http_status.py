"""An HTTP backend answering an error status or garbage, against a real gateway process: the client and the log
name the backend and the status (never a secret, never the whole body), a 5xx and a garbled body count against
the backend's circuit, a JSON-RPC error a backend sends at a non-2xx status passes on as its own answer."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from tests.support import running_gateway, write_config
from tests.test_failure_recovery import backend, text

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

TOKEN = "sekrit-bearer-0123456789"
TOOLS = [{"name": name, "inputSchema": {"type": "object"}} for name in ("ok", "boom", "page", "refuses", "garbled")]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class _Backend(BaseHTTPRequestHandler):
    """A streamable HTTP backend answering JSON, whose tools answer what their names say."""

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:  # no standalone SSE stream
        self._send(405, b"", "text/plain")

    def do_DELETE(self) -> None:
        self._send(405, b"", "text/plain")

    def do_POST(self) -> None:
        message = json.loads(self.rfile.read(int(self.headers["content-length"])))
        if "id" not in message:
            self._send(202, b"", "text/plain")
            return
        request_id, method, params = message["id"], message.get("method"), message.get("params") or {}
        if method == "initialize":
            version = params["protocolVersion"]
            self._result(
                request_id,
                {
                    "protocolVersion": version,
                    "capabilities": {"tools": {}},
                    "serverInfo": {"name": "h", "version": "1"},
                },
            )
        elif method == "tools/list":
            self._result(request_id, {"tools": TOOLS})
        elif method == "ping":
            self._result(request_id, {})
        elif method == "tools/call":
            self._call(request_id, params["name"])
        else:
            self._json(
                200, {"jsonrpc": "2.0", "id": request_id, "error": {"code": -32601, "message": "no such method"}}
            )

    def _call(self, request_id: Any, name: str) -> None:
        if name == "boom":  # a server error that echoes the request's credentials, and a long body
            echo = f"database exploded; you sent {self.headers.get('authorization')}\n{'x' * 50_000}"
            self._send(500, echo.encode(), "text/plain")
        elif name == "page":
            self._send(502, b"<html><body><h1>502 Bad Gateway</h1><p>nginx</p></body></html>", "text/html")
        elif name == "refuses":  # a spec-correct JSON-RPC error at an error status: the backend's own answer
            self._json(500, {"jsonrpc": "2.0", "id": request_id, "error": {"code": -32050, "message": "quota spent"}})
        elif name == "garbled":
            self._send(
                200,
                b'{"jsonrpc": "2.0", "id": ' + json.dumps(request_id).encode() + b', "result": {',
                "application/json",
            )
        else:
            self._result(request_id, {"content": [{"type": "text", "text": "fine"}]})

    def _result(self, request_id: Any, result: dict[str, Any]) -> None:
        self._json(200, {"jsonrpc": "2.0", "id": request_id, "result": result})

    def _json(self, status: int, body: dict[str, Any]) -> None:
        self._send(status, json.dumps(body).encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextmanager
def http_backend() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Backend)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/mcp"
    finally:
        server.shutdown()
        server.server_close()


def config(url: str, failure_threshold: int) -> dict[str, Any]:
    return {
        "backends": [
            {"name": "web", "transport": "streamable-http", "url": url, "headers": {"Authorization": f"Bearer {TOKEN}"}}
        ],
        # Only calls feed the circuit in these tests: no health check runs within them.
        "health": {"interval": 3600},
        "failure": {"circuit_breaker": {"failure_threshold": failure_threshold, "cooldown": 3600}},
    }


async def test_an_http_error_status_names_the_backend_and_the_status_without_secrets(tmp_path: Path) -> None:
    with http_backend() as url, running_gateway(write_config(tmp_path, config(url, failure_threshold=100))) as gateway:
        async with Client(gateway.url) as client:
            # To a tools/call, as a tool result with isError (what an agent reads), like a timeout.
            boom = await client.call_tool("web_boom", {})
            message = text(boom)
            assert boom.is_error
            assert message.startswith("backend 'web' answered HTTP 500 Internal Server Error: database exploded"), (
                message
            )
            assert TOKEN not in message and "you sent ***" in message
            assert len(message) < 1000
            page = await client.call_tool("web_page", {})
            assert page.is_error and text(page) == "backend 'web' answered HTTP 502 Bad Gateway"  # not the page
            # A JSON-RPC error in the body is the backend's own answer, passed on as it came.
            with pytest.raises(MCPError) as refused:
                await client.call_tool("web_refuses", {})
            assert refused.value.error.code == -32050 and refused.value.error.message == "quota spent"
            assert not (await client.call_tool("web_ok", {})).is_error
    log = gateway.output()
    assert "backend 'web' answered HTTP 500 Internal Server Error: database exploded" in log
    assert TOKEN not in log and "x" * 2000 not in log
    assert "Server returned an error response" not in log


async def test_server_errors_and_garbled_answers_open_the_circuit_but_the_backends_own_errors_do_not(
    tmp_path: Path,
) -> None:
    with http_backend() as url, running_gateway(write_config(tmp_path, config(url, failure_threshold=2))) as gateway:
        async with Client(gateway.url) as client:
            for _ in range(3):  # errors the backend answered with: it is alive
                with pytest.raises(MCPError, match="quota spent"):
                    await client.call_tool("web_refuses", {})
            assert backend(gateway, "web")["circuit"]["state"] == "closed"
            garbled = await client.call_tool("web_garbled", {})
            assert garbled.is_error and text(garbled).startswith("backend 'web': Failed to parse JSON response")
            assert "HTTP 500" in text(await client.call_tool("web_boom", {}))
            circuit = backend(gateway, "web")["circuit"]
            assert circuit["state"] == "open" and "HTTP 500" in circuit["reason"], circuit
            refused = await client.call_tool("web_ok", {})
            assert refused.is_error and "circuit open" in refused.content[0].text  # type: ignore[union-attr]
