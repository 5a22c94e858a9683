"""A streamable HTTP backend that hangs (SIGSTOP: its socket still accepts, nothing answers), through a real
gateway: each failed health ping is a verdict at its deadline (`health.timeout`), not once the SDK's clean-up of
the abandoned request (its courtesy cancel, which the wedged transport holds up to 5 s) is over, so the backend
is reported unhealthy after `unhealthy_threshold` pings, within the operator's bound; and a call on it returns
at its `timeouts.call` deadline, not 5 s later."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.session import ClientRequestContext

from tests.support import Gateway, running_gateway, write_config
from tests.test_chaos20_http_stall import _everything_over_http

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

# threshold 3 x timeout 0.3 s + 2 intervals of 0.2 s: 1.3 s. Six times that, for two loaded cores, and still below
# the old behaviour (each failed ping after the first held ~5 s more by the SDK's courtesy cancel: ≥ 11 s).
UNHEALTHY_WITHIN = 8.0
HEALTH_MOVE = re.compile(r"backend web health: (\w+) -> (\w+) \((.*)\)")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _web(gateway: Gateway) -> dict[str, Any]:
    answer = httpx2.get(f"{gateway.base}/readyz", timeout=5)
    body = answer.json()
    (backend,) = [b for b in body["backends"] if b["name"] == "web"]
    return {**backend, "readyz": (answer.status_code, body["status"])}


async def _until(gateway: Gateway, health: str, within: float = 30.0) -> dict[str, Any]:
    """The backend's `/readyz` entry once its health is `health`, or the last one seen after `within` seconds."""
    deadline = time.monotonic() + within
    backend = _web(gateway)
    while backend["health"]["state"] != health and time.monotonic() < deadline:
        await anyio.sleep(0.05)
        backend = _web(gateway)
    return backend


async def test_a_hung_http_backend_is_unhealthy_after_exactly_threshold_pings_at_their_deadlines(
    tmp_path: Path,
) -> None:
    with _everything_over_http() as (server, url):
        config = {
            "backends": [{"name": "web", "transport": "streamable-http", "url": url}],
            "health": {"interval": 0.2, "timeout": 0.3, "unhealthy_threshold": 3},
            "timeouts": {"connect": 2},
            # No new session while the test looks: the verdicts are the pings' on the hung one.
            "failure": {"restart": {"initial_delay": 30, "max_delay": 30}},
        }
        with running_gateway(write_config(tmp_path, config)) as gateway:
            assert (await _until(gateway, "healthy"))["health"]["state"] == "healthy", gateway.output()
            server.send_signal(signal.SIGSTOP)
            try:
                hung_at = time.monotonic()
                backend = await _until(gateway, "unhealthy")
                took = time.monotonic() - hung_at
            finally:
                server.send_signal(signal.SIGCONT)
            output = gateway.output()
            assert backend["health"]["state"] == "unhealthy", output
            assert took < UNHEALTHY_WITHIN, f"unhealthy only {took:.1f}s after the backend hung\n{output}"
            assert backend["readyz"] == (503, "degraded"), backend
            # Healthy -> degraded on the first timed-out ping, degraded -> unhealthy on the third: one verdict a ping.
            moves = [m.groups() for m in HEALTH_MOVE.finditer(output)]
            since_hung = moves[[to for _, to, _ in moves].index("degraded") :]
            assert [(before, after) for before, after, _ in since_hung[:2]] == [
                ("healthy", "degraded"),
                ("degraded", "unhealthy"),
            ], output
            timed_out = ("ping timed out after 0.3s", "no ping sent: the previous one, timed out after 0.3s")
            assert all(reason.startswith(timed_out) for _, _, reason in since_hung[:2]), output
            # The check that made it unhealthy says how many failed pings it took: exactly the threshold.
            assert re.search(
                r"backend web failed: unhealthy after 3 failed pings: (ping|no ping sent: the previous one,) timed out after 0\.3s",
                output,
            ), output
            assert "Traceback" not in output, output


async def _sampling(context: ClientRequestContext, params: types.CreateMessageRequestParams) -> types.ErrorData:
    return types.ErrorData(code=types.INVALID_REQUEST, message="unused")


# A client that declares sampling gets a session of its own at the backend (backends/session_pool.py): its calls
# are given up on the same way.
@pytest.mark.parametrize("session", ["shared", "dedicated"])
async def test_a_call_to_a_hung_http_backend_returns_at_its_deadline_each_time(tmp_path: Path, session: str) -> None:
    with _everything_over_http() as (server, url):
        config = {
            "backends": [{"name": "web", "transport": "streamable-http", "url": url}],
            "health": {"enabled": False},  # the calls alone: no reconnect while they run
            "timeouts": {"call": 0.5},
            "failure": {"circuit_breaker": {"failure_threshold": 100}},
        }
        with running_gateway(write_config(tmp_path, config)) as gateway:
            sampling = _sampling if session == "dedicated" else None
            async with Client(gateway.url, mode="legacy", sampling_callback=sampling) as client:
                result = await client.call_tool("web_echo", {"message": "up"})
                assert not result.is_error, result
                server.send_signal(signal.SIGSTOP)
                took = []
                # From the second on, the transport is still posting the first's courtesy cancel: their requests cannot
                # even be written, and the SDK's cancel of each waited for that.
                for attempt in range(3):
                    started = time.monotonic()
                    result = await client.call_tool("web_echo", {"message": f"hung {attempt}"})
                    took.append(time.monotonic() - started)
                    assert result.is_error, result
                    assert "did not answer within 0.5s" in str(result.content) or "timed out" in str(result.content)
        # Stopped while the backend still hangs, the last call's cancellation still pending in the background: a
        # clean exit all the same (the session's DELETE, unanswered, is given up on after 5 s as before).
        output = gateway.output()
        # The first ends at 0.5 s (the SDK's read timeout), the others at the call deadline's 1 s grace (1.5 s); each
        # after the first took 5 s more before (6.5 s), the SDK's bound on its courtesy cancel.
        assert max(took) < 5.0, f"calls took {[round(t, 2) for t in took]}\n{output}"
        assert gateway.proc.returncode == 0, output
        assert "Traceback" not in output and "Task was destroyed" not in output, output
