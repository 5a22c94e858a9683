"""A backend token fetch (`auth.type: oauth_client_credentials`) is bounded as a whole by `auth.timeout`: its
discovery and its token request together, and every caller waiting on it.

The authorization server is a loopback HTTP server in this process whose answers wait on a gate the test
controls: closed, its RFC 8414 metadata and its token endpoint never answer (its OpenID metadata always does). The
backend is a small MCP server run as its own process that accepts only the token that server issues.
"""

from __future__ import annotations

import base64
import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from tests.support import (
    GatedServer,
    JsonAnswers,
    demo_backend,
    free_port,
    gated,
    running_gateway,
    stop_process,
    wait_http,
    write_config,
)

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

SECRET = "refresh23-client-secret-0123456789"
TOKEN = "refresh23-access-token-0123456789"
RFC8414 = "/.well-known/oauth-authorization-server"
OPENID = "/.well-known/openid-configuration"
POLL_DEADLINE = 60.0  # seconds a poll for a state the gateway reaches by itself may take, under load

BACKEND = '''
import sys

import uvicorn
from mcp.server.mcpserver import MCPServer

server = MCPServer("bearer")
expected = b"Bearer " + sys.argv[2].encode()


@server.tool()
def hello() -> str:
    """Says hello."""
    return "hello"


class BearerCheck:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and dict(scope["headers"]).get(b"authorization") != expected:
            await send({"type": "http.response.start", "status": 401, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        await self.app(scope, receive, send)


uvicorn.run(BearerCheck(server.streamable_http_app()), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
'''


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class GatedIssuer(GatedServer):
    """Issues `TOKEN` living `lifetime` s; while `gate` is closed its RFC 8414 metadata and token endpoint hold
    every request unanswered. Counts the requests by path."""

    def __init__(self) -> None:
        super().__init__(_IssuerHandler)
        self.lifetime = 3600


class _IssuerHandler(JsonAnswers):
    server: GatedIssuer

    def do_GET(self) -> None:
        self._count()
        if self.path == RFC8414:
            self._held()
        if self.path in (RFC8414, OPENID):
            self._answer(200, {"issuer": self.server.base, "token_endpoint": f"{self.server.base}/token"})
        else:
            self._answer(404, {})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self._count()
        if self.headers.get("Authorization") != "Basic " + base64.b64encode(f"vmcp:{SECRET}".encode()).decode():
            self._answer(401, {"error": "invalid_client"})
            return
        self._held()
        self._answer(200, {"access_token": TOKEN, "token_type": "Bearer", "expires_in": self.server.lifetime})

    def _count(self) -> None:
        with self.server.lock:
            self.server.asked[self.path] += 1

    def _held(self) -> None:
        # Bounded only so that a stray thread ends with the test; a gateway never waits this long.
        self.server.gate.wait(timeout=300)


def gated_issuer() -> contextlib.AbstractContextManager[GatedIssuer]:
    return gated(GatedIssuer())


@contextmanager
def bearer_backend(directory: Path) -> Iterator[str]:
    script = directory / "bearer_backend.py"
    script.write_text(BACKEND)
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    proc = subprocess.Popen([sys.executable, str(script), str(port), TOKEN], stderr=subprocess.DEVNULL)
    try:
        wait_http(url, expect=(401,), proc=proc)
        yield url
    finally:
        stop_process(proc)


def gateway_config(issuer: str, url: str) -> dict[str, Any]:
    auth = {
        "type": "oauth_client_credentials",
        "issuer": issuer,
        "client_id": "vmcp",
        "client_secret": {"env": "REFRESH23_SECRET"},
        "timeout": 1,
        "refresh_before": 0,
    }
    return {
        "backends": [
            {"name": "bearer", "transport": "streamable-http", "url": url, "auth": auth},
            demo_backend("other"),
        ],
        "health": {"interval": 3600},
        "failure": {"restart": {"initial_delay": 0.2, "max_delay": 1}},
    }


def bearer_error(base: str, needle: str, timeout: float = 60.0) -> str:
    """The `bearer` backend's `last_error` in /readyz once it holds `needle` (or the last one seen)."""
    deadline = time.monotonic() + timeout
    error = ""
    while time.monotonic() < deadline:
        backends = httpx2.get(f"{base}/readyz", timeout=5).json()["backends"]
        error = str(next(b for b in backends if b["name"] == "bearer").get("last_error"))
        if needle in error:
            break
        time.sleep(0.1)
    return error


def text_of(result: Any) -> str:
    return " ".join(getattr(part, "text", "") for part in result.content)


async def first_answer(client: Client, tool: str, *, is_error: bool) -> str:
    """Call `tool` until it answers with `is_error` (the backend reconnecting, its token expiring); that answer.
    Until the backend has connected its tool is unknown."""
    with anyio.fail_after(POLL_DEADLINE):
        while True:
            try:
                result = await client.call_tool(tool, {})
            except MCPError as exc:
                if "Unknown tool" not in str(exc):
                    raise
            else:
                if bool(result.is_error) == is_error:
                    return text_of(result)
            await anyio.sleep(0.1)


UNREACHABLE = "backend 'bearer': token endpoint unreachable: no answer within 1s (auth.timeout)"


async def test_a_slow_authorization_server_is_one_deadline_for_the_whole_fetch_and_the_next_call_recovers(
    tmp_path: Path,
) -> None:
    with gated_issuer() as issuer, bearer_backend(tmp_path) as url:
        config = write_config(tmp_path, gateway_config(issuer.base, url))
        with running_gateway(config, env={"REFRESH23_SECRET": SECRET}, wait_ready=False) as gateway:
            # Discovery's first request never answers: it takes the fetch's whole deadline, so nothing more is
            # asked under it (one timeout per request went on to the OpenID metadata and the token endpoint).
            error = bearer_error(gateway.base, "token endpoint unreachable")
            assert UNREACHABLE in error
            assert issuer.asked[RFC8414] >= 1
            assert issuer.asked[OPENID] == 0 and issuer.asked["/token"] == 0, issuer.asked
            assert SECRET not in error and issuer.base not in error

            async with Client(gateway.url) as client:
                assert not (await client.call_tool("other_search_notes", {"query": "x"})).is_error
                issuer.gate.set()  # the authorization server recovers: the backend connects and serves
                assert await first_answer(client, "bearer_hello", is_error=False) == "hello"
            assert SECRET not in gateway.output() and TOKEN not in gateway.output()


async def test_a_call_waiting_on_a_refresh_that_never_answers_gets_a_clear_error_and_the_next_call_succeeds(
    tmp_path: Path,
) -> None:
    with gated_issuer() as issuer, bearer_backend(tmp_path) as url:
        issuer.gate.set()
        issuer.lifetime = 1  # the token the gateway connects with expires a second later
        config = write_config(tmp_path, gateway_config(issuer.base, url))
        with running_gateway(config, env={"REFRESH23_SECRET": SECRET}) as gateway:
            async with Client(gateway.url) as client:
                issuer.gate.clear()
                issuer.lifetime = 3600
                # Calls succeed until the token expires; the first after, waiting on a refresh never answered,
                # gets the clear error at the fetch's deadline, and so do the calls waiting with it.
                errors: list[str] = []

                async def waiting() -> None:
                    errors.append(await first_answer(client, "bearer_hello", is_error=True))

                async with anyio.create_task_group() as group:
                    for _ in range(3):
                        group.start_soon(waiting)
                assert all(UNREACHABLE in error for error in errors), errors
                assert not any(SECRET in error or TOKEN in error or issuer.base in error for error in errors)
                # The gateway serves its other backends meanwhile.
                assert not (await client.call_tool("other_search_notes", {"query": "x"})).is_error

                issuer.gate.set()  # the provider recovers: nothing of the cut-off fetch is left, the next call works
                result = await client.call_tool("bearer_hello", {})
                assert not result.is_error, text_of(result)
            assert SECRET not in gateway.output() and TOKEN not in gateway.output()


async def test_callers_are_answered_from_the_still_valid_token_while_its_refresh_hangs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vmcp_opt.backends.credentials import SERVICE_KEY, BackendCredentials
    from vmcp_opt.backends.token_client import Token
    from vmcp_opt.config import BackendConfig

    with gated_issuer() as issuer:
        auth = {**gateway_config(issuer.base, "")["backends"][0]["auth"], "timeout": 3600}
        backend = BackendConfig.model_validate(
            {"name": "bearer", "transport": "streamable-http", "url": "http://127.0.0.1:9/mcp", "auth": auth}
        )
        monkeypatch.setenv("REFRESH23_SECRET", SECRET)
        credentials = BackendCredentials(backend, tmp_path)
        issuer.gate.set()
        assert await credentials.token(None) == TOKEN  # discovery done, as at the backend's connection
        issuer.gate.clear()
        # Due for refresh, valid ten more minutes: no real token endpoint says when a refresh is due, so it is set.
        now = time.monotonic()
        credentials.cache._tokens[SERVICE_KEY] = Token("still-valid", now + 600, refresh_at=now)
        async with anyio.create_task_group() as group:
            refreshed: list[str] = []

            async def refresh() -> None:
                refreshed.append(await credentials.token(None))

            group.start_soon(refresh)
            with anyio.fail_after(30):
                while issuer.asked["/token"] < 2:  # noqa: ASYNC110 - the issuer is another thread
                    await anyio.sleep(0.02)
                # The refresh waits on the token endpoint; callers meanwhile are not held by it.
                assert await credentials.token(None) == "still-valid"
                assert await credentials.token(None) == "still-valid"
            issuer.gate.set()
        assert refreshed == [TOKEN]
        assert credentials.fresh(None) == TOKEN
