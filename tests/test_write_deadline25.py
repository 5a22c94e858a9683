"""An answer its client does not read (server.write_timeout), against a real gateway process over raw sockets.

A client that asks for a large result and never reads it held the answer's bytes, and its connection, for as long
as it stayed connected: 90 such clients raised the gateway's RSS by ~500 MB, for good. The gateway now resets such
a connection once the client has drained nothing for `server.write_timeout`, while a client reading the same answer
slowly, but steadily, gets all of it.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from collections.abc import Iterator

import pytest

from tests.support import EXAMPLES, Gateway, raw_session, running_gateway, write_config

pytestmark = [pytest.mark.slow]

HOSTILE_SERVER = EXAMPLES / "backends" / "hostile_server.py"
WRITE_TIMEOUT = 6.0
# More than the kernel holds for one connection (tcp_wmem's 4 MB at most), so the gateway's own buffer holds the rest.
ANSWER_CHARS = 9_000_000
# The slow reader: this many bytes, then a pause: ~1 MB/s. The answer takes ~9 s, longer than the deadline, and the
# gateway's buffer stays above its low-water mark (writing paused) nearly all that time; it drains in steps of
# ~1.5 MB as the kernel frees room (every ~1.5 s at this pace), a quarter of the deadline.
READ_STEP = 256 * 1024
READ_PAUSE = 0.25
# What a poll may wait for the gateway to act on the deadline (generous: a loaded machine, or the 30 s default).
WITHIN = 120.0


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    backend = {"name": "hostile", "command": sys.executable, "args": [str(HOSTILE_SERVER)]}
    config = {"backends": [backend], "server": {"write_timeout": WRITE_TIMEOUT}}
    with running_gateway(write_config(tmp_path_factory.mktemp("write-deadline"), config)) as running:
        yield running


def ask_for_big_answer(gateway: Gateway, request_id: int, receive_buffer: int | None = None) -> socket.socket:
    """A raw connection that has sent a tools/call of `hostile_big` (an answer of ANSWER_CHARS and its envelope)."""
    headers = raw_session(gateway.url)
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": request_id,
            "method": "tools/call",
            "params": {"name": "hostile_big", "arguments": {"bytes": ANSWER_CHARS}},
        }
    ).encode()
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    request = (
        f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{gateway.port}\r\n{head}Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    connection = socket.socket()
    if receive_buffer is not None:
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)  # before connect: the window
    connection.connect(("127.0.0.1", gateway.port))
    connection.sendall(request + body)
    return connection


def read_to_end(connection: socket.socket) -> tuple[int, str]:
    """Bytes read until the connection ended, and how it ended ("eof" or "reset")."""
    connection.settimeout(WITHIN)
    total = 0
    try:
        while chunk := connection.recv(1 << 20):
            total += len(chunk)
    except ConnectionResetError:
        return total, "reset"
    return total, "eof"


def until_logged(gateway: Gateway, text: str) -> str:
    deadline = time.monotonic() + WITHIN
    while text not in (output := gateway.output()):
        assert time.monotonic() < deadline, f"no {text!r} in the gateway's log after {WITHIN}s:\n{output[-3000:]}"
        time.sleep(0.2)
    return output


def read_answer_slowly(connection: socket.socket) -> dict[str, object]:
    """The whole HTTP answer, READ_STEP bytes at a time with READ_PAUSE between: slow, but never stalled."""
    connection.settimeout(WITHIN)
    received = bytearray()
    expected: int | None = None
    while expected is None or len(received) < expected:
        step_end = len(received) + READ_STEP
        while len(received) < step_end and (expected is None or len(received) < expected):
            chunk = connection.recv(READ_STEP)
            assert chunk, f"the gateway closed the connection after {len(received)} bytes"
            received += chunk
            if expected is None and b"\r\n\r\n" in received:
                expected = answer_length(bytes(received))
        time.sleep(READ_PAUSE)
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    return dict(json.loads(body))


def answer_length(received: bytes) -> int:
    head, _, _ = received.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(head) + 4 + int(value)
    raise AssertionError(f"no content-length in {head!r}")


def test_a_client_that_never_reads_its_answer_is_reset_and_the_answer_dropped(gateway: Gateway) -> None:
    # A small receive window, as the reviewer's client had: almost all of the answer stays on the gateway's side.
    with ask_for_big_answer(gateway, 7, receive_buffer=4096) as idle:
        output = until_logged(gateway, "(server.write_timeout)")
        assert "reset a connection from 127.0.0.1 whose client read nothing" in output
        read, ended = read_to_end(idle)
    # What the gateway held for it was dropped, not sent on after a late close: the client got a fraction.
    assert read < ANSWER_CHARS // 2, read
    assert ended in {"reset", "eof"}


def test_a_client_reading_slowly_but_steadily_gets_the_whole_answer(gateway: Gateway) -> None:
    with ask_for_big_answer(gateway, 8) as reader:
        answer = read_answer_slowly(reader)
    result = answer["result"]
    assert isinstance(result, dict) and not result.get("isError"), str(answer)[:300]
    assert len(result["content"][0]["text"]) == ANSWER_CHARS
