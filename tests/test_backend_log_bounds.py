"""What a failing backend can make the gateway log is bounded over time, not only per second.

Against a real gateway process: a backend writing stderr without pause logs its burst, then about a line a
second, with its drops counted in one line per interval (and at its end); a backend that stays down logs its
circuit opening once and its recovery once, not two lines every cool-down. On a fake clock: the budget's total
over all backends, and the "still open" reminders at doubling intervals.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from pathlib import Path

import pytest
from mcp import Client

from tests.support import free_port, http_demo_backend, running_gateway, write_config
from tests.test_failure_recovery import backend, eventually, text
from vmcp_opt.backends.transports import STDERR_BURST, STDERR_RATE
from vmcp_opt.config import CircuitBreakerConfig
from vmcp_opt.health.breaker import REMINDER_FIRST, CircuitBreaker, CircuitState
from vmcp_opt.logs import LineBudget

pytestmark = [pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# JSON-RPC by hand. At start, 30 stderr lines (a crash's traceback, say); its tool `flood` writes stderr lines
# without pause for `seconds` and answers how many it wrote.
FLOOD_SERVER = r"""
import json
import sys
import time

for n in range(30):
    sys.stderr.write(f"boot {n}\n")
sys.stderr.flush()
TOOLS = [{"name": "flood", "inputSchema": {"type": "object"}}]


def answer(request_id, result):
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": request_id, "result": result}) + "\n")
    sys.stdout.flush()


for line in sys.stdin:
    message = json.loads(line)
    if "id" not in message or "method" not in message:
        continue
    request_id, method, params = message["id"], message["method"], message.get("params") or {}
    if method == "initialize":
        info = {"name": "flood", "version": "1"}
        answer(request_id, {"protocolVersion": params["protocolVersion"], "capabilities": {"tools": {}}, "serverInfo": info})
    elif method == "tools/list":
        answer(request_id, {"tools": TOOLS})
    elif method == "tools/call":
        written, end = 0, time.monotonic() + params["arguments"]["seconds"]
        while time.monotonic() < end:
            sys.stderr.write("".join(f"flood {written + n}\n" for n in range(200)))
            sys.stderr.flush()
            written += 200
            time.sleep(0.01)
        answer(request_id, {"content": [{"type": "text", "text": str(written)}]})
    else:
        answer(request_id, {})
"""


@pytest.mark.slow
async def test_a_backend_flooding_stderr_logs_its_burst_then_a_line_a_second(tmp_path: Path) -> None:
    script = tmp_path / "flood_server.py"
    script.write_text(FLOOD_SERVER, encoding="utf-8")
    config = {"backends": [{"name": "flood", "command": sys.executable, "args": [str(script)]}]}
    started = time.monotonic()
    with running_gateway(write_config(tmp_path, config)) as gateway:
        async with Client(gateway.url) as client:
            # 4 s: at the old 50 lines a second, at least 150 flood lines in the log.
            written = int(text(await client.call_tool("flood_flood", {"seconds": 4})))
    elapsed = time.monotonic() - started  # the gateway stopped: its count of dropped lines is complete
    log = gateway.output().splitlines()
    assert sum("backend flood stderr: boot " in line for line in log) == 30  # a short burst shows whole
    logged = sum("backend flood stderr: flood " in line for line in log)
    summaries = [line for line in log if "more stderr lines not logged" in line]
    dropped = sum(int(n) for line in summaries for n in re.findall(r"backend flood: (\d+) more stderr lines", line))
    assert logged + dropped == written, (logged, dropped, written)
    assert logged + 30 <= STDERR_BURST + STDERR_RATE * elapsed + 1, f"{logged} of {written} in {elapsed:.1f}s"
    # One count within the interval (a second after the first drop), then one at the backend's end.
    assert len(summaries) <= 2 + int(elapsed // 60), summaries


@pytest.mark.slow
async def test_a_backend_that_stays_down_logs_its_circuit_opening_once_and_its_recovery_once(tmp_path: Path) -> None:
    port = free_port()
    config = {
        "backends": [{"name": "late", "transport": "streamable-http", "url": f"http://127.0.0.1:{port}/mcp"}],
        "health": {"interval": 0.05, "timeout": 1.0},
        "failure": {
            "circuit_breaker": {"failure_threshold": 1, "cooldown": 0.1, "trial_calls": 1},
            "restart": {"initial_delay": 0.2, "max_delay": 0.5},
        },
    }
    with running_gateway(write_config(tmp_path, config)) as gateway:
        # Each trial while down opens the circuit again: many cool-downs pass.
        await eventually(lambda: backend(gateway, "late")["circuit"]["times_opened"] >= 8, what="8 openings")
        with http_demo_backend(port):
            await eventually(lambda: backend(gateway, "late")["circuit"]["state"] == "closed", what="closed")
            log = gateway.output().splitlines()  # before the backend stops again
    circuit = [line for line in log if "backend late circuit" in line]
    assert sum("circuit closed -> open" in line for line in circuit) == 1, circuit
    recovered = [line for line in circuit if "-> closed: recovered after" in line]
    assert len(recovered) == 1 and re.search(r"\(\d+ failed trials\)", recovered[0]), circuit
    assert len(circuit) == 2, circuit  # the trials between were logged at debug


def test_a_breaker_down_for_hours_reminds_at_doubling_intervals(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    breaker = CircuitBreaker("down", CircuitBreakerConfig(failure_threshold=1, cooldown=10.0), clock=lambda: now[0])
    caplog.set_level(logging.DEBUG, logger="vmcp_opt.health.breaker")
    breaker.record_failure("refused", admitted=False)
    while now[0] < 3 * 3600:  # a health check every 5 s for three hours
        now[0] += 5.0
        breaker.record_failure("refused", admitted=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert breaker.state is CircuitState.OPEN and breaker.failed_trials > 1000
    assert (
        warnings[0] == "backend down circuit closed -> open: 1 consecutive failures, last: refused; trial calls in 10s"
    )
    # After 5, 15, 35, 75 and 135 minutes (gaps of 10, 20, 40, then 60): 5 in 3 hours, not 2 lines every 10 s.
    reminders = warnings[1:]
    assert len(reminders) == 5, reminders
    assert reminders[0].startswith(f"backend down circuit still open after {int(REMINDER_FIRST // 60)}m ")
    assert "trials failed, last: refused); trial calls every 10s" in reminders[0]
    breaker.trial()
    breaker.record_success(admitted=False)
    breaker.record_success(admitted=False)
    breaker.record_success(admitted=False)
    assert breaker.state is CircuitState.CLOSED
    assert caplog.records[-1].getMessage().startswith("backend down circuit half_open -> closed: recovered after 3h ")


def test_the_line_budget_bounds_each_source_and_all_of_them_and_counts_the_rest_once_an_interval() -> None:
    now = [0.0]
    budget = LineBudget(burst=10, rate=1.0, total_burst=15, total_rate=2.0, interval=60.0, clock=lambda: now[0])
    assert sum(budget.allow("a") for _ in range(100)) == 10  # the burst, then nothing until time passes
    assert sum(budget.allow("b") for _ in range(100)) == 5  # the total's rest: 15 in all
    assert budget.summary() is None  # not a second after the first drop yet
    now[0] = 1.0
    assert budget.summary() == {"a": 90, "b": 95}
    for second in range(2, 62):  # a minute of both writing without pause: 2 lines a second in all
        now[0] = float(second)
        for _ in range(100):
            budget.allow("a")
            budget.allow("b")
        assert (budget.summary() is None) == (second < 61)
    assert budget.take_dropped("a") == 0 and budget.take_dropped("b") == 0
