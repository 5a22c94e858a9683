"""CORS for browser MCP clients (`server.cors_origins`) on a real gateway with API keys: a web app's preflight
is answered without a credential, its answers carry `Access-Control-Allow-Origin` (its own origin) and expose
the session and auth headers; an origin not listed gets no CORS header, and one the Origin check refuses
stays refused (DNS-rebinding protection)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.support import (
    RAW_HEADERS,
    RAW_INITIALIZE,
    Gateway,
    api_keys_file,
    demo_backend,
    running_gateway,
    write_config,
)

pytestmark = [pytest.mark.slow]

APP = "https://app.example.com"
# Accepted by the Origin check (`allowed_origins`, loopback) but not allowed CORS.
SAME_ORIGIN_ONLY = ["https://proxy.example.com", "http://localhost:5173"]
EVIL = "https://evil.example.com"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, str]]:
    directory: Path = tmp_path_factory.mktemp("edge-cors")
    keys = api_keys_file(directory / "keys.json", {"alice": []})
    config = {
        "server": {"cors_origins": [APP], "allowed_origins": ["https://proxy.example.com"]},
        "backends": [demo_backend("notes")],
        "optimizer": {"enabled": False},
        "auth": {"incoming": {"mode": "api_keys", "api_keys": {"file": "keys.json"}}},
    }
    with running_gateway(write_config(directory, config)) as gateway:
        yield gateway, keys["alice"]


def preflight(gateway: Gateway, origin: str, request_headers: str) -> httpx2.Response:
    """What a browser sends before a cross-origin POST with these headers: no credential, no body."""
    headers = {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": request_headers,
    }
    return httpx2.request("OPTIONS", gateway.url, headers=headers, timeout=20)


def cors_headers(response: httpx2.Response) -> dict[str, str]:
    return {name: value for name, value in response.headers.items() if name.lower().startswith("access-control-")}


def listed(value: str) -> set[str]:
    return {part.strip().lower() for part in value.split(",")}


def test_a_web_apps_preflight_is_answered_without_a_credential(served: tuple[Gateway, str]) -> None:
    gateway, _ = served
    requested = (
        "authorization, content-type, mcp-session-id, mcp-protocol-version, mcp-method, mcp-name, mcp-param-region"
    )
    answer = preflight(gateway, APP, requested)
    assert answer.status_code == 204, answer.text  # not 401: a preflight never carries the credential
    assert answer.headers["access-control-allow-origin"] == APP
    assert listed(answer.headers["access-control-allow-methods"]) >= {"post", "get", "delete", "options"}
    assert listed(answer.headers["access-control-allow-headers"]) >= listed(requested) | {"last-event-id", "accept"}
    assert int(answer.headers["access-control-max-age"]) > 0
    assert "origin" in listed(answer.headers["vary"])
    assert "access-control-allow-credentials" not in answer.headers  # bearer headers, never cookies
    assert "auth: refused" not in gateway.output()


def test_a_web_apps_session_reads_its_id_and_the_auth_challenge(served: tuple[Gateway, str]) -> None:
    gateway, key = served
    headers = {**RAW_HEADERS, "Origin": APP, "Authorization": f"Bearer {key}"}
    opened = httpx2.post(gateway.url, json=RAW_INITIALIZE, headers=headers, timeout=20)
    assert opened.status_code == 200, opened.text
    assert opened.headers["access-control-allow-origin"] == APP
    assert "origin" in listed(opened.headers["vary"])
    exposed = listed(opened.headers["access-control-expose-headers"])
    assert exposed >= {"mcp-session-id", "mcp-protocol-version", "www-authenticate"}
    assert opened.headers["mcp-session-id"]

    refused = httpx2.post(gateway.url, json=RAW_INITIALIZE, headers={**RAW_HEADERS, "Origin": APP}, timeout=20)
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == APP  # so the page can read the challenge
    assert refused.headers["www-authenticate"].startswith("Bearer")


def test_an_sdk_client_sending_the_apps_origin_lists_and_calls_tools(served: tuple[Gateway, str]) -> None:
    """The SDK's client over the whole session (initialize, the GET stream, calls, DELETE) with the Origin a
    browser would add to each request."""
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    gateway, key = served

    async def session() -> tuple[list[str], Any]:
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}", "Origin": APP}, timeout=60)
        async with Client(streamable_http_client(gateway.url, http_client=http)) as client:  # type: ignore[arg-type]
            tools = await client.list_tools()
            result = await client.call_tool("notes_save_note", {"title": "cors", "text": "from a web app"})
            return [tool.name for tool in tools.tools], result

    names, result = asyncio.run(session())
    assert "notes_save_note" in names
    assert not result.is_error


@pytest.mark.parametrize("origin", SAME_ORIGIN_ONLY)
def test_an_origin_not_listed_for_cors_gets_no_cors_headers(served: tuple[Gateway, str], origin: str) -> None:
    gateway, key = served
    answer = preflight(gateway, origin, "authorization, content-type")
    assert answer.status_code == 403 and cors_headers(answer) == {}
    # Its requests are served as before (a page of the gateway's own origin, a proxy), without CORS headers.
    headers = {**RAW_HEADERS, "Origin": origin, "Authorization": f"Bearer {key}"}
    opened = httpx2.post(gateway.url, json=RAW_INITIALIZE, headers=headers, timeout=20)
    assert opened.status_code == 200, opened.text
    assert cors_headers(opened) == {}


def test_an_origin_the_origin_check_refuses_stays_refused_without_cors_headers(served: tuple[Gateway, str]) -> None:
    gateway, key = served
    answer = preflight(gateway, EVIL, "authorization, content-type")
    assert answer.status_code == 403 and answer.text.startswith("Invalid Origin header: ")
    assert cors_headers(answer) == {}
    headers = {**RAW_HEADERS, "Origin": EVIL, "Authorization": f"Bearer {key}"}
    refused = httpx2.post(gateway.url, json=RAW_INITIALIZE, headers=headers, timeout=20)
    assert refused.status_code == 403 and cors_headers(refused) == {}
    # A look-alike of the allowed origin (another port, a suffix) is another origin.
    for near in (f"{APP}:8443", f"{APP}.evil.example", "http://app.example.com"):
        assert cors_headers(preflight(gateway, near, "content-type")) == {}, near


def test_cors_origins_must_be_origins(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"server": {"cors_origins": ["*", "https://app.example.com/", "app.example.com"]}})
    done = subprocess.run(
        [sys.executable, "-m", "vmcp_opt", "validate", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert (
        "server.cors_origins: not an origin: '*', 'https://app.example.com/', 'app.example.com'; write scheme://host"
        in done.stderr
    )
