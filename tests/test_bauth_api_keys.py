"""An API key is the gateway's own secret: a caller who presents one has no token a backend's token exchange
may send on. Before, the key went to the token endpoint as the RFC 8693 `subject_token`."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support import api_keys_file, bearer_client, http_demo_backend, running_gateway, write_config

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@contextmanager
def refusing_token_endpoint() -> Iterator[tuple[str, list[bytes]]]:
    """A token endpoint that grants the gateway's own client credentials (its shared session lists the
    backend with them) and refuses every exchange: its URL and the exchange requests' bodies."""
    posted: list[bytes] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            form = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            granted = b"grant_type=client_credentials" in form
            if not granted:
                posted.append(form)
            answer = {"access_token": "service-token", "token_type": "Bearer", "expires_in": 300}
            body = json.dumps(answer if granted else {"error": "invalid_grant"}).encode()
            self.send_response(200 if granted else 400)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/token", posted
    finally:
        server.shutdown()
        server.server_close()


async def test_an_api_key_caller_has_no_token_to_exchange_and_the_key_never_leaves(tmp_path: Path) -> None:
    keys = api_keys_file(tmp_path / "keys.json", {"alice": ["dev"]})
    with refusing_token_endpoint() as (token_url, posted), http_demo_backend() as url:
        exchange = {
            "type": "token_exchange",
            "token_url": token_url,
            "client_id": "gateway",
            "client_secret": {"env": "VMCP_TEST_GATEWAY_SECRET"},
            "audience": url,
            "resource": url,
        }
        config = {
            "backends": [{"name": "alpha", "transport": "streamable-http", "url": url, "auth": exchange}],
            "auth": {"incoming": {"mode": "api_keys", "api_keys": {"file": "keys.json"}}},
        }
        env = {"VMCP_TEST_GATEWAY_SECRET": "gateway-secret-0123456789"}
        with running_gateway(write_config(tmp_path, config), env=env) as gateway:
            async with bearer_client(gateway.url, keys["alice"]) as alice:
                refused = await alice.call_tool("alpha_whoami", {})
            text = " ".join(getattr(part, "text", "") for part in refused.content)
            output = gateway.output()
    assert refused.is_error and "presented no token to exchange" in text, text
    assert not any(keys["alice"].encode() in body for body in posted), posted
    assert keys["alice"] not in output
