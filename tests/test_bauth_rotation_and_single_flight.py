"""Per-backend credentials over real transports: a header secret's file rotated while the gateway runs, and a
slow, refusing token endpoint met by a burst of callers.

The backend is a tiny MCP server (written below, run as its own process) that accepts a request only when its
`X-Api-Key` equals its key file's content at that moment; the token endpoint is a loopback HTTP server in this
process that counts the token-exchange requests it gets.
"""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest
from mcp import Client

from tests.support import (
    free_port,
    running_gateway,
    stop_process,
    wait_http,
    write_config,
)

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

BACKEND = '''
import sys
from pathlib import Path

import uvicorn
from mcp.server.mcpserver import MCPServer

server = MCPServer("keyed")
key_file = Path(sys.argv[2]) if len(sys.argv) > 2 else None


@server.tool()
def hello() -> str:
    """Says hello."""
    return "hello"


class KeyCheck:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and key_file is not None:
            sent = dict(scope["headers"]).get(b"x-api-key", b"").decode()
            if sent != key_file.read_text().strip():
                await send({"type": "http.response.start", "status": 401, "headers": []})
                await send({"type": "http.response.body", "body": b""})
                return
        await self.app(scope, receive, send)


uvicorn.run(KeyCheck(server.streamable_http_app()), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
'''


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@contextmanager
def keyed_backend(directory: Path, key_file: Path | None) -> Iterator[str]:
    script = directory / "keyed_backend.py"
    script.write_text(BACKEND)
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    command = [sys.executable, str(script), str(port)] + ([str(key_file)] if key_file is not None else [])
    proc = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    try:
        wait_http(url, expect=(400, 401, 405, 406), proc=proc)
        yield url
    finally:
        stop_process(proc)


async def hello(client: Client, tool: str = "keyed_hello") -> str:
    result = await client.call_tool(tool, {})
    assert not result.is_error, result
    return str(result.content[0].text)  # type: ignore[union-attr]


async def test_a_header_secret_file_rotated_while_serving_is_used_on_the_next_call(tmp_path: Path) -> None:
    backend_key, gateway_key = tmp_path / "backend.key", tmp_path / "gateway.key"
    for path in (backend_key, gateway_key):
        path.write_text("first-key-0123456789\n")
    with keyed_backend(tmp_path, backend_key) as url:
        auth = {"type": "header", "headers": {"X-Api-Key": {"file": str(gateway_key)}}}
        config = write_config(
            tmp_path, {"backends": [{"name": "keyed", "transport": "streamable-http", "url": url, "auth": auth}]}
        )
        with running_gateway(config) as gateway:
            async with Client(gateway.url) as client:
                assert await hello(client) == "hello"
                # The operator rotates the key: the backend takes only the new one from now on.
                for path in (backend_key, gateway_key):
                    path.write_text("second-key-0123456789\n")
                assert await hello(client) == "hello"
            assert "second-key" not in gateway.output() and "first-key" not in gateway.output()


class ExpiringTokenEndpoint(http.server.ThreadingHTTPServer):
    """Gives the gateway one token living `lifetime` s, then refuses every request after `delay` s."""

    lifetime = 2
    delay = 1.0

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _TokenHandler)
        self.requests = 0
        self.lock = threading.Lock()


class _TokenHandler(http.server.BaseHTTPRequestHandler):
    server: ExpiringTokenEndpoint

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with self.server.lock:
            self.server.requests += 1
            first = self.server.requests == 1
        if first:
            body = {"access_token": "service-token-0123456789", "token_type": "Bearer", "expires_in": 2}
            self._answer(200, body)
            return
        time.sleep(self.server.delay)
        self._answer(400, {"error": "invalid_client"})

    def _answer(self, status: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def token_endpoint() -> Iterator[ExpiringTokenEndpoint]:
    server = ExpiringTokenEndpoint()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


async def test_a_burst_of_calls_while_the_token_endpoint_is_slow_and_refusing_costs_one_token_request(
    tmp_path: Path,
) -> None:
    with token_endpoint() as endpoint, keyed_backend(tmp_path, None) as url:
        auth = {
            "type": "oauth_client_credentials",
            "token_url": f"http://127.0.0.1:{endpoint.server_address[1]}/token",
            "client_id": "vmcp",
            "client_secret": {"env": "VMCP_TEST_BAUTH_SECRET"},
            "refresh_before": 0,
        }
        backend = {"name": "keyed", "transport": "streamable-http", "url": url, "auth": auth}
        config = write_config(tmp_path, {"backends": [backend], "health": {"interval": 3600}})
        with running_gateway(config, env={"VMCP_TEST_BAUTH_SECRET": "client-secret-0123456789"}) as gateway:
            async with Client(gateway.url) as client:
                assert await hello(client) == "hello"
            assert endpoint.requests == 1
            await anyio.sleep(endpoint.lifetime + 0.2)  # the gateway's token has expired: each call needs a new one
            errors: list[str] = []

            async def call() -> None:
                async with Client(gateway.url) as client:
                    result = await client.call_tool("keyed_hello", {})
                    assert result.is_error
                    errors.append(str(result.content[0].text))  # type: ignore[union-attr]

            async with anyio.create_task_group() as group:
                for _ in range(4):
                    group.start_soon(call)
            # The callers waiting on the one request in flight share its refusal, each with the clear reason.
            assert endpoint.requests == 2
            assert len(errors) == 4
            reason = "backend 'keyed': token endpoint refused the client credentials: HTTP 400 invalid_client"
            assert all(reason in error for error in errors), errors
            assert "client-secret-0123456789" not in gateway.output()


async def test_a_token_due_for_refresh_but_not_expired_is_served_when_its_refresh_fails() -> None:
    from vmcp_opt.backends.errors import CredentialError
    from vmcp_opt.backends.token_client import Token, TokenCache

    cache = TokenCache(refresh_before=600)  # due for refresh at once (half its life), valid for 10 minutes

    async def first() -> Token:
        return Token("still-valid", time.monotonic() + 0.2 + 600)

    async def down() -> Token:
        raise CredentialError("api", "token endpoint unreachable", "ConnectError")

    assert await cache.get("k", first) == "still-valid"
    cache._tokens["k"] = Token("still-valid", time.monotonic() + 600, refresh_at=time.monotonic())
    assert await cache.get("k", down) == "still-valid"
    cache.invalidate("k")  # refused by the backend: never served again, the failure is the call's
    with pytest.raises(CredentialError, match="token endpoint unreachable"):
        await cache.get("k", down)
