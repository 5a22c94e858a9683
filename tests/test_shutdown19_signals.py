"""Stopping a real gateway by signal, as an operator does: what the client sees for a call still running, what
the log says, and that the backends are gone afterwards.

- Ctrl-C over HTTP while a call is already streaming (its progress went out): the call's SSE stream ends with a
  JSON-RPC error, the client's GET stream ends as a complete response, and the log has no traceback.
- SIGHUP over HTTP (the terminal went away): the gateway drains and stops like on SIGTERM, says so, exits 0,
  and stops its backends, rather than dying at once and leaving them; started with SIGHUP ignored (`nohup`), it
  leaves it ignored.
- SIGTERM over stdio with a call that outlasts `timeouts.shutdown`: the call is answered with an error under its
  id saying the gateway is shutting down, not left unanswered.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import anyio
import mcp_types as types
import psutil
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from tests.support import EXAMPLES, NODE_BIN, Gateway, running_gateway, stdio_gateway, unavailable, write_config

EVERYTHING = NODE_BIN / "mcp-server-everything"
HELD_SERVER = EXAMPLES / "backends" / "held_server.py"


def held_backend() -> dict[str, object]:
    return {"name": "held", "command": sys.executable, "args": [str(HELD_SERVER)]}


async def exit_code(proc: subprocess.Popen[bytes], within: float) -> int:
    return await anyio.to_thread.run_sync(lambda: proc.wait(timeout=within))


def _deaf(sig: int, frame: FrameType | None) -> None:
    """This process's SIGHUP while a gateway starts: caught and dropped (a caught signal is reset to its default by
    `exec`, an ignored one stays ignored)."""


@contextlib.contextmanager
def gateway_hangup(*, ignored: bool) -> Iterator[None]:
    """Gateways started in the block inherit SIGHUP ignored (as under `nohup`) or at its default (as from a
    terminal), whatever this test process inherited: a suite run under `nohup`, or by a runner that ignores SIGHUP,
    passes that on to every process it starts, and a gateway leaves an ignored SIGHUP ignored (a SIGHUP test then
    waited out its whole timeout). Meanwhile this process itself drops a hang-up."""
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN if ignored else _deaf)
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, signal.SIG_DFL if previous is None else previous)


def stopped_while_streaming(tmp_path: Path, sig: signal.Signals, mode: str, **server: object) -> str:
    """A long call with progress through a gateway over server-everything (`server` its settings), stopped by `sig`
    once the call's answer streams: the client gets a JSON-RPC error saying to retry, and the gateway exits 0.
    Its log."""
    if not EVERYTHING.exists():
        unavailable("server-everything is not installed (npm ci)")
    backend = {"name": "everything", "command": str(EVERYTHING)}
    config = write_config(tmp_path, {"backends": [backend], "server": server})

    async def main(gateway: Gateway) -> None:
        progressed = anyio.Event()

        async def progress(progress: float, total: float | None, message: str | None) -> None:
            progressed.set()  # the answer is an SSE stream now, under way

        async def stop_when_streaming() -> None:
            await progressed.wait()
            gateway.proc.send_signal(sig)

        with anyio.fail_after(60):
            async with Client(gateway.url, mode=mode) as client, anyio.create_task_group() as group:
                group.start_soon(stop_when_streaming)
                arguments = {"duration": 600, "steps": 1200}  # a progress notification every 0.5 s
                with pytest.raises(MCPError) as cut:
                    await client.call_tool(
                        "everything_trigger-long-running-operation", arguments, progress_callback=progress
                    )
        assert "shutting down" in str(cut.value) and "retry" in str(cut.value)
        assert await exit_code(gateway.proc, 60) == 0

    with running_gateway(config) as gateway:
        anyio.run(main, gateway)
    return gateway.output()


def test_ctrl_c_ends_a_streaming_call_with_a_json_rpc_error_and_no_traceback(tmp_path: Path) -> None:
    log = stopped_while_streaming(tmp_path, signal.SIGINT, "auto")
    assert "its stream ends with an error" in log
    assert "Traceback" not in log and "ASGI callable" not in log


def test_sighup_drains_stops_the_backends_and_exits_zero(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"backends": [held_backend()]})
    with gateway_hangup(ignored=False), running_gateway(config) as gateway:
        backends = gateway.children()
        assert backends
        gateway.proc.send_signal(signal.SIGHUP)
        assert gateway.proc.wait(timeout=60) == 0
        _, alive = psutil.wait_procs(backends, timeout=10)
        assert alive == []
    log = gateway.output()
    assert "SIGHUP: draining, then stopping (vmcp has no config reload" in log
    assert "drained in" in log


def test_a_gateway_started_with_sighup_ignored_leaves_it_ignored(tmp_path: Path) -> None:
    # `nohup vmcp serve`: the hang-up passes the gateway by. Sent before the SIGTERM, a SIGHUP the gateway handled
    # would be named in the log (whether it drained or stopped at once), and one at its default would end it (-1).
    config = write_config(tmp_path, {"backends": [held_backend()]})
    with gateway_hangup(ignored=True), running_gateway(config) as gateway:
        gateway.proc.send_signal(signal.SIGHUP)
        gateway.proc.send_signal(signal.SIGTERM)
        assert gateway.proc.wait(timeout=60) == 0
    log = gateway.output()
    assert "drained in" in log
    assert "SIGHUP" not in log


def test_stdio_sigterm_answers_a_call_that_outlasts_the_shutdown_with_an_error(tmp_path: Path) -> None:
    config = write_config(
        tmp_path, {"backends": [held_backend()], "server": {"transport": "stdio"}, "timeouts": {"shutdown": 1}}
    )
    gate = tmp_path / "gate"  # never made: the call runs until the gateway stops it

    def send(proc: subprocess.Popen[bytes], message: dict[str, object]) -> None:
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(message).encode() + b"\n")
        proc.stdin.flush()

    with stdio_gateway(config, tmp_path / "stderr.log") as proc:
        assert proc.stdout is not None
        hello = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
        send(proc, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": hello})
        assert json.loads(proc.stdout.readline())["id"] == 1
        send(proc, {"jsonrpc": "2.0", "method": "notifications/initialized"})
        call = {"name": "held_held_echo", "arguments": {"message": "never", "gate": str(gate)}}
        send(proc, {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": call})
        deadline = time.monotonic() + 60
        while not Path(f"{gate}.started").exists():  # the call is at the backend
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        answers = [json.loads(line) for line in proc.stdout]  # until the gateway closes stdout
        assert proc.wait(timeout=60) == 0
    [answer] = [a for a in answers if a.get("id") == 7]
    assert answer["error"]["code"] == types.CONNECTION_CLOSED
    assert "shutting down" in answer["error"]["message"] and "retry" in answer["error"]["message"]


def test_a_call_still_running_when_the_drain_runs_out_gets_an_error_to_retry(tmp_path: Path) -> None:
    # The drain's bound passed with a call at its backend: the call is answered "shutting down ... retry" (the
    # client's next request lands on another replica), not cut off with its connection, and the gateway exits 0.
    gate = tmp_path / "gate"
    settings = {"backends": [held_backend()], "server": {"drain_timeout": 1}}

    async def main(gateway: Gateway) -> None:
        async def stop_when_held() -> None:
            started = anyio.Path(f"{gate}.started")
            while not await started.exists():  # noqa: ASYNC110 - the backend's process makes the file
                await anyio.sleep(0.05)
            gateway.proc.send_signal(signal.SIGTERM)

        with anyio.fail_after(60):
            async with Client(gateway.url) as client, anyio.create_task_group() as group:
                group.start_soon(stop_when_held)
                with pytest.raises(MCPError) as cut:
                    await client.call_tool("held_held_echo", {"message": "hi", "gate": str(gate)})
        assert "shutting down" in str(cut.value) and "retry" in str(cut.value)
        assert await exit_code(gateway.proc, 60) == 0

    with running_gateway(write_config(tmp_path, settings)) as gateway:
        anyio.run(main, gateway)
    log = gateway.output()
    assert "still running after 1s" in log
    assert "Traceback" not in log


def test_a_streaming_call_still_running_when_the_drain_runs_out_ends_with_an_error_to_retry(tmp_path: Path) -> None:
    # As above, for a call whose answer already streams (its progress went out): the drain's end must not end
    # its stream first, which left the client with no answer and a reconnection to a closed listener.
    log = stopped_while_streaming(tmp_path, signal.SIGTERM, "legacy", drain_timeout=1)
    assert "still running after 1s" in log and "its stream ends with an error" in log
    assert "Traceback" not in log
