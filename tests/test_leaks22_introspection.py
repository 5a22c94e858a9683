"""Made-up opaque tokens cost the authorization server a bounded number of introspection requests, however many a
client sends; a valid token keeps working meanwhile.

A random token is new every time, so the negative cache never holds it: without a bound each one was an
introspection request, and a client made the gateway hammer the issuer at its own request rate. The issuer here
is a tiny local HTTP server counting what it is asked; the gateway re-checks the valid token on every request
(`introspection_cache: 0`), so those re-checks happen in the middle of the flood.
"""

from __future__ import annotations

import http.server
import json
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx2
import pytest

from tests.support import RAW_HEADERS, RAW_INITIALIZE, demo_backend, running_gateway, write_config

pytestmark = pytest.mark.slow

ISSUER = "http://127.0.0.1:9/issuer"  # never fetched: the JWKS and introspection endpoints are configured
RESOURCE = "http://vmcp.test/mcp"
VALID = "valid-opaque-token-" + "a" * 32
SECRET = "gateway-secret-0123456789abcdef"
RATE, BURST = 1.0, 5


@contextmanager
def counting_issuer() -> Iterator[tuple[str, list[str]]]:
    """An introspection endpoint (and an empty JWKS): `VALID` is active for this gateway, any other token is
    not. Its base URL, and the tokens it was asked about, in order."""
    asked: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._answer({"keys": []})

        def do_POST(self) -> None:
            form = parse_qs(self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode())
            token = form.get("token", [""])[0]
            asked.append(token)
            if token == VALID:
                self._answer({"active": True, "sub": "alice", "aud": RESOURCE, "exp": int(time.time()) + 3600})
            else:
                self._answer({"active": False})

        def _answer(self, document: dict[str, Any]) -> None:
            body = json.dumps(document).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", asked
    finally:
        server.shutdown()
        server.server_close()


def gateway_config(directory: Path, issuer: str) -> Path:
    oauth = {
        "issuer": ISSUER,
        "resource": RESOURCE,
        "jwks_url": f"{issuer}/keys",
        "introspection_url": f"{issuer}/introspect",
        "client_id": "gateway",
        "client_secret_env": "VMCP_TEST_SECRET",
        "introspection_cache": 0,
        "introspection_rate": RATE,
        "introspection_burst": BURST,
    }
    config = {"backends": [demo_backend("notes")], "auth": {"incoming": {"mode": "oauth", "oauth": oauth}}}
    return write_config(directory, config)


def bearer(token: str) -> dict[str, str]:
    return RAW_HEADERS | {"Authorization": f"Bearer {token}"}


def test_random_opaque_tokens_cost_the_issuer_a_bounded_number_of_requests(tmp_path: Path) -> None:
    with (
        counting_issuer() as (issuer, asked),
        running_gateway(gateway_config(tmp_path, issuer), env={"VMCP_TEST_SECRET": SECRET}) as gateway,
        httpx2.Client(timeout=30) as client,
    ):
        opened = client.post(gateway.url, json=RAW_INITIALIZE, headers=bearer(VALID))
        assert opened.status_code == 200, opened.text
        session = {"mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
        refusals: dict[int, int] = {}
        pings = 0
        started = time.monotonic()
        for n in range(200):
            made_up = client.post(gateway.url, json=RAW_INITIALIZE, headers=bearer(secrets.token_urlsafe(32)))
            assert made_up.status_code in (401, 503), made_up.text
            refusals[made_up.status_code] = refusals.get(made_up.status_code, 0) + 1
            if made_up.status_code == 503:  # said so, and retryable: the token may be a valid one
                assert made_up.json()["error"] == "temporarily_unavailable", made_up.text
                assert "introspection_rate" in made_up.json()["error_description"], made_up.text
            if n % 10 == 0:
                ping = {"jsonrpc": "2.0", "id": n, "method": "ping"}
                answer = client.post(gateway.url, json=ping, headers=bearer(VALID) | session)
                assert answer.status_code == 200 and answer.json()["result"] == {}, answer.text
                pings += 1
        elapsed = time.monotonic() - started

        unknown = [token for token in asked if token != VALID]
        assert len(unknown) <= BURST + RATE * elapsed + 1, (len(unknown), elapsed, refusals)
        assert refusals.get(503, 0) >= 200 - len(unknown)
        assert asked.count(VALID) >= 1 + pings  # the valid token was asked about again in the flood, and passed
        assert "Traceback" not in gateway.output()
