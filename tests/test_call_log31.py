"""The per-call log line (`tool call <tool> by <caller>: ok in <ms>`) is bounded: at most `server.call_log_rate` a
second (bursts of five seconds' worth), the next line let through saying how many were not logged; 0 writes none.
Before, every call wrote its line: a client calling as fast as it could made the gateway write as many (a soak
measured 94 % of the log so).

A real `vmcp serve` over the demo backend, the SDK's client, the gateway's own log.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import anyio
import pytest
from mcp import Client

from tests.support import demo_backend, running_gateway, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

CALLS = 30
LINE = re.compile(r"tool call notes_whoami by \S+: ok in [\d.]+ ms(?: \(and (\d+) more like it not logged: ([^)]*)\))?")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def lines(log: str) -> list[re.Match[str]]:
    return list(LINE.finditer(" ".join(log.split())))


async def test_a_burst_of_calls_is_logged_at_the_rate_and_the_rest_counted(tmp_path: Path) -> None:
    config = {"backends": [demo_backend("notes")], "server": {"call_log_rate": 1}}
    with running_gateway(write_config(tmp_path, config)) as gateway:
        async with Client(gateway.url) as client:
            started = time.monotonic()
            for _ in range(CALLS):
                assert not (await client.call_tool("notes_whoami", {})).is_error
            flood = time.monotonic() - started
            await anyio.sleep(1.2)  # the bucket refills a token a second: the next call's line is let through, and
            # says how many were held back since the last line (some were: the burst is five)
            assert not (await client.call_tool("notes_whoami", {})).is_error
        logged = lines(gateway.output())
    # A burst of five, then one a second while the calls went on; the call after the pause is logged.
    assert 5 <= len(logged) <= 5 + int(flood) + 2 < CALLS + 1, (len(logged), flood)
    held = sum(int(line.group(1) or 0) for line in logged)
    assert len(logged) + held == CALLS + 1, [line.group(0) for line in logged]
    said = {line.group(2) for line in logged if line.group(1) is not None}
    assert said == {"server.call_log_rate is 1 a second"}, said


async def test_a_rate_of_zero_writes_no_call_line(tmp_path: Path) -> None:
    config = {"backends": [demo_backend("notes")], "server": {"call_log_rate": 0}}
    with running_gateway(write_config(tmp_path, config)) as gateway:
        async with Client(gateway.url) as client:
            assert not (await client.call_tool("notes_whoami", {})).is_error
        output = gateway.output()
    assert "tool call" not in output, output
