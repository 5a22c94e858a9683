"""Whose address a request is (`server.trusted_proxies`, issue 22 row 5): behind a real nginx on loopback,
and straight from a client that writes its own `X-Forwarded-For`.

The address decides the per-address session quota, the audit `source` and the refusal log line. Clients
come from distinct loopback addresses (127.0.0.2, 127.0.0.3: any 127.x.y.z is loopback on Linux).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.nginx_server import running_nginx
from tests.support import RAW_HEADERS, RAW_INITIALIZE, Gateway, demo_backend, running_gateway, write_config
from tests.test_http_limits import client_from, session_headers

pytestmark = [pytest.mark.slow]


@contextlib.contextmanager
def nginx_in_front_of(gateway: Gateway, directory: Path) -> Iterator[str]:
    """A real nginx on loopback proxying to the gateway, appending the peer to X-Forwarded-For; its /mcp URL."""
    with running_nginx(directory, [gateway.port]) as nginx:
        yield nginx.url


def initialize(client: httpx2.Client, url: str, forwarded_for: str | None = None) -> httpx2.Response:
    extra = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    return client.post(url, json=RAW_INITIALIZE, headers={**RAW_HEADERS, **extra})


def gateway_config(directory: Path, **server: object) -> Path:
    config = {
        "backends": [demo_backend("notes")],
        "server": server,
        "limits": {"max_sessions_per_address": 2},
        "telemetry": {"audit": {"enabled": True, "output": "audit.log"}},
    }
    return write_config(directory, config)


def audited_sources(directory: Path) -> set[str]:
    """The audit `source` of every tools/call, once the writer thread has written one."""
    audit = directory / "audit.log"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        lines = audit.read_text(encoding="utf-8").splitlines() if audit.exists() else []
        events = [json.loads(line) for line in lines if line.strip()]
        sources = {e["source"]["value"] for e in events if e["type"] == "mcp_tool_call"}
        if sources:
            return sources
        time.sleep(0.1)
    raise AssertionError("no tools/call was audited")


def call_a_tool(client: httpx2.Client, url: str) -> None:
    opened = initialize(client, url)
    assert opened.status_code == 200
    headers = session_headers(opened)
    client.post(url, headers=headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
    call = {"name": "notes_search_notes", "arguments": {"query": "x"}}
    answered = client.post(
        url, headers=headers, json={"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": call}
    )
    assert answered.status_code == 200 and '"isError":false' in answered.text.replace(" ", "")


def test_behind_a_trusted_proxy_each_client_has_its_own_address(tmp_path: Path) -> None:
    with running_gateway(gateway_config(tmp_path, trusted_proxies=["127.0.0.1"])) as gateway:
        with (
            nginx_in_front_of(gateway, tmp_path / "nginx") as url,
            client_from("127.0.0.2") as first,
            client_from("127.0.0.3") as second,
        ):
            assert [initialize(first, url).status_code for _ in range(2)] == [200, 200]
            assert initialize(first, url).status_code == 429
            # A client cannot step out of its quota by naming another address: nginx appends the one it saw.
            assert initialize(first, url, forwarded_for="198.51.100.7").status_code == 429
            call_a_tool(second, url)  # another client behind the same proxy has a quota of its own
        # Straight from the trusted address, the header is believed; its detail is not loopback's.
        with client_from("127.0.0.1") as proxy_like:
            headers = {"Host": f"127.0.0.1:{gateway.port}", "X-Forwarded-For": "203.0.113.9"}
            readyz = proxy_like.get(f"{gateway.base}/readyz", headers=headers).json()
            assert "backends" not in readyz
    assert audited_sources(tmp_path) == {"127.0.0.3"}
    assert "refused a new session from 127.0.0.2" in gateway.output()


def test_without_trusted_proxies_forwarded_for_is_ignored(tmp_path: Path) -> None:
    with running_gateway(gateway_config(tmp_path)) as gateway:
        url = gateway.url
        with client_from("127.0.0.1") as local:
            opened = [initialize(local, url, forwarded_for=f"203.0.113.{n}").status_code for n in range(3)]
            assert opened == [200, 200, 429]  # a local client cannot name itself out of the loopback quota
        with (
            nginx_in_front_of(gateway, tmp_path / "nginx") as proxied,
            client_from("127.0.0.2") as first,
            client_from("127.0.0.3") as second,
        ):
            # Behind an untrusted proxy every client is the proxy's address (127.0.0.1), whose quota is used up.
            assert initialize(first, proxied).status_code == 429
            assert initialize(second, proxied).status_code == 429
        with client_from("127.0.0.4") as direct:
            call_a_tool(direct, url)
    assert audited_sources(tmp_path) == {"127.0.0.4"}
    assert "203.0.113" not in gateway.output()
