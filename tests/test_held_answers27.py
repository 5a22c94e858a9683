"""Answers a client leaves unread are bounded in bytes, per caller and in total (`limits.held_answer_bytes`).

A client that sends calls of a big tool and stops reading its sockets left every answer in the gateway until
`server.write_timeout` reset it: one caller's 100 calls of a 9 MB tool raised the gateway's RSS from 115 MB to
734 MB (JSON answers), and more over SSE, whose writer keeps a copy of each. Past the bound a call of that caller
is answered with a JSON-RPC error naming it, its result dropped; other callers are served, and the stopped caller
is served again once its connections are gone. A real gateway process, a real stdio backend, raw sockets that
read the first bytes of each answer only (enough to see that it was answered), SDK clients for the callers that
read.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO, Any

import anyio
import httpx2
import psutil
import pytest
from mcp.shared.exceptions import MCPError

from tests.support import (
    EXAMPLES,
    RAW_HEADERS,
    RAW_INITIALIZE,
    Gateway,
    api_keys_file,
    bearer_client,
    running_gateway,
    stdio_gateway,
    write_config,
)

pytestmark = [pytest.mark.slow]

HOSTILE_SERVER = EXAMPLES / "backends" / "hostile_server.py"
ANSWER_CHARS = 9_000_000
MIB = 1024 * 1024
PER_CALLER = 32 * MIB
TOTAL = 64 * MIB
# What the gateway may grow by past the bound: the answer that crosses it, the one being read from the backend and
# its parsed and encoded copies, the SSE event store's newest event, allocator slack.
SLACK = 96 * MIB
# Enough calls that, held, they pass the bound several times over (40 answers of 9 MB: ~250 MB in the gateway's
# buffers alone, ~800 MB over SSE).
CALLS = 40
SUBJECTS = ("alice", "bob", "carol", "dave")
WITHIN = 120.0  # a guard against a hang, not a measure
MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientInfo": {"name": "stopped", "version": "1"},
    "io.modelcontextprotocol/clientCapabilities": {},
}


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[Gateway, dict[str, str]]]:
    keys = api_keys_file(tmp_path / "keys.json", {subject: ["users"] for subject in SUBJECTS})
    config = {
        "backends": [{"name": "hostile", "command": sys.executable, "args": [str(HOSTILE_SERVER)]}],
        # Long: the bound, not the write deadline, is what keeps the gateway small here.
        "server": {"write_timeout": 600},
        "limits": {
            "held_answer_bytes": {"per_caller": PER_CALLER, "total": TOTAL},
            "max_connections_per_address": 400,  # the stopped readers' connections, all from 127.0.0.1
        },
        "auth": {"incoming": {"mode": "api_keys", "api_keys": {"file": "keys.json"}}},
    }
    with running_gateway(write_config(tmp_path, config)) as running:
        yield running, keys


class StoppedReader:
    """One caller's calls of `hostile_big`, each on a connection of its own whose client reads only the first bytes
    of its answer: `era` "json" and "sse" (2025-11-25, a session; "sse": with a progress token, so the backend's
    progress makes the answer an SSE stream) or "modern" (2026-07-28, no session)."""

    def __init__(self, gateway: Gateway, key: str, era: str) -> None:
        self.gateway = gateway
        self.era = era
        self.headers = {**RAW_HEADERS, "Authorization": f"Bearer {key}"}
        if era == "modern":
            self.headers |= {
                "mcp-protocol-version": "2026-07-28",
                "mcp-method": "tools/call",
                "mcp-name": "hostile_big",
            }
        else:
            self.headers |= open_session(gateway.url, self.headers)
        self.sockets: list[socket.socket] = []

    def call(self, request_id: int) -> None:
        params: dict[str, Any] = {"name": "hostile_big", "arguments": {"bytes": ANSWER_CHARS}}
        if self.era == "modern":
            params["_meta"] = dict(MODERN_META)
        if self.era == "sse":
            params["_meta"] = {"progressToken": request_id}
        body = json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}).encode()
        head = "".join(f"{name}: {value}\r\n" for name, value in self.headers.items())
        request = (
            f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{self.gateway.port}\r\n{head}Content-Length: {len(body)}\r\n\r\n"
        )
        connection = socket.socket()
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
        connection.connect(("127.0.0.1", self.gateway.port))
        connection.sendall(request.encode() + body)
        self.sockets.append(connection)

    def answers(self) -> list[bytes]:
        """The first bytes of each answer, up to its `result` or `error` (a few KB of ~9 MB: the rest stays unread)."""
        return [first_bytes(connection) for connection in self.sockets]

    def close(self) -> None:
        for connection in self.sockets:
            connection.close()


def open_session(url: str, headers: dict[str, str]) -> dict[str, str]:
    opened = httpx2.post(url, json=RAW_INITIALIZE, headers=headers, timeout=30)
    assert opened.status_code == 200, opened.text
    session = {"mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
    initialized = httpx2.post(
        url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers={**headers, **session}
    )
    assert initialized.status_code == 202, initialized.text
    return session


def first_bytes(connection: socket.socket, received: bytes = b"") -> bytes:
    connection.settimeout(WITHIN)
    while b'"result"' not in received and error_of(received) is None:
        chunk = connection.recv(4096)
        assert chunk, f"the connection closed before an answer: {received[:500]!r}"
        received += chunk
    return received


def error_of(received: bytes) -> dict[str, Any] | None:
    """The JSON-RPC error the bytes end with, once they hold all of it (an SSE stream's last event, or a body)."""
    start = received.rfind(b'{"jsonrpc"')
    if start < 0 or b'"error"' not in received[start:]:
        return None
    try:
        error: dict[str, Any] = json.loads(received[start:].split(b"\n")[0])["error"]
    except ValueError:
        return None  # not all of it yet
    return error


def refused_by(answer: bytes) -> str | None:
    """The bound an answer's error names (`data.limit`), None for a result."""
    if b'"result"' in answer:
        return None
    error = error_of(answer)
    assert error is not None and "not read" in error["message"], answer[-500:]
    return str(error["data"]["limit"])


@contextmanager
def peak_rss(pid: int) -> Iterator[list[int]]:
    """The process's RSS at its highest while the block runs (sampled every 20 ms), in `[peak]`."""
    process = psutil.Process(pid)
    peak = [process.memory_info().rss]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        done.set()
        sampler.join()
        peak[0] = max(peak[0], process.memory_info().rss)


async def call_as(url: str, key: str, arguments: dict[str, Any] | None = None) -> Any:
    """The call's result, or the `MCPError` it was refused with (caught inside the client: it would leave it in an
    exception group)."""
    async with bearer_client(url, key) as client:
        try:
            return await client.call_tool("hostile_big", arguments or {"bytes": ANSWER_CHARS})
        except MCPError as refused:
            return refused


def served_again(url: str, key: str) -> None:
    """Polls until the caller's call is served (its held answers released), within WITHIN."""
    deadline = time.monotonic() + WITHIN
    while isinstance(result := anyio.run(call_as, url, key, {"bytes": 1000}), MCPError):
        assert time.monotonic() < deadline, f"still refused after {WITHIN}s: {result}"
        time.sleep(0.1)
    assert len(result.content[0].text) == 1000


def warmed_up_rss(gateway: Gateway, key: str) -> int:
    """The gateway's RSS once one big answer went through it to a client that read it."""
    result = anyio.run(call_as, gateway.url, key)
    assert len(result.content[0].text) == ANSWER_CHARS
    return int(psutil.Process(gateway.proc.pid).memory_info().rss)


@pytest.mark.parametrize("era", ["json", "sse", "modern"])
def test_a_caller_that_stops_reading_is_refused_at_its_bound_and_the_gateway_stays_small(
    gateway: tuple[Gateway, dict[str, str]], era: str
) -> None:
    running, keys = gateway
    before = warmed_up_rss(running, keys["bob"])
    stopped = StoppedReader(running, keys["alice"], era)
    try:
        with peak_rss(running.proc.pid) as peak:
            for request_id in range(CALLS):
                stopped.call(100 + request_id)
            answers = stopped.answers()  # every call answered, the big ones left unread
            # Another caller is served meanwhile, a big answer included.
            served = anyio.run(call_as, running.url, keys["bob"])
            assert len(served.content[0].text) == ANSWER_CHARS
        refusals = [refused_by(answer) for answer in answers]
        assert "limits.held_answer_bytes.per_caller" in refusals, refusals
        assert refusals.count(None) < CALLS // 2, refusals  # most were refused, not held
        grown = peak[0] - before
        # An unread SSE answer, counted once (its unsent bytes or its waiting write: a client reading slowly must not
        # pay thrice), is held about thrice: the event's text and bytes in sse_starlette's writer, and the transport's.
        held = 3 * PER_CALLER if era == "sse" else PER_CALLER
        assert grown < held + SLACK, f"the gateway grew by {grown / MIB:.0f} MiB"
    finally:
        stopped.close()
    served_again(running.url, keys["alice"])  # its connections gone, its answers no longer held


def test_callers_that_stop_reading_together_are_bounded_by_the_total(gateway: tuple[Gateway, dict[str, str]]) -> None:
    running, keys = gateway
    before = warmed_up_rss(running, keys["dave"])
    with ExitStack() as stack:
        stopped = [StoppedReader(running, keys[subject], "modern") for subject in ("alice", "bob", "carol")]
        for reader in stopped:
            stack.callback(reader.close)
        with peak_rss(running.proc.pid) as peak:
            for request_id in range(CALLS // 2):
                for reader in stopped:
                    reader.call(100 + request_id)
            refusals = [refused_by(answer) for reader in stopped for answer in reader.answers()]
            # A caller holding nothing is refused too while the gateway holds its total.
            refused = anyio.run(call_as, running.url, keys["dave"], {"bytes": 1000})
        assert isinstance(refused, MCPError), refused
        assert refused.error.data["limit"] == "limits.held_answer_bytes.total"
        assert "clients have not read" in refused.error.message
        assert "limits.held_answer_bytes.total" in refusals, refusals
        grown = peak[0] - before
        assert grown < TOTAL + SLACK, f"the gateway grew by {grown / MIB:.0f} MiB"
    served_again(running.url, keys["dave"])  # the stopped callers gone: served again


# stdio: the answers wait in their handlers' tasks behind the write the client does not take (the SDK writes one at a
# time), each holding its result: 100 calls of 9 MB raised the gateway's RSS from 62 MB to 1 GB.


def send_line(pipe: IO[bytes], message: dict[str, Any]) -> None:
    pipe.write(json.dumps(message).encode() + b"\n")
    pipe.flush()


def answers_from(pipe: IO[bytes], count: int) -> list[dict[str, Any]]:
    """The next `count` answers (messages with an id) the gateway wrote, past its notifications."""
    answers: list[dict[str, Any]] = []
    while len(answers) < count:
        line = pipe.readline()
        assert line, f"stdout ended after {len(answers)} answers"
        if "id" in (message := json.loads(line)):
            answers.append(message)
    return answers


def router_lines(log: Path) -> int:
    """Calls the gateway's router has finished (its one line per call, on stderr)."""
    return log.read_text(encoding="utf-8", errors="replace").count("tool call hostile_big by")


def test_a_stdio_client_that_stops_reading_gets_errors_past_the_bound_and_the_gateway_stays_small(
    tmp_path: Path,
) -> None:
    backend = {"name": "hostile", "command": sys.executable, "args": [str(HOSTILE_SERVER)]}
    config = write_config(
        tmp_path, {"backends": [backend], "limits": {"held_answer_bytes": {"per_caller": PER_CALLER, "total": TOTAL}}}
    )
    log = tmp_path / "stderr.log"
    with stdio_gateway(config, log) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        params = {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "stopped", "version": "1"},
        }
        send_line(proc.stdin, {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": params})
        assert answers_from(proc.stdout, 1)[0]["id"] == 0
        send_line(proc.stdin, {"jsonrpc": "2.0", "method": "notifications/initialized"})
        call = {"name": "hostile_big", "arguments": {"bytes": ANSWER_CHARS}}
        send_line(proc.stdin, {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": call})  # warm-up, read
        assert "result" in answers_from(proc.stdout, 1)[0]
        before = psutil.Process(proc.pid).memory_info().rss
        with peak_rss(proc.pid) as peak:
            for request_id in range(100, 100 + CALLS):
                send_line(proc.stdin, {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": call})
            deadline = time.monotonic() + WITHIN
            while router_lines(log) < CALLS + 1:  # every call came back from the backend, its answer left unread
                assert time.monotonic() < deadline, f"{router_lines(log) - 1} of {CALLS} calls done in {WITHIN}s"
                time.sleep(0.05)
        grown = peak[0] - before
        assert grown < PER_CALLER + SLACK, f"the gateway grew by {grown / MIB:.0f} MiB"
        answers = answers_from(proc.stdout, CALLS)  # now read: the held ones, then the errors
        assert sorted(answer["id"] for answer in answers) == list(range(100, 100 + CALLS))
        refused = [answer["error"] for answer in answers if "error" in answer]
        assert len(refused) > CALLS // 2, f"{len(refused)} of {CALLS} refused"
        assert {error["data"]["limit"] for error in refused} == {"limits.held_answer_bytes.per_caller"}, refused[0]
        assert all("has not read" in error["message"] for error in refused), refused[0]
        # Read, the answers no longer count: the client is served again.
        send_line(proc.stdin, {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": call})
        served = answers_from(proc.stdout, 1)[0]
        assert served["id"] == 2 and len(served["result"]["content"][0]["text"]) == ANSWER_CHARS


# A resumption (GET + Last-Event-ID) passes no server middleware: its replayed answers were charged to nobody, and
# 30 calls cut after their progress and resumed on connections never read held ~700 MB.

# A backend whose call sends its progress, then waits for the file its arguments name before it answers.
RELEASED_BACKEND = """
import json, os, sys, threading, time
lock = threading.Lock()
def send(message):
    with lock:
        sys.stdout.write(json.dumps(message) + "\\n"); sys.stdout.flush()
def call(request):
    params = request["params"]
    send({"jsonrpc": "2.0", "method": "notifications/progress",
          "params": {"progressToken": params["_meta"]["progressToken"], "progress": 1}})
    while not os.path.exists(params["arguments"]["release"]):
        time.sleep(0.01)
    text = {"type": "text", "text": "x" * params["arguments"]["size"]}
    send({"jsonrpc": "2.0", "id": request["id"], "result": {"content": [text], "isError": False}})
for line in sys.stdin:
    request = json.loads(line)
    method = request.get("method")
    if "id" not in request or method is None:
        continue
    if method == "tools/call":
        threading.Thread(target=call, args=(request,), daemon=True).start()
        continue
    result = {"tools": [{"name": "wait", "inputSchema": {"type": "object"}}]} if method == "tools/list" else {}
    if method == "initialize":
        result = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}}, "serverInfo": {"name": "r", "version": "1"}}
    send({"jsonrpc": "2.0", "id": request["id"], "result": result})
"""


def until_progress(gateway: Gateway, headers: dict[str, str], request_id: int, release: Path) -> socket.socket:
    """A call on a connection of its own read up to its progress event (its answer comes once `release` exists)."""
    arguments = {"size": ANSWER_CHARS, "release": str(release)}
    params = {"name": "released_wait", "arguments": arguments, "_meta": {"progressToken": request_id}}
    body = json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}).encode()
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    request = f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{gateway.port}\r\n{head}Content-Length: {len(body)}\r\n\r\n"
    connection = socket.create_connection(("127.0.0.1", gateway.port), timeout=WITHIN)
    connection.sendall(request.encode() + body)
    return connection


def cut_after_progress(gateway: Gateway, headers: dict[str, str], request_id: int, release: Path) -> str:
    """A call whose SSE stream the client closes at its progress event: the id of that event, to resume from."""
    received = b""
    with until_progress(gateway, headers, request_id, release) as connection:
        while b"notifications/progress" not in received:
            chunk = connection.recv(4096)
            assert chunk, received[:500]
            received += chunk
    event_id = received[: received.index(b"notifications/progress")].rsplit(b"id: ", 1)[1].split(b"\r\n")[0]
    return event_id.decode()


def resume_unread(gateway: Gateway, headers: dict[str, str], event_id: str) -> tuple[socket.socket, bytes]:
    """A GET resuming from `event_id` on a connection whose client reads only the first bytes of what comes, and
    its response's head."""
    sent = {**headers, "Accept": "text/event-stream", "Last-Event-ID": event_id}
    head = "".join(f"{name}: {value}\r\n" for name, value in sent.items() if name.lower() != "content-type")
    connection = socket.socket()
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    connection.connect(("127.0.0.1", gateway.port))
    connection.settimeout(WITHIN)
    connection.sendall(f"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1:{gateway.port}\r\n{head}\r\n".encode())
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = connection.recv(4096)
        assert chunk, received[:500]
        received += chunk
    return connection, received


def test_resumed_streams_left_unread_count_for_their_caller(tmp_path: Path) -> None:
    (tmp_path / "released.py").write_text(RELEASED_BACKEND)
    keys = api_keys_file(tmp_path / "keys.json", {"alice": ["users"]})
    config = {
        "backends": [
            {"name": "released", "command": sys.executable, "args": [str(tmp_path / "released.py")]},
            {"name": "hostile", "command": sys.executable, "args": [str(HOSTILE_SERVER)]},
        ],
        "server": {"write_timeout": 600},
        "limits": {
            "held_answer_bytes": {"per_caller": PER_CALLER, "total": TOTAL},
            "max_connections_per_address": 400,
        },
        "auth": {"incoming": {"mode": "api_keys", "api_keys": {"file": "keys.json"}}},
        # Room for every answer's event, so each call's progress stays resumable.
        "sessions": {
            "max_event_bytes_per_session": 512 * MIB,
            "max_event_bytes_in_memory": 512 * MIB,
            "max_event_bytes_per_caller_in_memory": 512 * MIB,
        },
    }
    calls = 8  # 72 MB of answers: twice the bound
    with running_gateway(write_config(tmp_path, config)) as running:
        headers = {**RAW_HEADERS, "Authorization": f"Bearer {keys['alice']}"}
        headers |= open_session(running.url, headers)
        event_ids = [cut_after_progress(running, headers, 100 + n, tmp_path / f"release{n}") for n in range(calls)]
        # A call of the caller's that comes back once it is past the bound, on a stream it reads.
        late = until_progress(running, headers, 200, tmp_path / "release_late")
        resumed: list[socket.socket] = [late]
        try:
            answers = []
            for number, event_id in enumerate(event_ids):  # one at a time: each answer comes once its GET is open
                connection, head = resume_unread(running, headers, event_id)
                resumed.append(connection)
                (tmp_path / f"release{number}").touch()
                answers.append(first_bytes(connection, head))
            refusals = [refused_by(answer) for answer in answers]
            assert refusals[0] is None, answers[0][:500]  # nothing held: replayed
            assert "limits.held_answer_bytes.per_caller" in refusals, refusals
            refused = answers[refusals.index("limits.held_answer_bytes.per_caller")]
            assert refused.startswith(b"HTTP/1.1 429 ") and b"retry-after: 1\r\n" in refused.lower(), refused[:500]
            # The caller's own new calls are refused too while its resumed answers sit unread.
            assert isinstance(anyio.run(call_as, running.url, keys["alice"], {"bytes": 1000}), MCPError)
            # A call that ran meanwhile is told so: its result dropped, not "try again" (which runs it again).
            (tmp_path / "release_late").touch()
            dropped = error_of(first_bytes(late))
            assert dropped is not None and dropped["data"]["limit"] == "limits.held_answer_bytes.per_caller", dropped
            assert "the call ran" in dropped["message"] and "try again" not in dropped["message"], dropped
        finally:
            for connection in resumed:
                connection.close()
        served_again(running.url, keys["alice"])


# A client that reads (slowly) is charged about once per answer: the SSE writer's copy of an event was charged
# twice its size until the response ended, on top of the transport's unsent bytes, and a client reading four 9 MB
# answers at 3 MB/s was refused at 64 MiB.


def test_a_client_reading_its_sse_answers_slowly_is_not_refused(gateway: tuple[Gateway, dict[str, str]]) -> None:
    running, keys = gateway
    reader = StoppedReader(running, keys["alice"], "sse")
    concurrent = 3  # 27 MB of answers at once, within PER_CALLER (32 MiB)
    all_started = threading.Event()
    started = [threading.Event() for _ in range(concurrent)]
    received: dict[int, bytes] = {}

    def read(connection: socket.socket, number: int) -> None:
        """Takes its answer's first bytes, then trickles (never more than 4 MB) until every answer started, then
        reads the rest: a client reading at its pace, its answers in the gateway for a while."""
        got = first_bytes(connection)
        started[number].set()
        while error_of(got) is None and not got.endswith(b"0\r\n\r\n"):  # the chunked response's end
            if not all_started.is_set() and len(got) >= 4 * MIB:
                all_started.wait(WITHIN)
            chunk = connection.recv(65536 if not all_started.is_set() else 1 << 20)
            assert chunk, got[-400:]
            got += chunk
            if not all_started.is_set():
                time.sleep(0.01)
        received[number] = got

    readers = []
    try:
        for number in range(concurrent):
            reader.call(100 + number)
            readers.append(threading.Thread(target=read, args=(reader.sockets[-1], number), daemon=True))
            readers[-1].start()
            assert started[number].wait(WITHIN)
        all_started.set()
        for thread in readers:
            thread.join(WITHIN)
        refusals = [refused_by(received[number]) for number in range(concurrent)]
        assert refusals == [None] * concurrent, [received[number][-400:] for number in range(concurrent)]
        assert all(len(answer) > ANSWER_CHARS for answer in received.values())
    finally:
        reader.close()
