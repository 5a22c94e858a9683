"""`vmcp serve --stdio` with a client that does not read what it is sent: SIGTERM still stops the gateway and its
backends, and a flood of `ping` stops being read rather than held in memory; a request with a usable id but a bad
envelope is answered under that id. A real gateway process, a real stdio backend, the client's pipes by hand."""

from __future__ import annotations

import array
import fcntl
import json
import select
import signal
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import IO, Any

import psutil
import pytest

from tests.support import demo_backend, stop_process, write_config

CLIENT = {"name": "test", "version": "1"}
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": "init",
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": CLIENT},
}
INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}


def line(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode() + b"\n"


def send(pipe: IO[bytes], message: dict[str, Any] | bytes) -> None:
    pipe.write(message if isinstance(message, bytes) else line(message))
    pipe.flush()


def answer_to(proc: subprocess.Popen[bytes], request_id: str | int | None) -> dict[str, Any]:
    """The next answer (notifications skipped), which must be under `request_id`, within a generous deadline."""
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        raw = proc.stdout.readline()
        assert raw, "the gateway closed stdout"
        message: dict[str, Any] = json.loads(raw)
        if "method" not in message:
            assert message.get("id") == request_id, message
            return message
    raise AssertionError(f"no answer (awaited under id {request_id!r})")


def gateway(config: Path, stderr: Path, stdin: IO[bytes] | int = subprocess.PIPE) -> subprocess.Popen[bytes]:
    with stderr.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "vmcp_opt", "serve", "--stdio", "-c", str(config)],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=sink,
        )


def _alive(process: psutil.Process) -> bool:
    try:
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


@pytest.mark.skipif(sys.platform != "linux", reason="POSIX signals, the pipe's size")
def test_sigterm_stops_the_gateway_and_its_backend_while_the_client_reads_no_answer(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"backends": [demo_backend("demo")], "timeouts": {"shutdown": 1}})
    stderr = tmp_path / "stderr.log"
    proc = gateway(config, stderr)
    backends: list[psutil.Process] = []
    try:
        assert proc.stdin is not None and proc.stdout is not None
        send(proc.stdin, INITIALIZE)
        answer_to(proc, "init")
        send(proc.stdin, INITIALIZED)
        send(proc.stdin, {"jsonrpc": "2.0", "id": "list", "method": "tools/list"})  # answered once the backend is up
        answer_to(proc, "list")
        backends = psutil.Process(proc.pid).children(recursive=True)
        assert backends
        # Answers far larger than the pipe holds: the gateway's write of the first blocks while nobody reads.
        for number in range(3):
            call = {"name": "demo_slow_echo", "arguments": {"message": "x" * 400_000, "seconds": 0}}
            send(proc.stdin, {"jsonrpc": "2.0", "id": number, "method": "tools/call", "params": call})
        capacity, deadline = fcntl.fcntl(proc.stdout.fileno(), fcntl.F_GETPIPE_SZ), time.monotonic() + 60
        while _unread(proc.stdout) < capacity - 4096 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _unread(proc.stdout) >= capacity - 4096, "no answer written"  # the pipe is full: the writer waits
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)  # timeouts.shutdown is 1 s: this is only the bound on a hung test
        except subprocess.TimeoutExpired:
            pytest.fail("the gateway still runs 60 s after SIGTERM:\n" + stderr.read_text(errors="replace"))
        deadline = time.monotonic() + 30
        while any(_alive(backend) for backend in backends) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [backend.pid for backend in backends if _alive(backend)] == []
    finally:
        stop_process(proc)
        for backend in backends:
            if _alive(backend):
                backend.kill()


PER_CALLER = 4
PINGS = 40_000


@pytest.mark.skipif(sys.platform != "linux", reason="file positions from /proc, the pipe's size")
def test_a_ping_flood_stops_being_read_while_the_client_takes_no_answer(tmp_path: Path) -> None:
    # stdin is a file, so how far the gateway has read it is its file position; stdout is a pipe nobody reads.
    requests = tmp_path / "requests.jsonl"
    pings = b"".join(b'{"jsonrpc":"2.0","id":%d,"method":"ping"}\n' % number for number in range(PINGS))
    requests.write_bytes(line(INITIALIZE) + line(INITIALIZED) + pings)
    size = requests.stat().st_size
    limits = {"requests_in_flight": {"per_caller": PER_CALLER}}
    config = write_config(tmp_path, {"backends": [demo_backend("demo")], "limits": limits, "timeouts": {"shutdown": 1}})
    stderr = tmp_path / "stderr.log"
    with requests.open("rb") as stdin:
        proc = gateway(config, stderr, stdin)
    try:
        deadline, position = time.monotonic() + 120, 0
        held = False
        while time.monotonic() < deadline and position < size:
            held = "not reading more until the client takes its answers" in stderr.read_text(errors="replace")
            if held:
                break
            position = _read_so_far(proc.pid, requests)
            time.sleep(0.1)
        position = _read_so_far(proc.pid, requests)
        assert held, f"read {position:,} of {size:,} bytes, no hold:\n" + stderr.read_text(errors="replace")
        # Once the stdout pipe is full (bar what its pages waste) the gateway writes no more, and (held) reads no more.
        assert proc.stdout is not None
        capacity = fcntl.fcntl(proc.stdout.fileno(), fcntl.F_GETPIPE_SZ)
        while _unread(proc.stdout) < capacity - 4096 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _unread(proc.stdout) >= capacity - 4096, "the stdout pipe never filled"
        # Read: the answers the pipe holds (~40 bytes each), twice per_caller, a read-ahead buffer. Not 40,000.
        position = _read_so_far(proc.pid, requests)
        assert position < size // 4, f"read {position:,} of {size:,} bytes"
    finally:
        stop_process(proc)


def _unread(pipe: IO[bytes]) -> int:
    """The bytes waiting in `pipe` (the gateway's stdout), none of them read."""
    waiting = array.array("i", [0])
    fcntl.ioctl(pipe.fileno(), termios.FIONREAD, waiting)
    return waiting[0]


def _read_so_far(pid: int, path: Path) -> int:
    """The gateway's position in `path` (its copy of stdin), 0 before it is open or once it is closed."""
    try:
        files = psutil.Process(pid).open_files()
    except psutil.NoSuchProcess:
        return 0
    return max((opened.position for opened in files if opened.path == str(path)), default=0)


BAD_ENVELOPES = [
    b'{"jsonrpc":"2.0","id":9,"method":"tools/call","params":"x"}\n',
    b'{"jsonrpc":"2.0","id":"ten","method":"tools/list","params":[]}\n',
    b'{"jsonrpc":"1.0","id":11,"method":"ping"}\n',
    b'{"id":12,"method":"ping"}\n',
    b'{"jsonrpc":"2.0","id":13,"method":7}\n',
]


def test_a_request_with_a_usable_id_and_a_bad_envelope_is_answered_under_its_id(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"backends": [demo_backend("demo")]})
    proc = gateway(config, tmp_path / "stderr.log")
    try:
        assert proc.stdin is not None
        send(proc.stdin, INITIALIZE)
        answer_to(proc, "init")
        send(proc.stdin, INITIALIZED)
        for bad in BAD_ENVELOPES:
            request_id = json.loads(bad)["id"]
            send(proc.stdin, bad)
            error = answer_to(proc, request_id)["error"]
            assert error["code"] == -32600, bad
            assert error["message"].startswith("Invalid Request"), bad
        # A response the client got wrong is not answered under its id: that id is the gateway's own question's.
        send(proc.stdin, b'{"jsonrpc":"2.0","id":14,"result":5}\n')
        assert answer_to(proc, None)["error"]["code"] == -32600
        send(proc.stdin, {"jsonrpc": "2.0", "id": 15, "method": "ping"})
        assert answer_to(proc, 15)["result"] == {}
    finally:
        stop_process(proc)
