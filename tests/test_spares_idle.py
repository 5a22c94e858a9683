"""Spare backend sessions for 2026-07-28 round-trip calls are closed once no call took them for
`limits.round_trip_spare_idle_timeout`, and not replaced until a call with their capabilities comes again.

A real gateway fronts the conformance backend over stdio, where every backend session (a spare included) is a
process of its own: the test counts those processes.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator

import anyio
import mcp_types as types
import psutil
import pytest
from mcp import Client
from mcp.client.session import ClientRequestContext

from tests.support import EXAMPLES, Gateway, running_gateway, write_config

pytestmark = [pytest.mark.slow]

CONFORMANCE_SERVER = EXAMPLES / "backends" / "conformance_server.py"
IDLE = 3.0  # limits.round_trip_spare_idle_timeout here: long enough to see the spare, short for the test
READY = "a spare session for 2026-07-28 calls is ready"
EXPIRED = "no call took it within 3s (limits.round_trip_spare_idle_timeout)"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = {
        "backends": [{"name": "conformance", "command": sys.executable, "args": [str(CONFORMANCE_SERVER)]}],
        "aggregation": {"conflict_resolution": "priority"},
        "limits": {"round_trip_spare_idle_timeout": IDLE},
        "health": {"interval": 600},
    }
    with running_gateway(write_config(tmp_path_factory.mktemp("spares-idle"), config)) as running:
        yield running


async def _sampling(
    context: ClientRequestContext, params: types.CreateMessageRequestParams
) -> types.CreateMessageResult:
    return types.CreateMessageResult(
        role="assistant", content=types.TextContent(type="text", text="fine"), model="test-model"
    )


async def _round_trip_call(gateway: Gateway) -> None:
    """A tool call of a 2026-07-28 client that can answer sampling: it goes on a backend session of its own."""
    async with Client(gateway.url, sampling_callback=_sampling) as client:
        assert client.protocol_version == "2026-07-28"
        result = await client.call_tool("test_simple_text", {})
        assert not result.is_error


def _backend_pids(gateway: Gateway) -> set[int]:
    found = set()
    for process in gateway.children():
        try:
            if any(str(CONFORMANCE_SERVER) in part for part in process.cmdline()):
                found.add(process.pid)
        except psutil.NoSuchProcess:
            continue  # gone between the listing and the look: not running
    return found


def _logged(gateway: Gateway, line: str) -> int:
    return " ".join(gateway.output().split()).count(line)


def _until(what: str, check: Callable[[], bool], gateway: Gateway, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout}s:\n{gateway.output()[-4000:]}"
        time.sleep(0.05)


def test_an_untaken_spare_is_closed_after_the_idle_period_and_comes_back_with_the_next_call(gateway: Gateway) -> None:
    _until("the shared session alone", lambda: len(_backend_pids(gateway)) == 1, gateway)
    shared = _backend_pids(gateway)
    ready = _logged(gateway, READY)

    anyio.run(_round_trip_call, gateway)
    _until("a spare opened after the call", lambda: _logged(gateway, READY) == ready + 1, gateway)
    # The call's own session closes with the call; the spare's process stays for up to IDLE seconds.
    _until("the shared process and the spare's", lambda: len(_backend_pids(gateway)) == 2, gateway, IDLE)
    spare = _backend_pids(gateway) - shared
    assert len(spare) == 1

    # No call comes: the spare is closed, its process ends, and nothing replaces it.
    _until("the spare closed", lambda: _backend_pids(gateway) == shared, gateway)
    assert _logged(gateway, EXPIRED) == 1
    assert _logged(gateway, READY) == ready + 1

    # A call with those capabilities again: it opens its own session, and a new spare after it.
    anyio.run(_round_trip_call, gateway)
    _until("a new spare", lambda: _logged(gateway, READY) == ready + 2, gateway)
    _until("the shared process and the new spare's", lambda: len(_backend_pids(gateway)) == 2, gateway, IDLE)
    assert not (_backend_pids(gateway) - shared) & spare
