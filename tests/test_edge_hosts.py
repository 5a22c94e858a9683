"""The Host and Origin checks against what real clients and probes send: a gateway on the scheme's default port
is named without a port (`Host: localhost`, `Origin: http://localhost`), and an HTTP/1.0 health check may send
no Host at all. Neither weakens the DNS-rebinding protection: other names are still refused."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.support import RAW_HEADERS, RAW_INITIALIZE, Gateway, demo_backend, running_gateway, write_config

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    directory: Path = tmp_path_factory.mktemp("edge-hosts")
    with running_gateway(write_config(directory, {"backends": [demo_backend("notes")]})) as running:
        yield running


def raw_request(gateway: Gateway, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=20) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]"])
def test_a_loopback_host_without_a_port_is_this_gateway(gateway: Gateway, host: str) -> None:
    """What every client of `vmcp serve --port 80` sends; before, each was refused 421."""
    headers = {"Host": host, "Origin": f"http://{host}"}
    assert httpx2.get(f"{gateway.base}/healthz", headers=headers, timeout=20).status_code == 200
    opened = httpx2.post(gateway.url, json=RAW_INITIALIZE, headers={**RAW_HEADERS, **headers}, timeout=20)
    assert opened.status_code == 200, opened.text
    assert "mcp-session-id" in opened.headers


def test_other_hosts_and_origins_without_a_port_are_still_refused(gateway: Gateway) -> None:
    refused = httpx2.get(f"{gateway.base}/healthz", headers={"Host": "evil.example"}, timeout=20)
    # Whoever reaches the gateway by another name (a proxy, DNS) is told which setting lets it.
    assert refused.status_code == 421 and "server.allowed_hosts" in refused.text and "--allow-host" in refused.text
    refused = httpx2.get(f"{gateway.base}/healthz", headers={"Origin": "http://evil.example"}, timeout=20)
    assert refused.status_code == 403 and "server.allowed_origins" in refused.text
    assert httpx2.get(f"{gateway.base}/healthz", headers={"Host": "localhost.evil"}, timeout=20).status_code == 421


def test_an_http10_health_check_without_host_is_answered(gateway: Gateway) -> None:
    """HAProxy's `option httpchk GET /healthz` sends HTTP/1.0 and no Host; before, the replica looked down (421)."""
    for path in (b"/healthz", b"/readyz"):
        answer = raw_request(gateway, b"GET " + path + b" HTTP/1.0\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    # HTTP/1.1 requires a Host, and /mcp keeps the SDK's own check whatever the version.
    assert raw_request(gateway, b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n").startswith(b"HTTP/1.1 421")
    body = json.dumps(RAW_INITIALIZE).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in RAW_HEADERS.items()).encode()
    post = b"POST /mcp HTTP/1.0\r\n" + head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    answer = raw_request(gateway, post)
    assert answer.startswith(b"HTTP/1.1 421"), answer[:300]
