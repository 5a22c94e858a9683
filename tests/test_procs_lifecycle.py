"""How the gateway runs stdio backend processes, against a real gateway process and a real client: what a
backend leaves behind when the gateway stops, and what a backend writing garbage on stdout costs the log."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import mcp_types as types
import psutil
import pytest
from mcp import Client

from tests.scripted_backend import scripted
from tests.support import running_gateway, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def wait_for_pids(pidfile: Path, count: int, timeout: float = 30.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = pidfile.read_text(encoding="utf-8").split() if pidfile.exists() else []
        if len(lines) == count:
            return [int(line) for line in lines]
        time.sleep(0.05)
    raise TimeoutError(f"{pidfile} did not name {count} processes within {timeout}s")


def running(pids: list[int]) -> list[int]:
    """Those of `pids` still running (a zombie has ended: it waits only for its parent to read its status)."""
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def end(pids: list[int]) -> None:
    for pid in running(pids):
        psutil.Process(pid).kill()


def test_a_backends_children_do_not_outlive_the_gateway(tmp_path: Path) -> None:
    # The backend exits by itself when its stdin closes, leaving a child in its process group that ignores
    # SIGTERM and one that left the group (setsid): the gateway's stop must end both.
    pidfile = tmp_path / "children.pid"
    config = write_config(tmp_path, {"backends": [scripted("parent", "--children", str(pidfile))]})
    children: list[int] = []
    try:
        with running_gateway(config) as gateway:
            children = wait_for_pids(pidfile, 2)
            assert running(children) == children
            gateway.proc.send_signal(signal.SIGTERM)
            assert gateway.proc.wait(timeout=30) == 0
        deadline = time.monotonic() + 30
        while running(children) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert running(children) == [], "backend children left running after the gateway stopped"
    finally:
        end(children)


async def test_garbage_on_stdout_costs_a_bounded_log_and_never_its_text(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"backends": [scripted("junk", "--garbage-answers")]})
    with running_gateway(config) as gateway:
        async with Client(gateway.url) as client:
            result = await client.call_tool("junk_garbage", {"lines": 2000})
            assert not result.is_error
            assert isinstance(result.content[0], types.TextContent) and result.content[0].text == "ok"
        # Still serving: the garbage was dropped, not taken for the session's end.
        async with Client(gateway.url) as client:
            assert not (await client.call_tool("junk_garbage", {"lines": 0})).is_error
    log = gateway.output()
    assert "hunter2" not in log, "a line's text reached the log"
    warned = [line for line in log.splitlines() if "backend junk wrote a line of" in line]
    assert len(warned) == 10, warned
    assert "backend junk wrote 1990 more stdout lines that were dropped" in log  # said once the process ended
    assert len(log.splitlines()) < 200, f"{len(log.splitlines())} log lines for 2,000 unusable stdout lines"
