"""A workflow's steps in the audit log, over a real gateway, real backends (a flaky one, the notes demo) and a real
MCP client: each step started and ended (attempts, retries, duration), a step its condition skipped (naming the
condition), a for_each of hundreds of items as one step event with its counts, and a run that ran out of its
timeout as `workflow_timed_out`; every event of a run carries the run's `workflow_id`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from tests.support import EXAMPLES, Gateway, demo_backend, running_gateway, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

ITEMS = 300
WORKFLOWS: list[dict[str, Any]] = [
    {
        "name": "fetch_then_maybe_note",
        "description": "Fetches from a flaky service (retried), then notes it only when asked to.",
        "parameters": {
            "type": "object",
            "properties": {"key": {"type": "string"}, "note": {"type": "boolean", "default": False}},
            "required": ["key"],
        },
        "steps": [
            {
                "id": "fetch",
                "tool": "flaky_unreliable_fetch",
                "arguments": {"key": "{{ params.key }}"},
                "on_error": {"action": "retry", "retries": 3, "delay": 0.01},
            },
            {
                "id": "note",
                "tool": "notes_save_note",
                "depends_on": ["fetch"],
                "condition": "{{ params.note }}",
                "arguments": {"title": "{{ params.key }}", "text": "{{ steps.fetch.output.value }}"},
            },
        ],
    },
    {
        "name": "fan_out",
        "description": "Asks the notes backend who it sees, once per item.",
        "steps": [
            {
                "id": "each",
                "type": "for_each",
                "tool": "notes_whoami",
                "over": f"{{{{ range({ITEMS}) | list }}}}",
                "max_iterations": ITEMS,
                "max_parallel": 10,
            }
        ],
    },
    {
        "name": "too_slow",
        "description": "A step that outlasts the workflow's timeout.",
        "timeout": 0.5,
        "steps": [{"id": "wait", "tool": "notes_slow_echo", "arguments": {"message": "hi", "seconds": 30}}],
    },
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Path]]:
    directory = tmp_path_factory.mktemp("wfaudit21")
    config = {
        "backends": [
            {"name": "flaky", "command": sys.executable, "args": [str(EXAMPLES / "backends" / "flaky_server.py")]},
            demo_backend("notes"),
        ],
        "workflows": WORKFLOWS,
        "telemetry": {"audit": {"enabled": True, "output": "audit.log", "flush_interval": 0}},
    }
    with running_gateway(write_config(directory, config)) as running:
        yield running, directory / "audit.log"


def run_events(audit: Path, workflow: str, end: str) -> list[dict[str, Any]]:
    """The events of the one run of `workflow` once its `end` event is written (the writer is a thread)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        events = [json.loads(line) for line in audit.read_text().splitlines()] if audit.exists() else []
        ends = [e for e in events if e["type"] == end and e["target"].get("workflow_name") == workflow]
        if ends:
            [last] = ends
            return [e for e in events if e["target"].get("workflow_id") == last["target"]["workflow_id"]]
        time.sleep(0.05)
    raise AssertionError(f"no {end} of {workflow} in {audit}")


def steps(events: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    return [(e["type"], e["target"].get("step_id")) for e in events]


async def test_a_retried_step_and_a_skipped_one_each_have_their_events(gateway: tuple[Gateway, Path]) -> None:
    running, audit = gateway
    async with Client(running.url) as client:
        result = await client.call_tool("fetch_then_maybe_note", {"key": "audited"})
    assert not result.is_error
    events = run_events(audit, "fetch_then_maybe_note", "workflow_completed")
    assert steps(events) == [
        ("workflow_started", None),
        ("workflow_step_started", "fetch"),
        ("workflow_step_completed", "fetch"),
        ("workflow_step_skipped", "note"),
        ("workflow_completed", None),
    ]
    started, _, fetched, skipped, completed = events
    assert started["metadata"]["extra"]["timeout_ms"] == 300_000
    assert completed["metadata"]["extra"]["step_count"] == 2
    # Three calls (two failures, then the answer) are one step event: no event per attempt.
    extra = fetched["metadata"]["extra"]
    assert (extra["attempts"], extra["retry_count"], extra["calls"]) == (3, 2, 3)
    assert extra["duration_ms"] > 0 and fetched["outcome"] == "success"
    assert fetched["target"] | {"workflow_id": "-"} == {
        "method": "tools/call",
        "type": "workflow_step",
        "name": "flaky_unreliable_fetch",
        "backend": "flaky",
        "workflow_id": "-",
        "workflow_name": "fetch_then_maybe_note",
        "step_id": "fetch",
        "step_type": "tool",
    }
    assert skipped["metadata"]["extra"]["condition"] == "{{ params.note }}" and skipped["outcome"] == "success"
    assert {e["subjects"]["caller_id"] for e in events} == {started["subjects"]["caller_id"]}


async def test_a_for_each_of_hundreds_of_items_is_one_step_event_with_its_counts(gateway: tuple[Gateway, Path]) -> None:
    running, audit = gateway
    async with Client(running.url) as client:
        result = await client.call_tool("fan_out", {})
    assert not result.is_error
    events = run_events(audit, "fan_out", "workflow_completed")
    assert steps(events) == [
        ("workflow_started", None),
        ("workflow_step_started", "each"),
        ("workflow_step_completed", "each"),
        ("workflow_completed", None),
    ]
    extra = events[2]["metadata"]["extra"]
    assert (extra["items"], extra["items_done"], extra["calls"], extra["attempts"]) == (ITEMS, ITEMS, ITEMS, ITEMS)
    assert events[2]["target"]["step_type"] == "for_each" and events[2]["target"]["backend"] == "notes"
    # Nor anywhere else in the log: the items' calls wrote no event of their own.
    everything = [json.loads(line) for line in audit.read_text().splitlines()]
    assert not [e for e in everything if e["target"].get("name") == "notes_whoami" and "step_id" not in e["target"]]


async def test_a_run_past_its_timeout_is_timed_out_and_its_running_step_failed_by_the_deadline(
    gateway: tuple[Gateway, Path],
) -> None:
    running, audit = gateway
    async with Client(running.url) as client:
        result = await client.call_tool("too_slow", {})
    assert result.is_error
    events = run_events(audit, "too_slow", "workflow_timed_out")
    assert steps(events) == [
        ("workflow_started", None),
        ("workflow_step_started", "wait"),
        ("workflow_step_failed", "wait"),
        ("workflow_timed_out", None),
    ]
    failed, timed_out = events[2], events[3]
    # The gateway's own deadline ended the call: a failure (as the call's own event says), not a cancel.
    assert (failed["outcome"], failed["metadata"]["extra"]["error_type"]) == ("failure", "TimeoutError")
    assert (failed["metadata"]["extra"]["attempts"], failed["metadata"]["extra"]["calls"]) == (1, 1)
    assert timed_out["outcome"] == "application_error" and timed_out["metadata"]["extra"]["step_count"] == 1


def test_include_and_exclude_accept_the_step_and_timed_out_types(tmp_path: Path) -> None:
    audit = {
        "enabled": True,
        "output": "audit.log",
        "include": ["workflow_step_started", "workflow_step_skipped", "workflow_timed_out"],
        "exclude": ["workflow_step_completed"],
    }
    path = write_config(tmp_path, {"backends": [demo_backend("notes")], "telemetry": {"audit": audit}})
    checked = subprocess.run(
        [sys.executable, "-m", "vmcp_opt", "validate", "-c", str(path)], capture_output=True, text=True, timeout=120
    )
    assert checked.returncode == 0, checked.stderr
