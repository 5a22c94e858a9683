"""A request stream resumed while its call runs gets the call's answer, and then ends, in either session store.

The SDK replays the stored events after `Last-Event-ID`, and only then registers the live stream the call's later
messages go to, after minting a priming event and handing it to the response's writer, which waits while the
client is slow to read. An answer routed in that gap was stored but sent on no stream: the resumed stream got
pings for ever, and the SDK's client, hearing them, never resumed again. The gap is made certain here: the client
resumes, reads only the first bytes of a big replayed event (the writer, handed the small one after it, then waits
on the client: the replay has returned, the priming event waits) and only then lets the backend answer; a second
resumption, read at once, shows the answer has been stored by then. Now the replay itself follows the stream to
its answer (server/event_store.py); the Redis store's replay already did, and is checked the same way.

Real `vmcp serve`, a real stdio backend (tests/answer_on_signal_backend.py), real `redis-server`, raw HTTP.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.redis_server import RedisServer, running_redis
from tests.support import raw_session, running_gateway, sse_messages, write_config

BACKEND = Path(__file__).parent / "answer_on_signal_backend.py"
# Far past what the kernel's socket buffers and the server's write buffer take from a client that does not read.
BIG = 4 * 1024 * 1024
# Bounds waits that end at once when the gateway is right; reached only when the answer never comes.
DEADLINE = 60.0


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


def cut_call(url: str, headers: dict[str, str]) -> tuple[str, str]:
    """Starts the call and reads its stream up to its last progress event (the one after the big one), then leaves
    it: (the priming event's id, the last event's id). All are stored by then."""
    call = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": "signalled_chatty", "arguments": {}, "_meta": {"progressToken": "tok"}},
    }
    priming: str | None = None
    with httpx2.stream("POST", url, json=call, headers=headers, timeout=DEADLINE) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for event_id, message in sse_messages(response.iter_lines()):
            if message is None:
                priming = event_id
            elif message["params"]["progress"] == 2:
                assert priming is not None and event_id is not None
                return priming, event_id
    pytest.fail("the call's stream ended before its last progress event")


def slow_resumption(port: int, headers: dict[str, str], last_event_id: str) -> socket.socket:
    """A GET resuming from `last_event_id` on a socket with a tiny receive buffer, read until the big event's
    first bytes: the replay has handed it to the writer, which now waits on this client."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(DEADLINE)
    sock.connect(("127.0.0.1", port))
    fields = "".join(f"{name}: {value}\r\n" for name, value in headers.items() if name.lower() != "content-type")
    sock.sendall(
        f"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{fields}Accept: text/event-stream\r\n"
        f"Last-Event-ID: {last_event_id}\r\nConnection: close\r\n\r\n".encode()
    )
    seen = b""
    while b"pppp" not in seen:
        chunk = sock.recv(1024)
        assert chunk, f"the resumed stream ended before its big event: {seen[:300]!r}"
        seen += chunk
    return sock


def rest_of(sock: socket.socket) -> bytes:
    """What the resumed stream sends until the gateway ends it (`Connection: close`), within `DEADLINE`."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.settimeout(1.0)
    data = b""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(1 << 20)
        except TimeoutError:
            continue
        if not chunk:
            return data
        data += chunk
    tail = data[-300:]
    pytest.fail(f"the resumed stream was still open after {DEADLINE} s; answer sent: {b'THE-ANSWER' in data}: {tail!r}")


def stored_answer(url: str, headers: dict[str, str], last_event_id: str) -> dict[str, Any]:
    """The answer, as resumptions read at once get it: once one does, it has been stored. (Before the fix, one
    could end at once and empty, while another stream of the request was registered; so they are repeated.)"""
    resume = {**headers, "last-event-id": last_event_id}
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        with httpx2.stream("GET", url, headers=resume, timeout=DEADLINE) as response:
            assert response.status_code == 200
            messages = [message for _, message in sse_messages(response.iter_lines()) if message is not None]
        if messages:
            (answer,) = messages
            return answer
        time.sleep(0.05)
    pytest.fail(f"no resumption got the answer within {DEADLINE} s")


@pytest.mark.slow
@pytest.mark.parametrize("store", ["memory", "redis"])
def test_an_answer_that_comes_while_a_slow_resumption_replays_is_sent_on_it(
    store: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    signal = tmp_path / "answer-now"
    backend = {"name": "signalled", "command": sys.executable, "args": [str(BACKEND), str(signal), str(BIG)]}
    config: dict[str, Any] = {"backends": [backend], "sessions": {"store": store}}
    if store == "redis":
        config["redis"] = {"url": request.getfixturevalue("redis").url, "timeout": 1.0}
    with running_gateway(write_config(tmp_path, config)) as gateway:
        headers = raw_session(gateway.url)
        priming, last = cut_call(gateway.url, headers)
        sock = slow_resumption(gateway.port, headers, priming)
        with contextlib.closing(sock):
            signal.touch()
            answer = stored_answer(gateway.url, headers, last)
            assert answer["id"] == 7 and answer["result"]["content"][0]["text"] == "THE-ANSWER"
            rest = rest_of(sock)
    assert b"THE-ANSWER" in rest  # and the stream ended after it
    assert rest.endswith(b"0\r\n\r\n")  # the chunked body's end: ended by the gateway, not cut
