"""What a client past the gateway's connection caps sees, over a real gateway and the SDK's own client.

Found by the scale audit: a connection past `limits.max_connections` (or its address's share) was answered and
closed at once, with the client's request still unread; the kernel then reset the connection, the client's
kernel dropped the answer, and the SDK's client (httpx, headers and body in two writes) saw a bare
`ReadError` instead of the 503 and its reason.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import anyio
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from tests.support import Gateway, demo_backend, raw_session, running_gateway, write_config


@pytest.fixture(scope="module")
def capped_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp("scale21-refusals")
    limits = {"max_connections": 4, "max_connections_per_address": 2, "http_header_timeout": 60}
    config = write_config(directory, {"backends": [demo_backend("demo")], "limits": limits})
    with running_gateway(config) as gateway:
        yield gateway


@contextlib.contextmanager
def held_connections(gateway: Gateway, source: str, count: int) -> Iterator[None]:
    """`count` connections from `source` whose request headers never end: each holds a slot until closed."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=20, source_address=(source, 0))
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            socks.append(sock)
        yield
    finally:
        for sock in socks:
            sock.close()


def sdk_error(gateway: Gateway) -> str:
    """The error the SDK's client reports for its first request (its leaf exception's type and text)."""

    async def first_request() -> str:
        try:
            async with Client(gateway.url) as client:
                await client.list_tools()
        except BaseException as exc:  # the SDK's task groups wrap it
            while isinstance(exc, BaseExceptionGroup):
                exc = exc.exceptions[0]
            return f"{type(exc).__name__}: {exc}"
        return "served"

    return anyio.run(first_request)


def test_a_client_past_the_connection_cap_is_told_why(capped_gateway: Gateway) -> None:
    with held_connections(capped_gateway, "127.0.0.7", 2), held_connections(capped_gateway, "127.0.0.8", 2):
        error = sdk_error(capped_gateway)
    assert error.startswith(MCPError.__name__), error
    assert "Too many open connections (limits.max_connections)" in error


def test_a_client_past_its_address_share_is_told_why(capped_gateway: Gateway) -> None:
    with held_connections(capped_gateway, "127.0.0.1", 2):
        error = sdk_error(capped_gateway)
    assert error.startswith(MCPError.__name__), error
    assert "limits.max_connections_per_address" in error


def test_a_refused_connection_is_answered_with_a_json_rpc_error_and_retry_after(capped_gateway: Gateway) -> None:
    with held_connections(capped_gateway, "127.0.0.7", 2), held_connections(capped_gateway, "127.0.0.8", 2):
        sock = socket.create_connection(("127.0.0.1", capped_gateway.port), timeout=20, source_address=("127.0.0.9", 0))
        with sock:
            # Past the cap a connection may still ask for /healthz (connections.py `PROBE_HEADROOM`): this one is
            # refused once its request line names another path.
            sock.sendall(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            answer = b""
            while chunk := sock.recv(4096):  # the gateway closes its side after the answer
                answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503"), answer
    assert b"retry-after: 1" in head.lower() and b"application/json" in head
    assert b'"limit": "limits.max_connections"' in body


def test_connections_are_served_again_once_the_held_ones_close(capped_gateway: Gateway) -> None:
    with held_connections(capped_gateway, "127.0.0.7", 2), held_connections(capped_gateway, "127.0.0.8", 2):
        pass
    deadline = time.monotonic() + 30  # the gateway sees the closes a moment later
    while (outcome := sdk_error(capped_gateway)) != "served" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert outcome == "served"
    assert "Traceback" not in capped_gateway.output()


def test_a_431_pipelined_behind_a_running_call_comes_after_that_calls_answer(capped_gateway: Gateway) -> None:
    """Pipelined behind a call still running, a request whose headers pass the cap is answered 431 once the call
    is: written at once, the 431 and our FIN came first, and the call's answer hit "write() after write_eof()"
    (a traceback in the log, and the answer lost)."""
    headers = raw_session(capped_gateway.url)
    params = {"name": "demo_slow_echo", "arguments": {"message": "the first answer", "seconds": 0.5}}
    body = json.dumps({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": params}).encode()
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    first = f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}content-length: {len(body)}\r\n\r\n".encode() + body
    second = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nx-big: " + b"a" * 70_000 + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", capped_gateway.port), timeout=20) as sock:
        sock.sendall(first + second)
        answer = b""
        while chunk := sock.recv(65536):  # the gateway closes its side after the 431
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    assert b"the first answer" in answer
    assert b"HTTP/1.1 431" in answer
    assert answer.index(b"the first answer") < answer.index(b"HTTP/1.1 431")
    assert b"limits.max_header_bytes" in answer[answer.index(b"HTTP/1.1 431") :]
    assert "write_eof" not in capped_gateway.output()


def test_under_a_1024_descriptor_limit_lingering_takes_an_eighth_of_the_client_budget() -> None:
    """The lingering allowance once cut `limits.max_connections` from 896 to 640 under a 1024 hard limit."""
    script = (
        "import resource\n"
        "from vmcp_opt.server import connections\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))\n"
        "print(connections.fit_connections(10_000), connections._max_lingering)\n"
    )
    ran = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert ran.stdout.split() == ["784", "112"]  # (1024 - 128 reserved) less an eighth of it lingering
