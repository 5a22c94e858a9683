"""`/metrics` shows what the limits bound, read at scrape time: requests running now (`vmcp_requests_in_flight`),
bytes of answers clients leave unread (`vmcp_held_answer_bytes`), GET and listen streams open
(`vmcp_streams_open`). A soak found no gauge for any of them: an operator could not see a limit coming.

A real `vmcp serve` over the demo backend, the SDK's client, `/metrics` scraped over HTTP.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import Client

from tests.support import demo_backend, raw_session, running_gateway, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

GAUGES = ("vmcp_requests_in_flight", "vmcp_held_answer_bytes", "vmcp_streams_open")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def gauges(base: str) -> dict[str, float]:
    text = httpx2.get(f"{base}/metrics", timeout=30).text
    return {name: float(value) for name, value in re.findall(r"^(vmcp_\w+) (\S+)$", text, re.MULTILINE)}


async def until(check: object, what: str, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what} not seen within {within}s"
        await anyio.sleep(0.1)


async def test_the_gauges_follow_a_running_call_and_an_open_stream(tmp_path: Path) -> None:
    config = {"backends": [demo_backend("notes")], "telemetry": {"metrics": {"enabled": True}}}
    with running_gateway(write_config(tmp_path, config)) as gateway:
        idle = gauges(gateway.base)
        assert {name: idle.get(name) for name in GAUGES} == dict.fromkeys(GAUGES, 0.0), idle
        async with Client(gateway.url) as client, anyio.create_task_group() as group:
            group.start_soon(client.call_tool, "notes_slow_echo", {"message": "x", "seconds": 60})
            await until(lambda: gauges(gateway.base)["vmcp_requests_in_flight"] == 1, "the running call")
            group.cancel_scope.cancel()  # the client cancels: the gateway lets the call go
        await until(lambda: gauges(gateway.base)["vmcp_requests_in_flight"] == 0, "the call's end")

        headers = raw_session(gateway.url)
        with httpx2.stream("GET", gateway.url, headers=headers, timeout=30) as stream:
            assert stream.status_code == 200
            await until(lambda: gauges(gateway.base)["vmcp_streams_open"] == 1, "the open GET stream")
        await until(lambda: gauges(gateway.base)["vmcp_streams_open"] == 0, "the GET stream's close")
