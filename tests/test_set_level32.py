"""`logging/setLevel` costs backends only when something changes, and is paid for as other forwarded requests are.

A client's log level is sent to each backend with logging, on the client's dedicated sessions. Repeating the level
it holds reached every backend again (one request per backend per setLevel, as fast as the client sent them); now it
reaches none, while a new level does, and a session opened later (one reaped when idle, reopened) is told the level
as it opens. And a setLevel pays the caller's token as `resources/read` does: past the burst, HTTP 429, counted and
audited.

Over real processes: `vmcp serve` over tests/set_level_backend32.py, a stdio backend that records each setLevel it
is sent with its process id, the SDK's client (2025-11-25) and, for the refusal's status, plain HTTP.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.shared.exceptions import MCPError

from tests.support import metric_sample, raw_session, running_gateway, wait_until, write_config

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")]

BACKEND = Path(__file__).resolve().parent / "set_level_backend32.py"
SETTING = "rate_limits.per_caller"


def config(record: Path, **extra: Any) -> dict[str, Any]:
    backend = {"name": "levels", "command": sys.executable, "args": [str(BACKEND), str(record)]}
    return {"backends": [backend], **extra}


def lines(record: Path, word: str) -> list[list[str]]:
    """The record's lines starting with `word`, split."""
    found = record.read_text(encoding="utf-8").splitlines() if record.exists() else []
    return [line.split()[1:] for line in found if line.split()[0] == word]


def levels(record: Path) -> list[tuple[str, str]]:
    """Each setLevel a backend process was sent: (level, its process id), in order."""
    return [(level, pid) for level, pid in lines(record, "level")]


@pytest.fixture
def record(tmp_path: Path) -> Path:
    return tmp_path / "record.txt"


def test_an_unchanged_log_level_reaches_no_backend_and_a_new_one_does(tmp_path: Path, record: Path) -> None:
    told: list[list[tuple[str, str]]] = []

    async def main() -> None:
        async with Client(gateway.url, mode="legacy") as client:
            for level in ("debug", "debug", "info", "info"):
                await client.set_logging_level(level)
                told.append(levels(record))

    with running_gateway(write_config(tmp_path, config(record))) as gateway:
        anyio.run(main)
    pid = told[0][0][1]  # the caller's dedicated session, told once as it opened
    assert told == [
        [("debug", pid)],
        [("debug", pid)],
        [("debug", pid), ("info", pid)],
        [("debug", pid), ("info", pid)],
    ]


def test_a_session_reopened_after_idle_is_told_the_level_once(tmp_path: Path, record: Path) -> None:
    """The caller's session to the backend, reaped when idle, is reopened by its next setLevel and told the level
    as it opens: the level reaches the new process once, and repeating it then reaches nothing."""
    told: list[list[tuple[str, str]]] = []

    async def main() -> None:
        async with Client(gateway.url, mode="legacy") as client:
            await client.set_logging_level("warning")
            first = levels(record)[0][1]
            # Reaped: its process ends.
            await anyio.to_thread.run_sync(lambda: wait_until(lambda: [first] in lines(record, "stop"), 30))
            for _ in range(2):
                await client.set_logging_level("warning")
                told.append(levels(record))

    settings = config(record, limits={"dedicated_idle_timeout": 1.0})
    with running_gateway(write_config(tmp_path, settings)) as gateway:
        anyio.run(main)
    first, second = told[0][0][1], told[0][-1][1]
    assert first != second
    assert told == [[("warning", first), ("warning", second)]] * 2


def answered(response: httpx2.Response) -> dict[str, Any]:
    """The JSON-RPC answer in a 200 (plain JSON, or the one SSE event carrying it)."""
    assert response.status_code == 200, response.text
    if response.headers["content-type"].startswith("application/json"):
        return dict(response.json())
    [data] = [line[5:] for line in response.text.splitlines() if line.startswith("data:") and line[5:].strip()]
    return dict(json.loads(data))


def refusals(audit: Path) -> Iterator[dict[str, Any]]:
    found = audit.read_text(encoding="utf-8").splitlines() if audit.exists() else []
    return (event for event in map(json.loads, found) if event["type"] == "vmcp_rate_limited")


def test_a_set_level_past_the_callers_burst_is_429_counted_and_audited(tmp_path: Path, record: Path) -> None:
    audit = tmp_path / "audit.log"
    settings = config(
        record,
        rate_limits={"per_caller": {"rate": 0.001, "burst": 2}},  # one token in 1000 s: the burst is the budget
        telemetry={"audit": {"enabled": True, "output": str(audit)}, "metrics": {"enabled": True}},
    )
    with running_gateway(write_config(tmp_path, settings)) as gateway:
        headers = raw_session(gateway.url)

        def set_level(request_id: int, level: str) -> httpx2.Response:
            message = {"jsonrpc": "2.0", "id": request_id, "method": "logging/setLevel", "params": {"level": level}}
            return httpx2.post(gateway.url, json=message, headers=headers, timeout=30)

        assert "result" in answered(set_level(1, "debug"))
        assert "result" in answered(set_level(2, "info"))
        refused = set_level(3, "warning")
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["retry-after"]) >= 1
        body = refused.json()
        assert body["id"] == 3 and body["error"]["data"]["limit"] == SETTING
        assert metric_sample(gateway.base, "vmcp_rate_limited_total", setting=SETTING) == 1
        # What the catalogue answers stays free.
        ping = httpx2.post(gateway.url, json={"jsonrpc": "2.0", "id": 4, "method": "ping"}, headers=headers, timeout=30)
        assert "result" in answered(ping)
        wait_until(lambda: any(refusals(audit)), message="no vmcp_rate_limited event")
        event = next(refusals(audit))
    assert event["target"]["method"] == "logging/setLevel" and event["outcome"] == "denied"
    assert event["metadata"]["extra"]["error_type"] == SETTING
    # The refused level reached no backend.
    assert [level for level, _ in levels(record)] == ["debug", "info"]


def test_over_stdio_a_set_level_past_the_burst_is_the_json_rpc_error(tmp_path: Path, record: Path) -> None:
    """Over stdio no HTTP gate pays: the router charges the caller's bucket itself."""
    settings = config(record, rate_limits={"per_caller": {"rate": 0.001, "burst": 2}})
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "vmcp_opt", "serve", "--stdio", "-c", str(write_config(tmp_path, settings))]
    )

    async def main() -> None:
        async with Client(params, mode="legacy") as client:
            await client.set_logging_level("debug")
            await client.set_logging_level("info")
            with pytest.raises(MCPError, match="rate limit reached") as refused:
                await client.set_logging_level("warning")
            assert isinstance(refused.value.error.data, dict) and refused.value.error.data["limit"] == SETTING
            await client.send_ping()  # free

    anyio.run(main)


def test_a_level_set_while_the_backends_connect_reaches_them(tmp_path: Path, record: Path) -> None:
    """A desktop client launches the gateway over stdio and sets its level at once, before the backends have
    connected: the request waits for them (as catalogue requests do, `server.startup_wait`), then tells them."""
    settings = config(record, server={"startup_wait": 60})
    settings["backends"][0]["args"].append("2")  # the backend answers `initialize` 2 s late
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "vmcp_opt", "serve", "--stdio", "-c", str(write_config(tmp_path, settings))]
    )

    async def main() -> list[str]:
        async with Client(params, mode="legacy") as client:
            await client.set_logging_level("debug")
            return [level for level, _ in levels(record)]

    assert anyio.run(main) == ["debug"]
