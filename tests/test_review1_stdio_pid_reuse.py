"""A stdio backend reaped before its shutdown's last steps: its pid may be another process's by then, and neither
that process's group nor its descendants may be signalled."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import psutil
import pytest

from vmcp_opt.backends import stdio

pytestmark = pytest.mark.anyio

# A process group leader with a child that left its group (setsid), as an unrelated program holding a reused pid.
UNRELATED = (
    "import subprocess, sys, time\n"
    "subprocess.Popen([sys.executable, '-c', 'import os, time; os.setsid(); time.sleep(600)'])\n"
    "time.sleep(600)\n"
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class _Pipe:
    async def aclose(self) -> None:
        pass


class ReapedBackend:
    """What `_stop` sees of a backend that exited by itself and was reaped; its pid now another process's."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode = 0
        self.stdin = _Pipe()
        self.stdout = _Pipe()


def _setsid_child(parent: psutil.Process, timeout: float = 30.0) -> psutil.Process:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in parent.children():
            try:
                if os.getpgid(child.pid) != parent.pid:
                    return child
            except ProcessLookupError:
                pass
        time.sleep(0.02)
    raise AssertionError("the unrelated process's setsid child did not start")


@pytest.fixture
def unrelated(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], psutil.Process]]:
    """A process group leader and its child that left the group, neither the gateway's."""
    leader = subprocess.Popen([sys.executable, "-c", UNRELATED], start_new_session=True, cwd=tmp_path)
    child = None
    try:
        child = _setsid_child(psutil.Process(leader.pid))
        yield leader, child
    finally:
        leader.kill()
        leader.wait(timeout=10)
        if child is not None:
            with contextlib.suppress(psutil.Error):
                child.kill()
            psutil.wait_procs([child], timeout=10)


async def test_a_reaped_backends_pid_reused_by_another_group_is_not_signalled(
    unrelated: tuple[subprocess.Popen[bytes], psutil.Process],
) -> None:
    leader, child = unrelated
    with anyio.fail_after(30):
        await stdio._stop(ReapedBackend(leader.pid))  # type: ignore[arg-type]
    assert leader.poll() is None, "an unrelated process group was sent the backend's SIGTERM"
    assert child.is_running() and child.status() != psutil.STATUS_ZOMBIE, "an unrelated process's child ended"
