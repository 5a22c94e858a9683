"""`/healthz` and `/readyz` answered while clients hold every connection of `limits.max_connections`.

Found by review R6: four addresses held all 250 connections with idle GET streams, and `/healthz` answered 503
(the cap refuses a connection before reading its path), so a liveness probe would restart a healthy pod. Past the
cap, `PROBE_HEADROOM` connections more may each serve one probe; anything else gets the cap's 503, as before.

A real gateway process, its connections held by raw sockets that never finish their headers (the header deadline
is long, so nothing here waits on it); connections are made one after another, so the gateway accepts them in order.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.support import RAW_HEADERS, RAW_INITIALIZE, Gateway, demo_backend, running_gateway, write_config
from vmcp_opt.server.connections import PROBE_HEADROOM, PROBE_SLOTS_PER_ADDRESS

MAX_CONNECTIONS = 10
BUSY = b"Too many open connections (limits.max_connections)"
HOLD = b"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n"  # a regular connection's unfinished head
PROBE_START = b"GET /heal"  # a probe slot's: its request line never completes


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    """One per test: each starts with no connection held (closing a test's sockets races its successor's)."""
    limits = {"max_connections": MAX_CONNECTIONS, "http_header_timeout": 60, "max_connections_per_address": 100}
    config = {"backends": [demo_backend("notes")], "limits": limits}
    with running_gateway(write_config(tmp_path, config)) as running:
        yield running


def idle_connection(gateway: Gateway, source: str, head: bytes) -> socket.socket:
    """A connection that sends `head`, the start of a request, and never finishes it."""
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=30, source_address=(source, 0))
    sock.sendall(head)
    return sock


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def raw_exchange(gateway: Gateway, request: bytes) -> bytes:
    """What the gateway answers `request` on a fresh connection, until it closes the connection."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
        sock.sendall(request)
        return read_all(sock)


def probe_request(gateway: Gateway, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{gateway.port}\r\n\r\n".encode()


def test_health_and_readiness_are_answered_when_every_connection_is_held(gateway: Gateway) -> None:
    held = [idle_connection(gateway, f"127.0.0.{2 + n % 4}", HOLD) for n in range(MAX_CONNECTIONS)]  # four addresses
    try:
        health = httpx2.get(f"{gateway.base}/healthz", timeout=30)
        assert health.status_code == 200 and health.json() == {"status": "ok"}
        assert health.headers["connection"] == "close"  # a probe slot is not kept alive
        assert httpx2.get(f"{gateway.base}/readyz", timeout=30).status_code == 200
        # Anything else past the cap gets the cap's refusal, as before.
        refused = httpx2.post(gateway.url, json=RAW_INITIALIZE, headers=RAW_HEADERS, timeout=30)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["data"]["limit"] == "limits.max_connections"
        post_health = raw_exchange(
            gateway, f"POST /healthz HTTP/1.1\r\nHost: 127.0.0.1:{gateway.port}\r\n\r\n".encode()
        )
        assert post_health.startswith(b"HTTP/1.1 503") and BUSY in post_health
        # One answer per probe connection: a second request pipelined behind the first is not served.
        twice = raw_exchange(gateway, probe_request(gateway, "/healthz") * 2)
        assert twice.count(b"HTTP/1.1 ") == 1 and twice.startswith(b"HTTP/1.1 200")
    finally:
        for sock in held:
            sock.close()
    # Each refusal is written once (a second, after our FIN, raised "write() after write_eof()" per header).
    assert "Traceback" not in gateway.output()


def test_the_headroom_holds_at_most_its_constant_of_idle_connections(gateway: Gateway) -> None:
    held = [idle_connection(gateway, "127.0.0.7", HOLD) for _ in range(MAX_CONNECTIONS)]
    # The probe slots, held idle: two addresses, as one may hold only PROBE_SLOTS_PER_ADDRESS of them.
    extra = [
        idle_connection(gateway, f"127.0.0.{10 + n // PROBE_SLOTS_PER_ADDRESS}", PROBE_START)
        for n in range(PROBE_HEADROOM)
    ]
    try:
        # Past the cap and the headroom, a connection is refused at once, before it sends anything: probes too.
        beyond = socket.create_connection(("127.0.0.1", gateway.port), timeout=30, source_address=("127.0.0.9", 0))
        with beyond:
            answer = read_all(beyond)
        assert answer.startswith(b"HTTP/1.1 503") and BUSY in answer
        assert raw_exchange(gateway, probe_request(gateway, "/healthz")).startswith(b"HTTP/1.1 503")
        # The probe slots are held, unanswered, until the header deadline (the same as any connection's).
        for sock in extra:
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)
    finally:
        for sock in held + extra:
            sock.close()
