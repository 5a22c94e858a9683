"""One client address cannot hold every probe slot past the connection caps (`PROBE_SLOTS_PER_ADDRESS`).

Found by review (session 32): past `limits.max_connections` (or an address's share) `PROBE_HEADROOM` connections
more may each serve one probe, and one address could take all of them and hold them idle until the header deadline;
the kubelet's probes from another address were then answered 503 (or 429) and a healthy pod restarted. Also: a
connection over both caps was refused 503 at connect but 429 once judged; now 429 (its address's share) both ways.

A real gateway process per test; held connections are raw sockets that never finish their headers (the header
deadline is long, so nothing waits on it), made one after another so the gateway accepts them in order. Each test
uses addresses of its own, apart from the harness's 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.support import Gateway, demo_backend, running_gateway, wait_until, write_config
from vmcp_opt.server.connections import PROBE_HEADROOM, PROBE_SLOTS_PER_ADDRESS

HOLD = b"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n"  # a client's connection, its head never finished
PROBE_START = b"GET /heal"  # a probe slot's: its request line not yet complete
BUSY = b"Too many open connections (limits.max_connections)"
ADDRESS_BUSY = b"Too many open connections from this address (limits.max_connections_per_address)"


@contextlib.contextmanager
def gateway_with(tmp_path: Path, **limits: Any) -> Iterator[Gateway]:
    config = {"backends": [demo_backend("notes")], "limits": {"http_header_timeout": 60, **limits}}
    with running_gateway(write_config(tmp_path, config)) as running:
        yield running


@pytest.fixture
def capped(tmp_path: Path) -> Iterator[Gateway]:
    """Past the total cap only: four connections in all, an address's share out of reach."""
    with gateway_with(tmp_path, max_connections=4, max_connections_per_address=100) as running:
        yield running


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[Gateway]:
    """Past an address's share only: two connections per address, the total out of reach."""
    with gateway_with(tmp_path, max_connections_per_address=2) as running:
        yield running


@pytest.fixture
def both(tmp_path: Path) -> Iterator[Gateway]:
    """Both caps within reach: two addresses' shares fill the total."""
    with gateway_with(tmp_path, max_connections=4, max_connections_per_address=2) as running:
        yield running


@contextlib.contextmanager
def connections(gateway: Gateway, source: str, count: int, head: bytes = b"") -> Iterator[list[socket.socket]]:
    """`count` connections from `source`, each having sent `head` (a refused one may be reset already: no matter)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=30, source_address=(source, 0))
            socks.append(sock)
            if head:
                with contextlib.suppress(OSError):
                    sock.sendall(head)
        yield socks
    finally:
        for sock in socks:
            sock.close()


def read_all(sock: socket.socket) -> bytes:
    """Until the gateway closes the connection (after a refusal, or a probe slot's one answer)."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def probe(gateway: Gateway, method: str = "GET", path: str = "/healthz") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{gateway.port}\r\n\r\n".encode()


def raw_exchange(gateway: Gateway, source: str, request: bytes) -> bytes:
    with connections(gateway, source, 1, request) as [sock]:
        return read_all(sock)


def kubelet_health(gateway: Gateway, source: str) -> httpx2.Response:
    """A probe from an address of its own, by a real HTTP client."""
    transport = httpx2.HTTPTransport(local_address=source)
    with httpx2.Client(transport=transport, timeout=30) as client:
        return client.get(f"{gateway.base}/healthz")


def test_one_address_past_the_cap_leaves_probe_slots_for_another(capped: Gateway) -> None:
    gateway = capped
    with (
        connections(gateway, "127.0.0.41", 4, HOLD),
        connections(gateway, "127.0.0.42", PROBE_HEADROOM, PROBE_START) as idle,
    ):
        health = kubelet_health(gateway, "127.0.0.43")
        assert health.status_code == 200 and health.json() == {"status": "ok"}, health.text
        # The address's connections past its bound were refused at once, with the cap's 503 (not over its share).
        for sock in idle[PROBE_SLOTS_PER_ADDRESS:]:
            answer = read_all(sock)
            assert answer.startswith(b"HTTP/1.1 503") and BUSY in answer, answer
    assert "Traceback" not in gateway.output()


def test_one_address_past_its_share_leaves_probe_slots_for_another_past_its_own(shared: Gateway) -> None:
    gateway = shared
    with (
        connections(gateway, "127.0.0.44", 2, HOLD),
        connections(gateway, "127.0.0.44", PROBE_HEADROOM, PROBE_START) as idle,
        connections(gateway, "127.0.0.45", 2, HOLD),
    ):
        # The kubelet's address holds its share too (same-node SNAT): its probe takes one of the slots left.
        answer = raw_exchange(gateway, "127.0.0.45", probe(gateway))
        assert answer.startswith(b"HTTP/1.1 200"), answer
        for sock in idle[PROBE_SLOTS_PER_ADDRESS:]:
            refused = read_all(sock)
            assert refused.startswith(b"HTTP/1.1 429") and ADDRESS_BUSY in refused, refused
    assert "Traceback" not in gateway.output()


def test_a_connection_over_both_caps_gets_its_address_429_at_connect_and_when_judged(both: Gateway) -> None:
    gateway = both
    address = "127.0.0.46"
    with (
        connections(gateway, address, 2, HOLD),
        connections(gateway, "127.0.0.47", 2, HOLD),
        connections(gateway, address, PROBE_HEADROOM + 1) as extra,
    ):
        # Refused at connect (no slot left for it): the address's 429, as a judged one gets.
        at_connect = read_all(extra[-1])
        assert at_connect.startswith(b"HTTP/1.1 429") and ADDRESS_BUSY in at_connect, at_connect
        extra[0].sendall(probe(gateway, "POST", "/mcp"))  # a slot, judged: not a probe
        judged = read_all(extra[0])
        assert judged.startswith(b"HTTP/1.1 429") and ADDRESS_BUSY in judged, judged
        # Over the total cap only, another address gets the cap's 503.
        other = raw_exchange(gateway, "127.0.0.48", probe(gateway, "POST", "/mcp"))
        assert other.startswith(b"HTTP/1.1 503") and BUSY in other, other
    assert "Traceback" not in gateway.output()


def test_an_address_gets_its_probe_slots_back_when_they_are_served_closed_or_refused(capped: Gateway) -> None:
    gateway = capped
    address = "127.0.0.49"

    def served() -> bool:
        return raw_exchange(gateway, address, probe(gateway)).startswith(b"HTTP/1.1 200")

    def bound_reached() -> None:
        refused = raw_exchange(gateway, address, probe(gateway))
        assert refused.startswith(b"HTTP/1.1 503") and BUSY in refused, refused

    with (
        connections(gateway, "127.0.0.50", 4, HOLD),
        connections(gateway, address, PROBE_SLOTS_PER_ADDRESS, PROBE_START) as slots,
    ):
        bound_reached()
        # Served: the probe slot's connection closes after its answer, and the address has the slot back.
        slots[0].sendall(f"thz HTTP/1.1\r\nHost: 127.0.0.1:{gateway.port}\r\n\r\n".encode())
        assert read_all(slots[0]).startswith(b"HTTP/1.1 200")
        # Once a probe is served its slot is free again (asyncio's transport calls `connection_lost` before it
        # closes the socket), so the next connection below takes the fourth slot.
        wait_until(served, message="a served probe's slot was not freed")
        with connections(gateway, address, 1, PROBE_START):
            bound_reached()
            # Closed by the client: freed when the gateway sees the connection lost.
            slots[1].close()
            wait_until(served, message="a closed probe slot was not freed")
            with connections(gateway, address, 1, PROBE_START):
                bound_reached()
                # Refused once judged (not a probe path): freed with the refusal.
                slots[2].sendall(f"lo HTTP/1.1\r\nHost: 127.0.0.1:{gateway.port}\r\n\r\n".encode())
                refused = read_all(slots[2])
                assert refused.startswith(b"HTTP/1.1 503") and BUSY in refused, refused
                wait_until(served, message="a refused probe slot was not freed")
    assert "Traceback" not in gateway.output()
