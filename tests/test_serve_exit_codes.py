"""`vmcp serve`'s exit status, run for real: 2 only for "cannot start as configured" (systemd's
RestartPreventExitStatus=2 keeps such a unit down), 1 for a failure a restart may get past: the diagnostics
port (`telemetry.metrics.listen`) held by another process, as the main port, and an unexpected error while
connecting the backends at start."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support import free_port, write_config

pytestmark = pytest.mark.slow


@contextmanager
def held_port() -> Iterator[int]:
    """A port another process's listener holds for as long as the block runs."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield int(taken.getsockname()[1])


def serve(config: Path, *args: str, code: str | None = None) -> subprocess.CompletedProcess[str]:
    """`vmcp serve` in a process of its own; `code` runs first in it (to plant a fault no config can cause)."""
    prelude = f"{code}\n" if code else ""
    command = f"{prelude}from vmcp_opt.cli import app\napp()"
    return subprocess.run(
        [sys.executable, "-c", command, "serve", "-c", str(config), *args],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def said(done: subprocess.CompletedProcess[str]) -> str:
    return " ".join((done.stdout + done.stderr).split())


def metrics_config(tmp_path: Path, listen: str) -> Path:
    return write_config(tmp_path, {"backends": [], "telemetry": {"metrics": {"enabled": True, "listen": listen}}})


@pytest.mark.parametrize("transport", [(), ("--stdio",)], ids=["http", "stdio"])
def test_a_metrics_port_held_by_another_process_exits_1_with_its_reason(
    tmp_path: Path, transport: tuple[str, ...]
) -> None:
    with held_port() as busy:
        done = serve(metrics_config(tmp_path, str(busy)), "--port", str(free_port()), *transport)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"cannot start: telemetry.metrics.listen 127.0.0.1:{busy}: Address already in use" in said(done)
    assert "Traceback" not in done.stderr


def test_a_metrics_address_not_of_this_machine_still_exits_2(tmp_path: Path) -> None:
    """A config error: no restart can fix it (192.0.2.1 is TEST-NET-1, no machine's own address)."""
    done = serve(metrics_config(tmp_path, "192.0.2.1:9464"), "--port", str(free_port()))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "cannot start: telemetry.metrics.listen 192.0.2.1:9464:" in said(done)


# A bug in the background start-up (here: building the first catalogue raises), which no config can cause.
_BROKEN_START = """
import vmcp_opt.gateway


async def _broken(self):
    raise KeyError("a planted bug")


vmcp_opt.gateway.Gateway._tools_changed = _broken
"""


def test_an_unexpected_error_while_connecting_backends_at_start_exits_1(tmp_path: Path) -> None:
    done = serve(write_config(tmp_path, {"backends": []}), "--port", str(free_port()), code=_BROKEN_START)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "cannot serve: start-up failed: KeyError: 'a planted bug'" in said(done)
