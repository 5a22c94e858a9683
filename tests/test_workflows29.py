"""Workflow fixes of session 29, over a real `vmcp serve`, a real stdio backend that records the calls it starts and
those cancelled (tests/recording_backend29.py) and a real SDK client:

- a client cancelling a run of 40 parallel calls cancels all 40 at the backend (the transport's courtesy cancels are
  written in turn, not dropped past 16 merely queued: backends/courtesy_cancels.py);
- what runs hold of their steps' outputs is bounded per caller (`limits.held_answer_bytes`, workflows/budget.py):
  past it a step fails naming the bound, and a run's charge is released when it ends;
- a parameter both required and given a `default` may be left out;
- `workflow_step_started` is written when a step gets its call slot, not while it waits for one."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client

from tests.support import Gateway, running_gateway, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

BACKEND = Path(__file__).with_name("recording_backend29.py")
WIDE = 40  # parallel calls of one run, well past the 16 cancels the transport used to take
BIG = 900_000  # characters of each held output: a run of 10 holds ~8.6 MiB (under limits.max_result_bytes)
RUNS = 10  # runs at once of one caller: ~86 MiB together, past held_answer_bytes.per_caller's 64 MiB
WAIT = 30.0  # seconds to wait for what the backend records (a bound on a failing test, not an assertion)

WORKFLOWS: list[dict[str, Any]] = [
    {
        "name": "wide",
        "description": "Calls that sleep, side by side.",
        "max_parallel": 64,
        "steps": [{"id": f"s{i}", "tool": "rec_sleepy", "arguments": {"tag": f"wide{i}"}} for i in range(WIDE)],
    },
    {
        "name": "hold_big",
        "description": "Holds ten large outputs until the gate opens.",
        "parameters": {"type": "object", "properties": {"tag": {"type": "string"}}, "required": ["tag"]},
        "steps": [
            {
                "id": "f",
                "type": "for_each",
                "tool": "rec_big",
                "over": "{{ range(10) | list }}",
                "arguments": {"n": BIG},
            },
            {"id": "g", "tool": "rec_gated", "depends_on": ["f"], "arguments": {"tag": "{{ params.tag }}"}},
        ],
        "output": {"count": "{{ steps.f.output | length }}"},
    },
    {
        "name": "typed",
        "description": "A required parameter with a default.",
        "parameters": {
            "type": "object",
            "properties": {"n": {"type": "integer"}, "tag": {"type": "string", "default": "dflt"}},
            "required": ["n", "tag"],
        },
        "steps": [{"id": "e", "tool": "rec_echo", "arguments": {"text": "n={{ params.n }}"}}],
        "output": {"n": "{{ steps.e.output }}", "tag": "{{ params.tag }}"},
    },
    {
        "name": "one_at_a_time",
        "description": "Three calls with one slot: the first holds it until the run's timeout.",
        "max_parallel": 1,
        "timeout": 3,
        "steps": [{"id": f"q{i}", "tool": "rec_sleepy", "arguments": {"tag": f"queued{i}"}} for i in range(3)],
    },
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Path]]:
    directory = tmp_path_factory.mktemp("workflows29")
    env = {"RECORD": str(directory / "record.txt"), "GATE": str(directory / "gate")}
    config = {
        "backends": [{"name": "rec", "command": sys.executable, "args": [str(BACKEND)], "env": env}],
        "workflows": WORKFLOWS,
        "optimizer": {"enabled": False},
        "telemetry": {"audit": {"enabled": True, "output": "audit.log", "flush_interval": 0}},
    }
    with running_gateway(write_config(directory, config)) as running:
        yield running, directory


def recorded(directory: Path, word: str, prefix: str) -> set[str]:
    """The tags starting with `prefix` the backend recorded `word` for."""
    path = directory / "record.txt"
    lines = path.read_text().splitlines() if path.exists() else []
    return {tag for kind, tag in (line.split() for line in lines) if kind == word and tag.startswith(prefix)}


async def until(check: Callable[[], bool]) -> None:
    """Until `check()` holds, or WAIT passed (then the test's own assertion says what is missing)."""
    deadline = time.monotonic() + WAIT
    while not check():
        if time.monotonic() > deadline:
            return
        await anyio.sleep(0.05)


async def wait_recorded(directory: Path, word: str, prefix: str, count: int) -> set[str]:
    """Until the backend recorded `word` for `count` tags of `prefix` (or WAIT passed): those tags."""
    await until(lambda: len(recorded(directory, word, prefix)) >= count)
    return recorded(directory, word, prefix)


def text(result: types.CallToolResult) -> str:
    return "".join(block.text for block in result.content if isinstance(block, types.TextContent))


async def test_cancelling_a_run_cancels_every_parallel_call_at_the_backend(served: tuple[Gateway, Path]) -> None:
    running, directory = served
    async with Client(running.url, mode="legacy") as client, anyio.create_task_group() as group:
        group.start_soon(client.call_tool, "wide", {})
        assert len(await wait_recorded(directory, "start", "wide", WIDE)) == WIDE
        group.cancel_scope.cancel()  # the client's notifications/cancelled
    cancelled = await wait_recorded(directory, "cancelled", "wide", WIDE)
    assert cancelled == {f"wide{i}" for i in range(WIDE)}
    assert not recorded(directory, "end", "wide")
    assert "courtesy cancel not sent" not in running.output()


async def test_runs_of_one_caller_hold_step_outputs_up_to_its_bound_and_release_them_when_they_end(
    served: tuple[Gateway, Path],
) -> None:
    running, directory = served
    results: list[types.CallToolResult] = []
    async with Client(running.url) as client:

        async def run(tag: str) -> None:
            results.append(await client.call_tool("hold_big", {"tag": tag}))

        async with anyio.create_task_group() as group:
            for i in range(RUNS):
                group.start_soon(run, f"hold{i}")
            # Every run either holds its ten outputs at the gate or has failed: then the gate opens.
            await until(lambda: len(recorded(directory, "gated", "hold")) + len(results) >= RUNS)
            (directory / "gate").touch()
        refused = [text(r) for r in results if r.is_error]
        passed = [json.loads(text(r)) for r in results if not r.is_error]
        # ~8.6 MiB a run: at most 7 fit in 64 MiB at once, so at least 3 of the 10 were refused, naming the bound.
        assert len(refused) >= 3, refused
        assert all("limits.held_answer_bytes.per_caller" in reason for reason in refused), refused
        assert passed and all(output == {"count": 10} for output in passed)
        # All ended: their charges are released, and a new run holds its outputs again.
        again = await client.call_tool("hold_big", {"tag": "again"})
        assert not again.is_error, text(again)


async def test_a_required_parameter_with_a_default_may_be_left_out(served: tuple[Gateway, Path]) -> None:
    running, _ = served
    async with Client(running.url) as client:
        result = await client.call_tool("typed", {"n": 5})
    assert not result.is_error, text(result)
    assert result.structured_content == {"n": {"result": "n=5"}, "tag": "dflt"}


async def test_a_step_waiting_for_a_slot_is_not_written_as_started(served: tuple[Gateway, Path]) -> None:
    running, directory = served
    async with Client(running.url) as client:
        result = await client.call_tool("one_at_a_time", {})
    assert result.is_error and "timed out" in text(result)
    events = run_events(directory / "audit.log", "one_at_a_time", "workflow_timed_out")
    started = [e["target"]["step_id"] for e in events if e["type"] == "workflow_step_started"]
    ended = [e["target"]["step_id"] for e in events if e["type"] == "workflow_step_failed"]
    # q0 holds the only slot until the timeout; q1 and q2 waited for it, never started, and are ended as cancelled.
    assert started == ["q0"], started
    assert sorted(ended) == ["q0", "q1", "q2"]


def run_events(audit: Path, workflow: str, end: str) -> list[dict[str, Any]]:
    """The events of the one run of `workflow` once its `end` event is written (the writer is a thread)."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        events = [json.loads(line) for line in audit.read_text().splitlines()] if audit.exists() else []
        ends = [e for e in events if e["type"] == end and e["target"].get("workflow_name") == workflow]
        if ends:
            [last] = ends
            return [e for e in events if e["target"].get("workflow_id") == last["target"]["workflow_id"]]
        time.sleep(0.05)
    raise AssertionError(f"no {end} of {workflow} in {audit}")
