"""A stdio backend flooding its stdout (tests/hostile_backend32.py) beside a healthy one, through a real gateway:
junk at full speed gets the backend restarted while the other's calls are answered, a flood of valid log messages
is warned of and counted on /metrics, and an answer dripped past the line cap is refused while it is still coming."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client

from tests.support import demo_backend, metric_sample, running_gateway, wait_until, write_config
from vmcp_opt.backends.stdio import (
    UNUSABLE_RATE,
    UNUSABLE_SECONDS,
    DroppedLine,
    LineAssembler,
    UnusableLines,
    response_id,
)

HOSTILE = Path(__file__).with_name("hostile_backend32.py")
HANG_GUARD = 60.0  # not a bound under test: how long a loaded machine may take before a test gives up


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def hostile(**env: str) -> dict[str, Any]:
    return {"name": "hostile", "command": sys.executable, "args": [str(HOSTILE)], "env": env}


def text(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_backend_writing_junk_without_pause_is_restarted_while_another_is_served(tmp_path: Path) -> None:
    config = {"backends": [hostile(MODE="junk"), demo_backend("notes")]}
    restarted = re.compile(r"backend hostile wrote [\d,]+ stdout lines that are not JSON-RPC")
    with running_gateway(write_config(tmp_path, config)) as gateway:
        calls = 0
        async with Client(gateway.url) as client:
            with anyio.fail_after(HANG_GUARD):
                # The healthy backend's calls all answered while the flood runs, until the gateway gives up on it.
                while not restarted.search(gateway.output()):
                    result = await client.call_tool("notes_search_notes", {"query": "x"})
                    assert not result.is_error, text(result)
                    calls += 1
        assert calls > 0

        def hostile_restarted() -> bool:
            body = httpx2.get(f"{gateway.base}/readyz", timeout=10.0).json()
            return any(b["name"] == "hostile" and b["restarts"] >= 1 for b in body["backends"])

        wait_until(hostile_restarted, HANG_GUARD, gateway.output)
    # One warning a process, naming the backend and the count; its junk is never quoted.
    log = gateway.output()
    assert "the worker is at step" not in log


WARNED = re.compile(r"backend hostile sends log messages at \d+ a second")


def log_flood_config(tmp_path: Path) -> Path:
    config = {
        "backends": [hostile(MODE="logs"), demo_backend("notes")],
        "telemetry": {"metrics": {"enabled": True}},
    }
    return write_config(tmp_path, config)


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_flood_of_valid_log_messages_is_warned_of_once_a_minute(tmp_path: Path) -> None:
    with running_gateway(log_flood_config(tmp_path)) as gateway:
        wait_until(lambda: WARNED.search(gateway.output()), HANG_GUARD, gateway.output)
        async with Client(gateway.url) as client:
            assert not (await client.call_tool("notes_search_notes", {"query": "x"})).is_error
    assert len(WARNED.findall(gateway.output())) == 1


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_backends_messages_are_counted_by_kind_on_metrics(tmp_path: Path) -> None:
    """Read at each scrape through `GatewayState.backend_messages`, which the gateway fills (gateway.py)."""
    with running_gateway(log_flood_config(tmp_path)) as gateway:

        def counted(backend: str, kind: str) -> float:
            return metric_sample(gateway.base, "vmcp_backend_messages_total", backend=backend, kind=kind)

        wait_until(lambda: counted("hostile", "log") > 500, HANG_GUARD, gateway.output)
        assert counted("notes", "response") > 0  # its answers to the listing, at least


@pytest.mark.slow
@pytest.mark.anyio
async def test_an_answer_dripped_past_the_cap_is_refused_before_its_line_ends(tmp_path: Path) -> None:
    stop, ended = tmp_path / "drip.stop", tmp_path / "drip.ended"
    config = {
        "backends": [hostile(DRIP_STOP=str(stop), DRIP_ENDED=str(ended)), demo_backend("notes")],
        "limits": {"max_result_bytes": 100_000},  # a line cap of ~1.1 MB: passed in well under a second
        "timeouts": {"call": 30},  # before: the call waited for the line's end, here for this
    }
    with running_gateway(write_config(tmp_path, config)) as gateway:
        try:
            async with Client(gateway.url) as client:
                with anyio.fail_after(HANG_GUARD):
                    refused = await client.call_tool("hostile_drip", {})
                assert not ended.exists(), "the answer came only once the backend ended its line"
                assert refused.is_error and "more than limits.max_result_bytes" in text(refused), text(refused)
                stop.touch()
                wait_until(ended.exists, HANG_GUARD)
                # The rest of the line was dropped: the backend's next answer is read as usual.
                echoed = await client.call_tool("hostile_echo", {"message": "after"})
                assert not echoed.is_error and "after" in text(echoed), text(echoed)
        finally:
            stop.touch()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_unusable_lines_pass_their_budget_only_when_the_rate_holds_for_its_seconds() -> None:
    clock = Clock()
    lines = UnusableLines(clock)
    for second in range(int(UNUSABLE_SECONDS) + 1):
        assert not lines.over, second
        for _ in range(UNUSABLE_RATE + 1):
            lines.add()
        clock.now += 1.0
    lines.add()  # the last second is judged as the next begins
    assert lines.over and lines.count == (int(UNUSABLE_SECONDS) + 1) * (UNUSABLE_RATE + 1) + 1


def test_a_quiet_second_starts_the_unusable_lines_budget_afresh() -> None:
    clock = Clock()
    lines = UnusableLines(clock)
    for second in range(3 * int(UNUSABLE_SECONDS)):
        quiet = second % int(UNUSABLE_SECONDS) == int(UNUSABLE_SECONDS) - 1
        for _ in range(1 if quiet else UNUSABLE_RATE + 1):
            lines.add()
        clock.now += 1.0
        assert not lines.over, second


def test_an_answer_past_the_cap_is_handed_out_once_as_soon_as_the_cap_is_passed() -> None:
    assembler = LineAssembler(cap=5000)
    head = b'{"jsonrpc": "2.0", "id": 7, "result": {"text": "'
    out = assembler.feed(head) + assembler.feed(b"d" * 6000)
    assert len(out) == 1 and isinstance(out[0], DroppedLine) and out[0].coming and response_id(out[0]) == 7
    assert assembler.feed(b"d" * 6000) == []
    assert assembler.feed(b'"}}\n{"next": 1}\n') == [b'{"next": 1}']  # the rest dropped, the next line whole
