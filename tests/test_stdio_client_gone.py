"""How `vmcp serve --stdio` stops when its client goes: a desktop client that exits (or is killed) while the gateway
still has an answer to write (its end of stdout is closed), and one that closes stdin with a 2026-07-28
`subscriptions/listen` stream open, and SIGHUP from the app that launched it. A real gateway process, a real stdio backend, the client's pipes by hand."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import psutil
import pytest

from tests.support import DEMO_SERVER, demo_backend, stdio_gateway, stop_process, write_config

LISTEN_META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "1"},
    "io.modelcontextprotocol/clientCapabilities": {},
}


def send(pipe: IO[bytes], message: dict[str, Any]) -> None:
    pipe.write(json.dumps(message).encode() + b"\n")
    pipe.flush()


def test_a_client_that_dies_during_a_call_stops_the_gateway_without_a_traceback(tmp_path: Path) -> None:
    # timeouts.shutdown: how long the call still running gets once stdin closes; its answer then finds no reader.
    config = write_config(tmp_path, {"backends": [demo_backend("demo")], "timeouts": {"shutdown": 0.5}})
    stderr = tmp_path / "stderr.log"
    with stdio_gateway(config, stderr) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        client = {"name": "test", "version": "1"}
        params = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": client}
        send(proc.stdin, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params})
        assert json.loads(proc.stdout.readline())["id"] == 1
        send(proc.stdin, {"jsonrpc": "2.0", "method": "notifications/initialized"})
        call = {"name": "demo_slow_echo", "arguments": {"message": "hi", "seconds": 60}}
        send(proc.stdin, {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": call})
        send(proc.stdin, {"jsonrpc": "2.0", "id": 3, "method": "ping"})
        while json.loads(proc.stdout.readline()).get("id") != 3:  # the call is running in the gateway
            pass
        proc.stdout.close()  # the client is gone: both of its pipe ends close
        proc.stdin.close()
        code = proc.wait(timeout=30)
    log = stderr.read_text(encoding="utf-8", errors="replace")
    assert "Traceback" not in log and "BrokenPipeError" not in log
    assert code == 0, log
    assert "the client closed its end of stdout" in log


def test_closing_stdin_with_a_listen_stream_open_stops_without_waiting_for_the_stream(tmp_path: Path) -> None:
    # A stream is answered only when it ends: were it waited for like a call, the stop would take this long.
    config = write_config(tmp_path, {"backends": [demo_backend("demo")], "timeouts": {"shutdown": 120}})
    stderr = tmp_path / "stderr.log"
    with stdio_gateway(config, stderr) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        params = {"notifications": {"toolsListChanged": True}, "_meta": LISTEN_META}
        send(proc.stdin, {"jsonrpc": "2.0", "id": "listen-1", "method": "subscriptions/listen", "params": params})
        first = json.loads(proc.stdout.readline())
        assert first["method"] == "notifications/subscriptions/acknowledged"
        proc.stdin.close()  # stdout stays open: the client still reads what the gateway says
        code = proc.wait(timeout=30)
        rest = [json.loads(line) for line in proc.stdout.read().splitlines() if line.strip()]
    assert code == 0, stderr.read_text(encoding="utf-8", errors="replace")
    assert [answer["id"] for answer in rest if "id" in answer] == ["listen-1"]  # the stream's end, told to the client


@pytest.mark.skipif(sys.platform == "win32", reason="no SIGHUP on Windows")
def test_sighup_stops_the_gateway_and_a_backend_that_ignores_its_stdin(tmp_path: Path) -> None:
    # The backend outlives its server's exit at the end of stdin: only the gateway's stop ends it.
    lingering = {"name": "demo", "command": "sh", "args": ["-c", f'"{sys.executable}" "{DEMO_SERVER}"; exec sleep 120']}
    config = write_config(tmp_path, {"backends": [lingering]})
    stderr = tmp_path / "stderr.log"
    with stderr.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vmcp_opt", "serve", "--stdio", "-c", str(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=sink,
        )
    backends: list[psutil.Process] = []
    try:
        assert proc.stdin is not None and proc.stdout is not None
        client = {"name": "test", "version": "1"}
        params = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": client}
        send(proc.stdin, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params})
        send(proc.stdin, {"jsonrpc": "2.0", "method": "notifications/initialized"})
        send(proc.stdin, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"})  # answered once the backend is up
        while json.loads(proc.stdout.readline()).get("id") != 2:
            pass
        backends = psutil.Process(proc.pid).children(recursive=True)
        assert backends
        proc.send_signal(signal.SIGHUP)
        code = proc.wait(timeout=30)
        deadline = time.monotonic() + 15
        while any(_alive(backend) for backend in backends) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [backend.pid for backend in backends if _alive(backend)]
    finally:
        stop_process(proc)
        for backend in backends:
            if _alive(backend):
                backend.kill()
    assert code == 0, stderr.read_text(encoding="utf-8", errors="replace")
    assert left == []
    assert "SIGHUP: the client hung up" in stderr.read_text(encoding="utf-8")


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
