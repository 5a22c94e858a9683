"""A burst of parallel calls from one caller whose token the authorization server refuses to exchange costs one
token request, not one per call: the calls share the refusal, each with its clear reason.

Real processes and transports: the gateway (`vmcp serve`, incoming OAuth), the demo backend over streamable
HTTP behind a `token_exchange` credential, an MCP client with a signed JWT; the authorization server is a
loopback HTTP server in this process that publishes its JWKS, grants the gateway's own client credentials,
refuses every exchange (slowly, so the calls pile up behind the first) and counts the exchanges it gets.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.support import http_demo_backend, running_gateway, write_config
from tests.test_auth_e2e import private_jwk

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

CALLS = 10
REFUSAL_DELAY = 0.5  # seconds the server takes to refuse an exchange: the burst waits behind the first one
SECRET = "gateway-secret-0123456789"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class AuthorizationServer:
    url: str
    key: rsa.RSAPrivateKey
    exchanges: list[bytes] = field(default_factory=list)  # the exchange requests' bodies, in order

    def token(self, audience: str, issued_at: int | None = None) -> str:
        now = issued_at or int(time.time())
        claims = {"iss": self.url, "sub": "alice", "aud": audience, "iat": now, "exp": now + 300}
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": "k1"})


@contextmanager
def authorization_server() -> Iterator[AuthorizationServer]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = {k: v for k, v in private_jwk(key, "k1").items() if k in ("kty", "n", "e", "kid", "alg", "use")}
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._answer(200, {"keys": [public]})

        def do_POST(self) -> None:
            form = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if b"grant_type=client_credentials" in form:  # the gateway's own session (listing)
                self._answer(200, {"access_token": "service-token", "token_type": "Bearer", "expires_in": 300})
                return
            with lock:
                server.exchanges.append(form)
            time.sleep(REFUSAL_DELAY)
            self._answer(400, {"error": "invalid_grant"})

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    http_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server = AuthorizationServer(f"http://127.0.0.1:{http_server.server_address[1]}", key)
    threading.Thread(target=http_server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        http_server.shutdown()
        http_server.server_close()


async def test_a_burst_of_calls_with_a_refused_token_costs_one_exchange(tmp_path: Any) -> None:
    with authorization_server() as issuer, http_demo_backend() as url:
        exchange = {
            "type": "token_exchange",
            "token_url": f"{issuer.url}/token",
            "client_id": "gateway",
            "client_secret": {"env": "VMCP_TEST_GATEWAY_SECRET"},
            "audience": url,
        }
        config = {
            "backends": [{"name": "alpha", "transport": "streamable-http", "url": url, "auth": exchange}],
            "auth": {"incoming": {"mode": "oauth", "oauth": {"issuer": issuer.url, "jwks_url": f"{issuer.url}/jwks"}}},
            "health": {"interval": 3600},
        }
        with running_gateway(write_config(tmp_path, config), env={"VMCP_TEST_GATEWAY_SECRET": SECRET}) as gateway:
            token = issuer.token(gateway.url)
            http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60)
            async with Client(streamable_http_client(gateway.url, http_client=http)) as client:  # type: ignore[arg-type]
                errors = await burst(client)
                burst_exchanges = len(issuer.exchanges)
                # The caller's client refreshes its token: the new one is tried at once, not refused from memory.
                renewed = issuer.token(gateway.url, issued_at=int(time.time()) + 1)
                http.headers["Authorization"] = f"Bearer {renewed}"
                errors += await burst(client)
            output = gateway.output()
    assert len(errors) == 2 * CALLS
    reason = "backend 'alpha': token exchange refused: HTTP 400 invalid_grant"
    assert all(reason in error for error in errors), errors
    assert burst_exchanges == 1, f"{burst_exchanges} exchange requests for {CALLS} calls with one token"
    assert len(issuer.exchanges) == 2
    assert token not in output and renewed not in output and SECRET not in output


async def burst(client: Client) -> list[str]:
    """`CALLS` parallel calls of the backend's tool, each refused: their error texts."""
    errors: list[str] = []

    async def call() -> None:
        result = await client.call_tool("alpha_whoami", {})
        assert result.is_error
        errors.append(" ".join(getattr(part, "text", "") for part in result.content))

    async with anyio.create_task_group() as group:
        for _ in range(CALLS):
            group.start_soon(call)
    return errors
