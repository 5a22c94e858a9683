"""What a stdio backend's helpers do to the gateway, against a real gateway process and a real client: a helper
that left the backend's session (`setsid`, a daemon's double fork) is ended with its backend, at a restart and at
the gateway's stop, not left to pid 1; and a backend that exits while a helper holds its stdout open fails its
call at once, naming its exit status, rather than when the call times out."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import psutil
import pytest
from mcp import Client

from tests.support import Gateway, running_gateway, write_config

# The gateway adopts orphaned helpers as Linux's child subreaper; elsewhere they go to pid 1.
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_CHILD_SUBREAPER is Linux's")
pytestmark = [pytest.mark.slow, pytest.mark.anyio, linux_only]

CALL_TIMEOUT = 30.0  # timeouts.call: the old behaviour waited for it (health checks off)

# A raw JSON-RPC stdio backend: `crash` starts a helper in a session of its own and exits at once (a restart
# loop), `daemon` starts one by a double fork and serves, `helped` starts one that inherits its stdout and exits
# with code 5 on its first call. Each helper's pid is appended to the file named by argv[2].
BACKEND = r"""
import json, os, subprocess, sys, time
mode, pidfile = sys.argv[1], sys.argv[2]

def note(pid):
    with open(pidfile, "a") as f:
        f.write(f"{pid}\n")

if mode == "crash":
    helper = subprocess.Popen(
        [sys.executable, "-c", "import os, time; os.setsid(); print(os.getpid(), flush=True); os.close(1); time.sleep(600)"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )
    note(int(helper.stdout.readline()))
    sys.exit(4)
if mode == "daemon":
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            note(os.getpid())
            time.sleep(600)
            os._exit(0)
        os._exit(0)
    os.wait()
if mode == "helped":
    note(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"]).pid)  # Popen's default: our stdio

def out(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()

for raw in sys.stdin:
    message = json.loads(raw)
    method, id_ = message.get("method"), message.get("id")
    if id_ is None:
        continue
    if method == "initialize":
        out({"jsonrpc": "2.0", "id": id_, "result": {"protocolVersion": message["params"]["protocolVersion"],
             "capabilities": {"tools": {}}, "serverInfo": {"name": "lifecycle", "version": "1"}}})
    elif method == "tools/list":
        out({"jsonrpc": "2.0", "id": id_, "result": {"tools": [{"name": "echo", "inputSchema": {"type": "object"}}]}})
    elif method == "tools/call":
        if mode == "helped":
            os._exit(5)
        out({"jsonrpc": "2.0", "id": id_, "result": {"content": [{"type": "text", "text": "ok"}]}})
    else:
        out({"jsonrpc": "2.0", "id": id_, "result": {}})
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def backend(tmp_path: Path, name: str, mode: str) -> tuple[dict[str, Any], Path]:
    script = tmp_path / "backend.py"
    script.write_text(BACKEND, encoding="utf-8")
    pidfile = tmp_path / f"{name}.pids"
    return {"name": name, "command": sys.executable, "args": [str(script), mode, str(pidfile)]}, pidfile


def helpers(pidfile: Path, count: int, timeout: float = 30.0) -> list[psutil.Process | None]:
    """The first `count` helpers named in `pidfile`, taken as they run (psutil then tells a reused pid apart);
    None for one already gone."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = [int(line) for line in pidfile.read_text(encoding="utf-8").split()] if pidfile.exists() else []
        if len(pids) >= count:
            return [_process(pid) for pid in pids[:count]]
        time.sleep(0.02)
    raise TimeoutError(f"{pidfile} did not name {count} helpers within {timeout}s")


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


def running(processes: list[psutil.Process | None]) -> list[psutil.Process]:
    """Those still running (a zombie has ended: it waits only for its parent to read its status)."""
    alive = []
    for process in processes:
        try:
            if process is not None and process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.NoSuchProcess:
            pass
    return alive


def ended_soon(processes: list[psutil.Process | None], timeout: float = 10.0) -> list[psutil.Process]:
    """Those of `processes` still running after `timeout` (they are being ended: SIGTERM, then SIGKILL)."""
    deadline = time.monotonic() + timeout
    while running(processes) and time.monotonic() < deadline:
        time.sleep(0.05)
    return running(processes)


def end(processes: list[psutil.Process | None]) -> None:
    for process in running(processes):
        process.kill()


def stop(gateway: Gateway) -> None:
    gateway.proc.send_signal(signal.SIGTERM)
    assert gateway.proc.wait(timeout=30) == 0


def test_a_crash_looping_backends_setsid_helpers_are_ended_at_each_restart_and_at_the_stop(tmp_path: Path) -> None:
    crashing, pidfile = backend(tmp_path, "crashing", "crash")
    restart = {"initial_delay": 0.1, "max_delay": 0.2, "jitter": 0}
    config = write_config(tmp_path, {"backends": [crashing], "failure": {"restart": restart}})
    seen: list[psutil.Process | None] = []
    try:
        with running_gateway(config, wait_ready=False) as gateway:
            seen = helpers(pidfile, 3)
            # Each restart starts after the last stop ended: only the newest helper may still run.
            assert running(seen[:2]) == [], "a crashed backend's setsid helper outlived its restart"
            stop(gateway)
        seen = helpers(pidfile, len(pidfile.read_text(encoding="utf-8").split()))
        assert ended_soon(seen) == [], "a crashed backend's setsid helper outlived the gateway"
    finally:
        end(seen)


def test_a_double_forked_helper_is_ended_when_the_gateway_stops(tmp_path: Path) -> None:
    daemonizer, pidfile = backend(tmp_path, "daemonizer", "daemon")
    config = write_config(tmp_path, {"backends": [daemonizer]})
    daemon: list[psutil.Process | None] = []
    try:
        with running_gateway(config) as gateway:
            daemon = helpers(pidfile, 1)
            assert running(daemon) == daemon
            stop(gateway)
        assert ended_soon(daemon) == [], "a backend's double-forked helper outlived the gateway"
    finally:
        end(daemon)


async def test_a_backend_exiting_while_a_helper_holds_its_stdout_fails_its_call_with_its_exit_status(
    tmp_path: Path,
) -> None:
    helped, pidfile = backend(tmp_path, "helped", "helped")
    config = write_config(
        tmp_path,
        {"backends": [helped], "timeouts": {"call": CALL_TIMEOUT}, "health": {"enabled": False}},
    )
    helper: list[psutil.Process | None] = []
    try:
        with running_gateway(config) as gateway:
            helper = helpers(pidfile, 1)
            async with Client(gateway.url) as client:
                with anyio.fail_after(CALL_TIMEOUT):  # answered before the call's own timeout would answer it
                    result = await client.call_tool("helped_echo", {})
            assert result.is_error
            assert isinstance(result.content[0], types.TextContent)
            assert "the process exited with code 5" in result.content[0].text, result.content[0].text
            # The group was ended with the session: the helper that held stdout too.
            assert ended_soon(helper) == [], "the helper holding the exited backend's stdout was left running"
    finally:
        end(helper)
