"""`/healthz` and `/readyz` answered to an address that holds its whole `limits.max_connections_per_address`.

Found by review R3 (session 31): in Kubernetes the kubelet's probes often come from the address client traffic
comes from (same-node SNAT, a hostNetwork ingress not in `server.trusted_proxies`); 50 clients each holding a GET
stream and a kept-alive POST connection got `/healthz` and `/readyz` answered 429, and the kubelet restarted a healthy
pod. Past its address's share a connection now takes one of the `PROBE_HEADROOM` probe slots, as past the total cap:
one probe is served on it, anything else gets the address's 429, as before.

A real gateway process; the address's connections are raw sockets that never finish their headers (the header
deadline is long, so nothing waits on it), made one after another so the gateway accepts them in order. Each test
uses addresses of its own, apart from the harness's 127.0.0.1.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.support import RAW_HEADERS, RAW_INITIALIZE, Gateway, demo_backend, running_gateway, write_config
from vmcp_opt.server.connections import PROBE_SLOTS_PER_ADDRESS

PER_ADDRESS = 4
HOLD = b"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n"  # a client's connection, its head never finished
PROBE_START = b"GET /heal"  # a probe slot's: its request line not yet complete
ADDRESS_BUSY = "Too many open connections from this address (limits.max_connections_per_address); close some first"


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    """One per test: each starts with no connection held (closing a test's sockets races its successor's)."""
    limits = {"max_connections_per_address": PER_ADDRESS, "http_header_timeout": 60}
    config = {"backends": [demo_backend("notes")], "limits": limits}
    with running_gateway(write_config(tmp_path, config)) as running:
        yield running


def connect(gateway: Gateway, source: str, head: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=30, source_address=(source, 0))
    if head:
        sock.sendall(head)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Until the gateway closes the connection (after each answer here: a probe slot is not kept alive)."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def raw_exchange(gateway: Gateway, source: str, request: bytes) -> bytes:
    with connect(gateway, source, request) as sock:
        return read_all(sock)


def probe(gateway: Gateway, method: str, path: str) -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{gateway.port}\r\n\r\n".encode()


def client_from(address: str) -> httpx2.Client:
    return httpx2.Client(transport=httpx2.HTTPTransport(local_address=address), timeout=30)


def test_probes_are_answered_from_an_address_holding_its_share_and_its_other_requests_refused(
    gateway: Gateway,
) -> None:
    address = "127.0.0.3"
    held = [connect(gateway, address, HOLD) for _ in range(PER_ADDRESS)]
    try:
        health = raw_exchange(gateway, address, probe(gateway, "GET", "/healthz"))
        assert health.startswith(b"HTTP/1.1 200"), health
        assert b"connection: close" in health.lower()  # a probe slot is not kept alive
        assert raw_exchange(gateway, address, probe(gateway, "HEAD", "/healthz")).startswith(b"HTTP/1.1 200")
        with client_from(address) as client:
            ready = client.get(f"{gateway.base}/readyz")
            assert ready.status_code in (200, 503) and "status" in ready.json(), ready.text  # readiness, not the cap
            refused = client.post(gateway.url, json=RAW_INITIALIZE, headers=RAW_HEADERS)
        # Anything but a probe gets the address's refusal, exactly as before.
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1", refused.text
        assert refused.json()["error"] == {
            "code": refused.json()["error"]["code"],
            "message": ADDRESS_BUSY,
            "data": {"limit": "limits.max_connections_per_address"},
        }
        post_health = raw_exchange(gateway, address, probe(gateway, "POST", "/healthz"))
        assert post_health.startswith(b"HTTP/1.1 429") and ADDRESS_BUSY.encode() in post_health
        # One answer per probe slot: a second request pipelined behind the first is not served.
        twice = raw_exchange(gateway, address, probe(gateway, "GET", "/healthz") * 2)
        assert twice.count(b"HTTP/1.1 ") == 1 and twice.startswith(b"HTTP/1.1 200"), twice
    finally:
        for sock in held:
            sock.close()
    assert "Traceback" not in gateway.output()


def test_past_the_headroom_a_connection_over_its_address_share_is_refused_at_once(gateway: Gateway) -> None:
    address = "127.0.0.5"
    held = [connect(gateway, address, HOLD) for _ in range(PER_ADDRESS)]
    slots = [
        connect(gateway, address, PROBE_START) for _ in range(PROBE_SLOTS_PER_ADDRESS)
    ]  # the address's probe slots, pending
    try:
        # No slot left: refused before it sends anything, with the address's 429.
        with connect(gateway, address) as beyond:
            answer = read_all(beyond)
        assert answer.startswith(b"HTTP/1.1 429") and ADDRESS_BUSY.encode() in answer, answer
        # The pending slots count toward no address's share: another address is served as usual.
        with client_from("127.0.0.6") as client:
            assert client.get(f"{gateway.base}/healthz").status_code == 200
        # A pending slot whose request line turns out a probe is served.
        slots[0].sendall(f"thz HTTP/1.1\r\nHost: 127.0.0.1:{gateway.port}\r\n\r\n".encode())
        served = read_all(slots[0])
        assert served.startswith(b"HTTP/1.1 200"), served
    finally:
        for sock in held + slots:
            sock.close()
    assert "Traceback" not in gateway.output()
