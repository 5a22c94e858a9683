"""A backend that stays down is logged as an outage, not as two lines per reconnect attempt.

Against a real gateway process and real backends: an HTTP backend whose port is closed for many attempts, then
served, logs one warning with the reason and one line for its recovery; a stdio backend whose failure changes
warns once more with the new reason. On a fake clock: the "still down" reminders of an outage lasting hours, at
the circuit breaker's doubling intervals.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from pathlib import Path

import pytest

from tests.support import DEMO_SERVER, free_port, http_demo_backend, running_gateway, write_config
from tests.test_failure_recovery import backend, eventually
from vmcp_opt.backends.reconnect_log import REMINDER_FIRST, ReconnectLog

pytestmark = [pytest.mark.anyio]

# Many attempts in little time; the health checks stay out of the way (they do not reconnect a failed backend).
FAST_RESTART = {"restart": {"initial_delay": 0.05, "max_delay": 0.1, "jitter": 0}}
CONNECTION = "vmcp_opt.backends.connection: "
# Seconds a wait may take before the test is deemed hung: a gateway beside other tests' work is slow, not stuck.
LOADED = 120.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def connection_lines(output: str, name: str) -> list[str]:
    """The connection's own lines about backend `name`, without the timestamp."""
    lines = [line.split(" ", 1)[1] for line in output.splitlines() if f"{CONNECTION}backend {name}" in line]
    return [line for line in lines if not line.startswith("DEBUG")]


async def test_an_http_backend_down_for_many_attempts_warns_once_and_logs_its_recovery_once(tmp_path: Path) -> None:
    port = free_port()
    config = {
        "backends": [{"name": "late", "transport": "streamable-http", "url": f"http://127.0.0.1:{port}/mcp"}],
        "failure": FAST_RESTART,
    }
    # The backend stops after the gateway: with the gateway's stream open it would take seconds to.
    with contextlib.ExitStack() as afterwards, running_gateway(write_config(tmp_path, config)) as gateway:
        await eventually(lambda: backend(gateway, "late")["restarts"] >= 8, what="8 reconnect attempts")
        afterwards.enter_context(http_demo_backend(port))
        await eventually(lambda: backend(gateway, "late")["state"] == "ready", what="the backend connected")
        attempts = backend(gateway, "late")["restarts"] + 1
        lines = connection_lines(gateway.output(), "late")
    warnings = [line for line in lines if line.startswith("WARNING")]
    assert len(warnings) == 1, lines
    assert warnings[0].startswith(f"WARNING {CONNECTION}backend late failed: http://127.0.0.1:{port}/mcp: ")
    recovered = [line for line in lines if " connected after " in line]
    assert len(recovered) == 1, lines
    assert re.search(rf"backend late connected after \d+s, {attempts} attempts \(streamable-http, ", recovered[0])
    assert sum("reconnecting in" in line for line in lines) == 1, lines  # the first; the rest at debug
    assert len(lines) == 3, lines


# A stdio backend that fails as the file beside it says: exits at once with that line on stderr, or, once the
# file says "up", becomes the demo backend.
FLAKY_SERVER = r"""
import os
import sys
from pathlib import Path

mode = Path(sys.argv[1]).read_text().strip()
if mode == "up":
    os.execv(sys.executable, [sys.executable, sys.argv[2]])
sys.stderr.write(f"cannot start: {mode} (pid {os.getpid()})\n")
sys.exit(3)
"""


def set_mode(mode: Path, text: str) -> None:
    """Replaced whole: written in place, a backend starting between the truncation and the write would read an
    empty mode and fail for a third reason (`cannot start:  (pid …)`), warned once more."""
    staged = mode.with_name(f"{mode.name}.new")
    staged.write_text(text, encoding="utf-8")
    os.replace(staged, mode)


async def test_a_stdio_backend_whose_failure_changes_warns_once_more_with_the_new_reason(tmp_path: Path) -> None:
    script, mode = tmp_path / "flaky_server.py", tmp_path / "mode"
    script.write_text(FLAKY_SERVER, encoding="utf-8")
    set_mode(mode, "disk full")
    entry = {"name": "flaky", "command": sys.executable, "args": [str(script), str(mode), str(DEMO_SERVER)]}
    config = write_config(tmp_path, {"backends": [entry], "failure": FAST_RESTART})
    with running_gateway(config) as gateway:

        def restarted_past(count: int) -> bool:
            return int(backend(gateway, "flaky")["restarts"]) >= count

        await eventually(lambda: restarted_past(5), within=LOADED, what="5 attempts failing one way")
        set_mode(mode, "no licence")
        await eventually(
            lambda: "no licence" in str(backend(gateway, "flaky")["last_error"]), within=LOADED, what="the new failure"
        )
        changed_at = int(backend(gateway, "flaky")["restarts"])
        await eventually(lambda: restarted_past(changed_at + 5), within=LOADED, what="5 attempts failing the other way")
        set_mode(mode, "up")
        await eventually(
            lambda: backend(gateway, "flaky")["state"] == "ready", within=LOADED, what="the backend connected"
        )
        lines = connection_lines(gateway.output(), "flaky")
    warnings = [line for line in lines if line.startswith("WARNING")]
    assert len(warnings) == 2, lines  # each reason once, whatever its pid
    assert warnings[0].startswith(f"WARNING {CONNECTION}backend flaky failed: ") and "disk full" in warnings[0]
    assert re.match(rf"WARNING {CONNECTION}backend flaky failed again \(down \d+s\), now: .*no licence", warnings[1])
    assert sum(" connected after " in line for line in lines) == 1, lines


def test_an_outage_of_hours_reminds_at_the_breakers_doubling_intervals(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    outage = ReconnectLog("notes", clock=lambda: now[0])
    caplog.set_level(logging.DEBUG, logger="vmcp_opt.backends.connection")
    outage.failed("the connection closed", lost=True)
    while now[0] < 3 * 3600:  # an attempt every 30 s (failure.restart.max_delay) for three hours
        now[0] += 30.0
        outage.failed(f"connection refused (attempt at {now[0]:.0f})", lost=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings[:2] == [
        "backend notes failed: the connection closed",
        "backend notes failed again (down 30s), now: connection refused (attempt at 30)",
    ]
    # After 5, 15, 35, 75 and 135 minutes (gaps of 10, 20, 40, then 60): 5 in 3 hours, not one per attempt.
    reminders = warnings[2:]
    assert len(reminders) == 5, reminders
    assert reminders[0].startswith(
        f"backend notes still down after {int(REMINDER_FIRST // 60)}m 0s (10 attempts failed"
    )
    outage.ready("(stdio, protocol 2025-11-25): 1 tools")
    recovered = "backend notes reconnected after 3h 0m, 361 attempts (stdio, protocol 2025-11-25): 1 tools"
    assert caplog.records[-1].getMessage() == recovered
