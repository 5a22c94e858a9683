"""2025-11-25 calls whose client's connection is gone (server/in_flight.py, "left" calls), over a real `vmcp serve`,
a real SDK backend that records its calls' starts and cancellations, and raw HTTP clients that drop their POSTs:

- the same caller (an agent host restarted after a crash) is served at once, while the left calls run on;
- a caller's left calls are bounded by `per_caller`: past it the oldest is cancelled at the backend, and audited so;
- a client that resumes its left call's stream (Last-Event-ID) gets its answer."""

from __future__ import annotations

import contextlib
import json
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2
import pytest

from tests.support import Gateway, metric_sample, raw_session, running_gateway, sse_messages, wait_until, write_config

# A backend whose `slow` records `start <tag>`, reports progress when asked (so its POST becomes an SSE stream at
# once), then waits for its `gate` file (none: answers at once), recording `cancelled <tag>` if cancelled first.
BACKEND = r'''
import sys
from pathlib import Path

import anyio
from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("left")
RECORD = Path(sys.argv[1])


def record(*words: str) -> None:
    with RECORD.open("a", encoding="utf-8") as sink:
        sink.write(" ".join(words) + "\n")


@server.tool()
async def slow(tag: str, ctx: Context, gate: str = "") -> str:
    """Waits for the file `gate`, recording its start and its cancellation."""
    record("start", tag)
    try:
        await ctx.report_progress(1, None, "started")
        while gate and not await anyio.Path(gate).exists():
            await anyio.sleep(0.05)
    except BaseException:
        record("cancelled", tag)
        raise
    return f"done {tag}"


if __name__ == "__main__":
    server.run()
'''
PER_CALLER = 2
TOOL = "left_slow"
# A hang guard for a loaded machine, not a bound under test.
WAIT = 30.0


@contextlib.contextmanager
def serving(directory: Path, per_caller: int) -> Iterator[Gateway]:
    script = directory / "left_server.py"
    script.write_text(BACKEND, encoding="utf-8")
    config = {
        "backends": [{"name": "left", "command": sys.executable, "args": [str(script), str(directory / "record.txt")]}],
        "limits": {"requests_in_flight": {"per_caller": per_caller, "total": 50}},
        "telemetry": {
            "audit": {"enabled": True, "output": str(directory / "audit.log"), "flush_interval": 0},
            "metrics": {"enabled": True},
        },
    }
    with running_gateway(write_config(directory, config)) as gateway:
        yield gateway


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Gateway, Path]]:
    with serving(tmp_path, PER_CALLER) as gateway:
        yield gateway, tmp_path


def recorded(directory: Path, word: str) -> set[str]:
    path = directory / "record.txt"
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    return {tag for kind, tag in (line.split() for line in lines) if kind == word}


def call(request_id: int, tag: str, gate: Path | None = None, progress: bool = False) -> dict[str, Any]:
    params: dict[str, Any] = {"name": TOOL, "arguments": {"tag": tag, "gate": str(gate) if gate else ""}}
    if progress:
        params["_meta"] = {"progressToken": f"p{request_id}"}
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


def open_call(url: str, headers: dict[str, str], message: dict[str, Any]) -> socket.socket:
    """A POST of `message` on a connection of its own, which the test can drop as a killed client's would be."""
    parts = urlsplit(url)
    body = json.dumps(message).encode()
    lines = [f"POST {parts.path} HTTP/1.1", f"Host: {parts.netloc}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items() if name.lower() != "content-length"]
    connection = socket.create_connection((parts.hostname, parts.port), timeout=WAIT)
    connection.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    return connection


def read_until(connection: socket.socket, marker: bytes) -> bytes:
    """What the connection received up to and including `marker`'s SSE event."""
    got = b""
    while marker not in got or not _event_ended(got.split(marker, 1)[1]):
        chunk = connection.recv(65536)
        assert chunk, got
        got += chunk
    return got


def _event_ended(rest: bytes) -> bool:
    return b"\n\n" in rest.replace(b"\r\n", b"\n")


def drop(connection: socket.socket) -> None:
    connection.shutdown(socket.SHUT_RDWR)
    connection.close()


class Polls:
    """Quick calls from a new session of the same caller (its address): an agent host restarted after a crash."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.headers = raw_session(url)
        self.next_id = 100
        self.refusals: list[str] = []

    def served(self) -> bool:
        self.next_id += 1
        answer = httpx2.post(
            self.url, json=call(self.next_id, f"poll{self.next_id}"), headers=self.headers, timeout=WAIT
        )
        message = answer.json()
        if "error" in message:
            self.refusals.append(message["error"]["message"])
            return False
        assert message["result"]["content"][0]["text"] == f"done poll{self.next_id}", message
        return True

    def until_served(self) -> None:
        wait_until(self.served, WAIT, lambda: f"the caller is still refused: {self.refusals[-1:]}")


def test_a_restarted_client_is_served_at_once_while_its_dropped_calls_run_on(served: tuple[Gateway, Path]) -> None:
    gateway, directory = served
    gate = directory / "gate"
    headers = raw_session(gateway.url)
    # One call streams (progress) when its client dies, one is silent (its answer still undecided: JSON or SSE).
    streaming = open_call(gateway.url, headers, call(1, "streaming", gate, progress=True))
    read_until(streaming, b"notifications/progress")
    silent = open_call(gateway.url, headers, call(2, "silent", gate))
    wait_until(lambda: "silent" in recorded(directory, "start"), WAIT, "the silent call never reached the backend")
    polls = Polls(gateway.url)
    assert not polls.served() and "per_caller" in polls.refusals[0]  # both slots taken
    drop(streaming)
    drop(silent)

    polls.until_served()
    assert not recorded(directory, "cancelled")  # a dropped connection is no cancel: the calls run on
    gate.touch()  # the left calls end (else they hold the gateway's stop, in its drain)


def test_left_calls_past_per_caller_cancel_the_oldest_at_the_backend(served: tuple[Gateway, Path]) -> None:
    gateway, directory = served
    gate = directory / "gate"
    headers = raw_session(gateway.url)
    polls = Polls(gateway.url)
    first = open_call(gateway.url, headers, call(1, "first", gate))
    second = open_call(gateway.url, headers, call(2, "second", gate, progress=True))
    read_until(second, b"notifications/progress")
    wait_until(lambda: "first" in recorded(directory, "start"), WAIT, "the first call never reached the backend")
    drop(first)
    polls.until_served()  # `first` left
    third = open_call(gateway.url, headers, call(3, "third", gate, progress=True))
    read_until(third, b"notifications/progress")
    drop(second)
    polls.until_served()  # `second` left too (`third` holds the other slot): two left, as many as per_caller
    assert not recorded(directory, "cancelled")

    drop(third)
    wait_until(lambda: recorded(directory, "cancelled"), WAIT, "no left call was cancelled")
    wait_until(lambda: "cancelled" in (directory / "audit.log").read_text(), WAIT, "no cancelled call audited")
    assert recorded(directory, "cancelled") == {"first"}  # the oldest left call, the others run on
    outcomes = [json.loads(line) for line in (directory / "audit.log").read_text().splitlines()]
    cancelled = [r for r in outcomes if r.get("outcome") == "cancelled"]
    assert len(cancelled) == 1 and cancelled[0]["target"]["name"] == TOOL, cancelled
    polls.until_served()
    gate.touch()


def test_a_client_resuming_its_left_call_gets_the_answer(served: tuple[Gateway, Path]) -> None:
    gateway, directory = served
    gate = directory / "gate"
    headers = raw_session(gateway.url)
    left = open_call(gateway.url, headers, call(1, "resumed", gate, progress=True))
    events = list(sse_messages(iter(read_until(left, b"notifications/progress").decode().splitlines())))
    last_id = [event_id for event_id, _ in events if event_id][-1]
    drop(left)
    held = open_call(gateway.url, headers, call(2, "held", gate, progress=True))
    read_until(held, b"notifications/progress")
    Polls(gateway.url).until_served()  # the left call no longer holds one of the caller's two slots

    with httpx2.stream("GET", gateway.url, headers={**headers, "last-event-id": last_id}, timeout=WAIT) as resumed:
        assert resumed.status_code == 200
        gate.touch()
        answer = next(m for _, m in sse_messages(resumed.iter_lines()) if m and m.get("id") == 1)
    assert answer["result"]["content"][0]["text"] == "done resumed", answer
    assert not recorded(directory, "cancelled")
    drop(held)


def test_a_caller_allowed_one_call_has_its_left_call_cancelled_by_its_next_and_frees_every_slot(
    tmp_path: Path,
) -> None:
    gate = tmp_path / "gate"
    with serving(tmp_path, per_caller=1) as gateway:
        headers = raw_session(gateway.url)
        polls = Polls(gateway.url)
        first = open_call(gateway.url, headers, call(1, "first", gate, progress=True))
        read_until(first, b"notifications/progress")
        drop(first)
        polls.until_served()
        second = open_call(gateway.url, headers, call(2, "second", gate, progress=True))
        read_until(second, b"notifications/progress")
        drop(second)
        wait_until(lambda: recorded(tmp_path, "cancelled") == {"first"}, WAIT, "the left call was not cancelled")
        gate.touch()
        # Every slot freed once the left call ended: in flight and left alike.
        wait_until(lambda: metric_sample(gateway.base, "vmcp_requests_in_flight") == 0, WAIT, "a slot still held")
        polls.until_served()
