"""Stopping a real gateway while its optimizer embeds a large catalogue (catalog_server, thousands of tools).

The stop waits up to `EMBEDDER_STOP_WAIT` for the embedder thread (it must not run the interpreter's exit under
ONNX Runtime). That wait ran on the event loop (`Gateway.stop` closed the optimizer there), so a call that Ctrl-C
cut off got its JSON-RPC error only once the wait was over: 5.2 s after the signal, against 0.2 s without an
embedding. It now runs on a worker thread that the server's task group awaits: the error is written at once, and
the process still leaves after the wait.

Whether the embedder was still at work when the signal came used to depend on the machine's speed (on CI the
embedding sometimes finished first, and the test proved nothing). The test now stops the bulk embedding's child
process (`python -m vmcp_opt.optimizer.bulk_embed`) with SIGSTOP before it signals the gateway: the embedder
thread is then waiting on it, whatever the machine, and the stop must still answer at once and leave within its
bound. The child is killed when the test ends.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import psutil
from mcp import Client
from mcp.shared.exceptions import MCPError

from tests.support import EXAMPLES, Gateway, running_gateway, write_config
from vmcp_opt.optimizer.metatools import EMBEDDER_STOP_WAIT

CATALOG_SERVER = EXAMPLES / "backends" / "catalog_server.py"
HELD_SERVER = EXAMPLES / "backends" / "held_server.py"
# Enough new tools that the optimizer embeds them in a child process (`optimizer.bulk_process_min`, 1,000 by
# default), which the test holds stopped: how long the embedding would take no longer matters.
TOOLS = 1200
BULK_CHILD = "vmcp_opt.optimizer.bulk_embed"
LEFT_EMBEDDING = "leaving while the catalogue is still being embedded"
EMBEDDED = "index updated: embedded"


def config(directory: Path) -> Path:
    backends = [
        {"name": "catalog", "command": sys.executable, "args": [str(CATALOG_SERVER), "--tools", str(TOOLS)]},
        {"name": "held", "command": sys.executable, "args": [str(HELD_SERVER)]},
    ]
    return write_config(
        directory,
        {
            "backends": backends,
            "optimizer": {"enabled": True, "index_dir": str(directory / "index")},
            "timeouts": {"connect": 60},
        },
    )


def bulk_children(gateway: Gateway) -> list[psutil.Process]:
    """The gateway's bulk embedding children (one while a catalogue is embedded in a child process)."""
    found = []
    for process in gateway.children():
        try:
            if BULK_CHILD in process.cmdline():
                found.append(process)
        except psutil.Error:  # gone meanwhile
            continue
    return found


async def stop_bulk_child(gateway: Gateway, stopped: list[psutil.Process]) -> None:
    """SIGSTOP the bulk child once it runs: the embedder thread waits on it from then on (it is never done). The
    child starts once the catalogue is listed and the model loaded: over a minute on a loaded two-core machine."""
    with anyio.fail_after(240):
        while not (children := bulk_children(gateway)):  # noqa: ASYNC110 - another process starts it
            await anyio.sleep(0.05)
    for child in children:
        child.send_signal(signal.SIGSTOP)
        stopped.append(child)
    with anyio.fail_after(30):
        while any(child.status() != psutil.STATUS_STOPPED for child in children):  # noqa: ASYNC110 - signal delivery
            await anyio.sleep(0.05)


async def wait_for(path: Path) -> None:
    with anyio.fail_after(30):
        while not await anyio.Path(path).exists():  # noqa: ASYNC110 - another process makes the file
            await anyio.sleep(0.05)


def test_ctrl_c_during_a_large_embedding_answers_the_call_in_flight_without_waiting_for_the_embedder(
    tmp_path: Path,
) -> None:
    gate = tmp_path / "gate"
    stopped: list[psutil.Process] = []

    async def main(gateway: Gateway) -> None:
        await stop_bulk_child(gateway, stopped)  # the catalogue is being embedded, and stays so
        outcome: list[BaseException] = []
        signalled: list[float] = []

        async def held_call() -> None:
            async with Client(gateway.url) as client:
                try:
                    arguments = {"message": "never", "gate": str(gate)}
                    await client.call_tool("call_tool", {"tool_name": "held_held_echo", "arguments": arguments})
                except MCPError as exc:
                    outcome.append(exc)

        async with anyio.create_task_group() as calls:
            calls.start_soon(held_call)
            await wait_for(Path(f"{gate}.started"))  # the call is at the backend
            assert EMBEDDED not in gateway.output()  # the stopped child has not given its vectors
            signalled.append(time.monotonic())
            gateway.proc.send_signal(signal.SIGINT)
        answered = time.monotonic() - signalled[0]
        [error] = outcome
        assert "shutting down" in str(error) and "retry" in str(error)
        # Before the fix the answer waited for the whole EMBEDDER_STOP_WAIT (5.2 s measured); after it, 0.2 s.
        assert answered < EMBEDDER_STOP_WAIT - 1.5, f"the cut call was answered {answered:.1f} s after Ctrl-C"
        # The stop waits EMBEDDER_STOP_WAIT for the embedder, then leaves: a stopped child does not hold it.
        code = await anyio.to_thread.run_sync(lambda: gateway.proc.wait(timeout=EMBEDDER_STOP_WAIT + 20))
        assert code == 0

    with running_gateway(config(tmp_path)) as gateway:
        try:
            anyio.run(main, gateway)
        except subprocess.TimeoutExpired:
            raise AssertionError(gateway.output()) from None
        finally:
            for child in stopped:  # left stopped by the gateway's exit: nobody else ends it
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
        log = gateway.output()
    # The stop still waited for the embedder, and left without the interpreter's exit as before.
    assert LEFT_EMBEDDING in log, log
    assert "Traceback" not in log, log
