"""What one HTTP client can make the gateway hold (issue 22, rows 5, 7, 11 and 12): MCP sessions per
address and in total, slow and idle connections, Host/Origin checks on every route, unusable request ids.

Each test runs a real gateway process and attacks it over real sockets on loopback; another client (another
loopback address where it matters) and `/healthz` keep being answered. Counts and waits are small and bounded.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.support import RAW_HEADERS, RAW_INITIALIZE, Gateway, demo_backend, running_gateway, write_config
from tests.test_host_binding import a_non_loopback_address

pytestmark = [pytest.mark.slow]

SECRET = "sekrit-http-limits-4321"


def client_from(address: str) -> httpx2.Client:
    """An HTTP client whose connections come from `address` (any 127.x.y.z is loopback on Linux)."""
    return httpx2.Client(transport=httpx2.HTTPTransport(local_address=address), timeout=20)


def open_session(client: httpx2.Client, gateway: Gateway) -> httpx2.Response:
    return client.post(gateway.url, json=RAW_INITIALIZE, headers={**RAW_HEADERS, "Host": f"127.0.0.1:{gateway.port}"})


def session_headers(response: httpx2.Response) -> dict[str, str]:
    return {**RAW_HEADERS, "mcp-session-id": response.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}


def list_tools(client: httpx2.Client, gateway: Gateway, headers: dict[str, str]) -> httpx2.Response:
    client.post(gateway.url, headers=headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
    return client.post(gateway.url, headers=headers, json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"})


def until_opened(client: httpx2.Client, gateway: Gateway, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while open_session(client, gateway).status_code != 200:
        assert time.monotonic() < deadline, "no session slot was freed"
        time.sleep(0.5)


def healthz(gateway: Gateway) -> int:
    return httpx2.get(f"{gateway.base}/healthz", timeout=20).status_code


def gateway_with_limits(factory: pytest.TempPathFactory, **limits: float) -> Iterator[Gateway]:
    config = {"backends": [demo_backend("notes", env={"API_TOKEN": SECRET})], "limits": limits}
    with running_gateway(write_config(factory.mktemp("limits"), config)) as running:
        yield running


@pytest.fixture(scope="module")
def sessions_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    yield from gateway_with_limits(tmp_path_factory, max_sessions=8, max_sessions_per_address=5, session_idle_timeout=3)


def test_a_flood_of_initialize_is_bounded_per_address_and_in_total_and_freed_when_sessions_end(
    sessions_gateway: Gateway,
) -> None:
    gateway = sessions_gateway
    with client_from("127.0.0.1") as attacker, client_from("127.0.0.2") as other, client_from("127.0.0.3") as third:
        opened = [open_session(attacker, gateway) for _ in range(5)]
        assert [r.status_code for r in opened] == [200] * 5
        refused = [open_session(attacker, gateway) for _ in range(40)]
        assert {r.status_code for r in refused} == {429}
        assert refused[0].headers["retry-after"].isdigit()
        error = refused[0].json()["error"]
        assert error["code"] == -32000 and "retry after" in error["message"]
        # Like a rate-limit refusal, it names the setting that refused it.
        assert error["data"]["limit"] == "limits.max_sessions_per_address"
        assert "(5, limits.max_sessions_per_address)" in error["message"]

        # Another address still opens sessions, and a session already open still answers.
        mine = open_session(other, gateway)
        assert mine.status_code == 200
        assert "tools" in list_tools(other, gateway, session_headers(mine)).text
        assert healthz(gateway) == 200

        # The total: 5 + 3 = 8 open, the ninth is refused from any address.
        assert [open_session(other, gateway).status_code for _ in range(2)] == [200, 200]
        full = open_session(third, gateway)
        assert full.status_code == 503 and full.headers["retry-after"].isdigit()
        assert full.json()["error"]["data"]["limit"] == "limits.max_sessions"

        # A DELETE frees its slot (once the session's connection has wound down).
        assert attacker.delete(gateway.url, headers=session_headers(opened[0])).status_code in (200, 204)
        until_opened(third, gateway)

        # Idle sessions are closed after limits.session_idle_timeout, and their slots freed.
        # (The other addresses' sessions, opened later, idle out later: each open waits for its slot.)
        for _ in range(5):
            until_opened(attacker, gateway)
    output = gateway.output()
    assert output.count("refused a new session from") <= 2  # once per interval, not per request
    assert output.count("Refusing to open a new session") <= 1
    assert SECRET not in output


@pytest.fixture(scope="module")
def plain_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    yield from gateway_with_limits(
        tmp_path_factory, http_header_timeout=1, http_body_timeout=2, max_connections=40, max_header_bytes=4096
    )


def test_requests_with_an_unusable_id_are_refused_with_invalid_request(plain_gateway: Gateway) -> None:
    gateway = plain_gateway
    opened = httpx2.post(gateway.url, json=RAW_INITIALIZE, headers=RAW_HEADERS, timeout=20)
    headers = session_headers(opened)
    huge = "x" * 100_000
    for request_id in (None, True, False, {"a": huge}, [1, 2]):
        body = {"jsonrpc": "2.0", "id": request_id, "method": "tools/list"}
        response = httpx2.post(gateway.url, headers=headers, content=json.dumps(body), timeout=20)
        assert response.status_code == 400, (request_id, response.status_code)
        error = response.json()["error"]
        assert error["code"] == -32600 and "id must be a string or an integer" in error["message"]
        assert len(response.content) < 500  # the client's input is never echoed
    # No session needed to be refused either, and a good request still works.
    no_session = httpx2.post(gateway.url, headers=RAW_HEADERS, json={**RAW_INITIALIZE, "id": None}, timeout=20)
    assert no_session.status_code == 400 and no_session.json()["error"]["code"] == -32600
    assert (
        "tools"
        in httpx2.post(
            gateway.url, headers=headers, json={"jsonrpc": "2.0", "id": "7", "method": "tools/list"}, timeout=20
        ).text
    )


def test_a_huge_tool_name_or_argument_is_not_echoed_in_the_error(plain_gateway: Gateway) -> None:
    gateway = plain_gateway
    headers = session_headers(httpx2.post(gateway.url, json=RAW_INITIALIZE, headers=RAW_HEADERS, timeout=20))
    huge = "n" * 1_000_000
    calls = [("no_such_" + huge, {}), ("notes_search_notes", {"query": 5, huge: huge})]
    for name, arguments in calls:
        body = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": name, "arguments": arguments}}
        response = httpx2.post(gateway.url, headers=headers, json=body, timeout=20)
        assert response.status_code == 200 and len(response.content) < 2000, len(response.content)
        assert "error" in response.text or '"isError":true' in response.text.replace(" ", "")
    assert huge[:10_000] not in gateway.output()


def raw_request(gateway: Gateway, head: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=20) as sock:
        sock.sendall(head)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def test_request_headers_past_the_cap_are_answered_431_and_the_connection_closed(plain_gateway: Gateway) -> None:
    """Before, headers of any size were held until limits.http_header_timeout closed the connection unanswered.
    Each head here is sent whole in one write and never finished: only the cap can answer it."""
    gateway = plain_gateway
    start = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{gateway.port}\r\n".encode()
    lines = [b"X-Filler-%d: %s\r\n" % (n, b"v" * 100) for n in range(50)]  # complete header lines
    many = b"".join(lines)
    endless = b"X-Endless: " + b"v" * 5000  # one value that never ends
    for head in (start + many, start + endless):
        answer = raw_request(gateway, head)
        assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
        assert b"over 4,096 bytes (limits.max_header_bytes)" in answer
    # Headers within the cap are served as before.
    assert raw_request(gateway, start + b"".join(lines[:20]) + b"Connection: close\r\n\r\n").startswith(b"HTTP/1.1 200")
    assert gateway.output().count("(limits.max_header_bytes)") == 1  # once per interval, not per request


def test_health_and_readiness_check_host_and_origin_strictly(plain_gateway: Gateway) -> None:
    gateway = plain_gateway
    port = gateway.port
    for path in ("/healthz", "/readyz", "/mcp"):
        url = f"{gateway.base}{path}"
        assert httpx2.get(url, headers={"Host": f"evil.example:{port}"}, timeout=20).status_code == 421
        assert httpx2.get(url, headers={"Host": "127.0.0.1:evil.example.com"}, timeout=20).status_code == 421
        assert httpx2.get(url, headers={"Origin": "http://evil.example"}, timeout=20).status_code == 403
        assert httpx2.get(url, headers={"Origin": "http://127.0.0.1:x.evil"}, timeout=20).status_code == 403
    assert httpx2.get(f"{gateway.base}/healthz", headers={"Host": f"localhost:{port}"}, timeout=20).status_code == 200
    assert httpx2.get(f"{gateway.base}/healthz", headers={"Origin": f"http://127.0.0.1:{port}"}).status_code == 200
    # A Host with control characters is refused, and its escapes, not the characters, reach the log.
    answer = raw_request(gateway, b"GET /healthz HTTP/1.1\r\nHost: evil\x1b[31m.example\r\nConnection: close\r\n\r\n")
    assert answer.startswith((b"HTTP/1.1 421", b"HTTP/1.1 400"))
    output = gateway.output()
    assert "\x1b[31m" not in output
    assert SECRET not in output


def test_readiness_detail_is_shown_to_loopback_clients_only(tmp_path: Path) -> None:
    address = a_non_loopback_address()
    config = {
        "backends": [demo_backend("notes", env={"API_TOKEN": SECRET})],
        "auth": {"incoming": {"allow_anonymous_remote": True}},
    }
    with running_gateway(write_config(tmp_path, config), "--host", "0.0.0.0") as gateway:
        local = httpx2.get(f"{gateway.base}/readyz", timeout=20).json()
        assert local["backends"][0]["name"] == "notes"
        remote = httpx2.get(f"http://{address}:{gateway.port}/readyz", timeout=20)
        assert remote.json() == {"status": local["status"]}
        assert "notes" not in remote.text


def test_slow_header_and_idle_connections_are_closed_and_capped(plain_gateway: Gateway) -> None:
    gateway = plain_gateway
    slow = []
    for _ in range(60):  # past limits.max_connections (40)
        sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=20)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finishes its headers
        slow.append(sock)
    try:
        # Past the cap a connection is answered 503 and closed; within it, slow ones are closed by the timeout.
        closed, busy = 0, []
        for sock in slow:
            try:
                data = sock.recv(4096)
            except OSError:
                data = b""
            closed += data == b"" or data.startswith(b"HTTP/1.1 503")
            busy += [data] if data.startswith(b"HTTP/1.1 503") else []
        assert closed == len(slow)
        assert busy and all(b"Too many open connections (limits.max_connections)" in data for data in busy)
        # A body that never finishes is cut off too.
        stalled = raw_request(
            gateway,
            f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{gateway.port}\r\n".encode() + b"Content-Type: application/json\r\n"
            b'Accept: application/json, text/event-stream\r\nContent-Length: 1000\r\n\r\n{"jsonrpc"',
        )
        assert b"HTTP/1.1 200" not in stalled
        assert healthz(gateway) == 200
        opened = httpx2.post(gateway.url, json=RAW_INITIALIZE, headers=RAW_HEADERS, timeout=20)
        assert "tools" in list_tools(httpx2.Client(timeout=20), gateway, session_headers(opened)).text
    finally:
        for sock in slow:
            sock.close()
    output = gateway.output()
    assert output.count("slow to send its request headers") == 1  # once per interval, not per connection
    assert output.count("refused a connection") == 1
    assert "slow to send its request body" in output
    assert "Traceback" not in output


def test_one_address_cannot_hold_every_connection(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Found by the abuse audit: 2026-07-28 calls need no session, so the session quota never applied, and one
    address holding `max_connections` slow calls got every other client, and `/healthz`, answered 503."""
    limits = {"max_connections": 40, "max_connections_per_address": 10, "http_header_timeout": 30}
    for gateway in gateway_with_limits(tmp_path_factory, **limits):
        held = []
        try:
            for _ in range(15):
                sock = socket.create_connection(
                    ("127.0.0.1", gateway.port), timeout=20, source_address=("127.0.0.5", 0)
                )
                sock.sendall(b"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finishes its headers
                held.append(sock)
            answers = []
            for sock in held[10:]:  # past its share: a probe slot, refused once it asks for no probe
                sock.sendall(b"\r\n")
                answers.append(sock.recv(4096))
            assert all(a.startswith(b"HTTP/1.1 429") for a in answers), answers
            assert all(b"limits.max_connections_per_address" in a for a in answers)
            with client_from("127.0.0.6") as other_client:
                other = other_client.get(f"{gateway.base}/healthz", headers={"Host": f"127.0.0.1:{gateway.port}"})
            assert other.status_code == 200
        finally:
            for sock in held:
                sock.close()
        assert gateway.output().count("limits.max_connections_per_address") <= 2  # logged once per interval
