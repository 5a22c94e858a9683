"""`backends[].auth.subject_token_type` (ToolHive's `tokenExchange.subjectTokenType`): the RFC 8693 type a
caller's token is exchanged as. A real OpenID provider signs the callers' tokens, a real gateway exchanges
them at a real token endpoint (an HTTP server here that records each request's form, as a token endpoint
that wants `jwt` would read it) for a real HTTP demo backend, driven by the SDK's client."""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.support import http_demo_backend, running_gateway, write_config
from tests.test_backend_credentials import issuer_process, token_for
from vmcp_opt.config import ConfigError, load_config

pytestmark = [pytest.mark.anyio]

JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ACCESS_TYPE = "urn:ietf:params:oauth:token-type:access_token"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@contextmanager
def recording_token_endpoint() -> Iterator[tuple[str, list[dict[str, str]]]]:
    """A token endpoint answering every grant with a token; yields its URL and the forms it was sent."""
    forms: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
            forms.append(dict(urllib.parse.parse_qsl(body)))
            answer = json.dumps({"access_token": f"issued-{len(forms)}", "token_type": "Bearer", "expires_in": 300})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(answer.encode())

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/token", forms
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _exchange(token_url: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "token_exchange",
        "token_url": token_url,
        "client_id": "gateway",
        "client_secret": {"env": "VMCP_TEST_GATEWAY_SECRET"},
        "audience": "notes-api",
        **extra,
    }


async def test_a_callers_token_is_exchanged_as_the_configured_subject_token_type(tmp_path: Path) -> None:
    with (
        issuer_process(tmp_path) as issuer,
        recording_token_endpoint() as (token_url, forms),
        http_demo_backend() as jwt_url,
        http_demo_backend() as plain_url,
    ):
        backends = [
            {"name": "jwtnotes", "transport": "streamable-http", "url": jwt_url},
            {"name": "notes", "transport": "streamable-http", "url": plain_url},
        ]
        backends[0]["auth"] = _exchange(token_url, subject_token_type="jwt")
        backends[1]["auth"] = _exchange(token_url)
        config = {"backends": backends, "auth": {"incoming": {"mode": "oauth", "oauth": {"issuer": issuer}}}}
        env = {"VMCP_TEST_GATEWAY_SECRET": "gateway-secret"}
        with running_gateway(write_config(tmp_path, config), env=env) as gateway:
            caller = token_for(issuer, "alice", gateway.url)
            http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {caller}"}, timeout=60)
            async with Client(streamable_http_client(gateway.url, http_client=http)) as client:  # type: ignore[arg-type]
                for tool in ("jwtnotes_save_note", "notes_save_note"):
                    result = await client.call_tool(tool, {"title": "t", "text": "x"})
                    assert not result.is_error, result
    exchanges = [form for form in forms if form.get("subject_token") == caller]
    assert [form["subject_token_type"] for form in exchanges] == [JWT_TYPE, ACCESS_TYPE]
    assert all(form["requested_token_type"] == ACCESS_TYPE for form in exchanges)


def test_subject_token_type_outside_token_exchange_is_refused_naming_the_field(tmp_path: Path) -> None:
    auth = {"type": "header", "headers": {"X-Key": {"env": "K"}}, "subject_token_type": "jwt"}
    backend = {"name": "b", "transport": "streamable-http", "url": "http://127.0.0.1:1/mcp", "auth": auth}
    path = tmp_path / "vmcp.yaml"
    path.write_text(json.dumps({"backends": [backend]}))
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert "backends[0].auth: `subject_token_type` is for type token_exchange" in str(refused.value)
