"""Parity with ToolHive's composite tools, over a real `vmcp serve`, the notes demo backend and a real MCP client
answering elicitations: `on_decline`/`on_cancel: skip_remaining` ends a run early as a success (the steps after it
skipped, in the audit log too), and `output_defaults` stand in for output fields that render nothing; a default
its key's `output_schema` refuses is refused at load."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client

from tests.support import Gateway, demo_backend, running_gateway, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

FORM = {"type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"]}
WORKFLOWS: list[dict[str, Any]] = [
    {
        "name": "ask_then_note",
        "description": "Asks for a title, then saves a note under it and searches for it.",
        "parameters": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
        "steps": [
            {"id": "who", "tool": "notes_whoami"},
            {
                "id": "ask",
                "type": "elicitation",
                "depends_on": ["who"],
                "message": "Title?",
                "requested_schema": FORM,
                "on_decline": "skip_remaining",
                "on_cancel": "skip_remaining",
            },
            {
                "id": "save",
                "tool": "notes_save_note",
                "depends_on": ["ask"],
                "arguments": {"title": "{{ steps.ask.output.content.title }}", "text": "{{ params.text }}"},
            },
            {
                "id": "find",
                "tool": "notes_search_notes",
                "depends_on": ["save"],
                "arguments": {"query": "{{ params.text }}"},
            },
        ],
        "output": {
            "answer": "{{ steps.ask.output.action }}",
            "who": "{{ steps.who.output.name }}",
            "saved": "{{ steps.save.output.result }}",
            "skipped": "{{ steps.ask.output.skipped }}",
        },
        "output_defaults": {"saved": "not saved", "skipped": False},
    },
    {
        "name": "note_or_defaults",
        "description": "A step that fails under continue; the output's defaults stand in for what it would give.",
        "steps": [
            {"id": "bad", "tool": "notes_save_note", "arguments": {"title": "no text"}, "on_error": "continue"},
            {"id": "who", "tool": "notes_whoami"},
        ],
        "output": {
            "saved": "{{ steps.bad.output }}",
            "length": "{{ steps.bad.output | length }}",
            "who": "{{ steps.who.output.name }}",
        },
        "output_defaults": {"saved": "nothing saved", "length": 0},
        "output_schema": {
            "type": "object",
            "properties": {"saved": {"type": "string"}, "length": {"type": "integer"}, "who": {"type": "string"}},
        },
    },
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Path]]:
    directory = tmp_path_factory.mktemp("parity33")
    config = {
        "backends": [demo_backend("notes", env={"DEMO_NAME": "notes"})],
        "workflows": WORKFLOWS,
        "telemetry": {"audit": {"enabled": True, "output": "audit.log", "flush_interval": 0}},
    }
    with running_gateway(write_config(directory, config)) as running:
        yield running, directory / "audit.log"


def text(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


def completed_runs(audit: Path, workflow: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every event so far, and the `workflow_completed` events of `workflow` among them."""
    events = [json.loads(line) for line in audit.read_text().splitlines()] if audit.exists() else []
    ends = [e for e in events if e["type"] == "workflow_completed" and e["target"].get("workflow_name") == workflow]
    return events, ends


def run_events(audit: Path, workflow: str, before: int) -> list[dict[str, Any]]:
    """The events of the run of `workflow` that completed after `before` others, once its end is written (the
    writer is a thread, so the run's end may come after the client's answer)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        events, ends = completed_runs(audit, workflow)
        if len(ends) > before:
            return [e for e in events if e["target"].get("workflow_id") == ends[before]["target"]["workflow_id"]]
        time.sleep(0.05)
    raise AssertionError(f"no workflow_completed of {workflow} in {audit}")


async def asking(
    url: str, reply: types.ElicitResult, calls: list[tuple[str, dict[str, Any]]], mode: str = "legacy"
) -> list[Any]:
    async def elicitation(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        return reply

    async with Client(url, mode=mode, elicitation_callback=elicitation) as client:  # type: ignore[arg-type]
        return [await client.call_tool(name, arguments) for name, arguments in calls]


# legacy: elicitation/create on the call's stream; auto (2026-07-28): the run waits as a round between two calls.
@pytest.mark.parametrize(("action", "mode"), [("decline", "legacy"), ("cancel", "auto")])
async def test_skip_remaining_ends_the_run_as_a_success_with_the_steps_that_ran(
    gateway: tuple[Gateway, Path], action: str, mode: str
) -> None:
    running, audit = gateway
    before = len(completed_runs(audit, "ask_then_note")[1])
    words = f"parity-{action}"
    calls = [("ask_then_note", {"text": words}), ("notes_search_notes", {"query": words})]
    reply = types.ElicitResult(action=action)  # type: ignore[arg-type]
    result, search = await asking(running.url, reply, calls, mode)
    assert not result.is_error, text(result)
    assert result.structured_content == {"answer": action, "who": "notes", "saved": "not saved", "skipped": True}
    assert json.loads(text(search) or "[]") == []  # `save` never ran
    events = run_events(audit, "ask_then_note", before)
    skipped = {e["target"]["step_id"]: e for e in events if e["type"] == "workflow_step_skipped"}
    assert set(skipped) == {"save", "find"}
    assert {e["metadata"]["extra"]["blocked_by"] for e in skipped.values()} == {"ask"}
    completed = [e["target"]["step_id"] for e in events if e["type"] == "workflow_step_completed"]
    assert sorted(completed) == ["ask", "who"]


async def test_an_accepted_answer_runs_every_step_and_no_default_is_used(gateway: tuple[Gateway, Path]) -> None:
    running, audit = gateway
    before = len(completed_runs(audit, "ask_then_note")[1])
    reply = types.ElicitResult(action="accept", content={"title": "kept"})
    [result] = await asking(running.url, reply, [("ask_then_note", {"text": "parity-accept"})])
    assert not result.is_error, text(result)
    events = run_events(audit, "ask_then_note", before)  # written, so the next test counts this run
    assert not [e for e in events if e["type"] == "workflow_step_skipped"]
    assert result.structured_content == {
        "answer": "accept",
        "who": "notes",
        "saved": "saved note 'kept' (13 characters)",
        "skipped": False,  # the default: an accepted answer has no `skipped`
    }


async def test_output_defaults_stand_in_for_a_step_that_failed_under_continue(gateway: tuple[Gateway, Path]) -> None:
    running, _ = gateway
    async with Client(running.url) as client:
        result = await client.call_tool("note_or_defaults", {})
    assert not result.is_error, text(result)
    assert result.structured_content == {"saved": "nothing saved", "length": 0, "who": "notes"}


def test_a_default_its_output_schema_refuses_and_skip_remaining_are_checked_at_load(tmp_path: Path) -> None:
    workflow = {
        **WORKFLOWS[1],
        "output_defaults": {"length": "zero", "missing": 1},
        "steps": [{**WORKFLOWS[0]["steps"][1], "depends_on": [], "on_decline": "skip_everything"}],
    }
    config = write_config(tmp_path, {"backends": [demo_backend("notes")], "workflows": [workflow]})
    done = subprocess.run(
        [sys.executable, "-m", "vmcp_opt", "validate", "-c", str(config)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert (
        "workflows[0].steps[0].on_decline: Input should be 'abort', 'continue' or 'skip_remaining'"
        in done.stdout + done.stderr
    )
    workflow["steps"] = [{**workflow["steps"][0], "on_decline": "skip_remaining"}]
    config = write_config(tmp_path, {"backends": [demo_backend("notes")], "workflows": [workflow]})
    done = subprocess.run(
        [sys.executable, "-m", "vmcp_opt", "validate", "-c", str(config)], capture_output=True, text=True, timeout=60
    )
    said = done.stdout + done.stderr
    assert done.returncode != 0
    assert (
        "workflows[0].output_defaults.length: does not fit output_schema.properties.length: 'zero' is not of type 'integer'"
        in said
    )
    assert "workflows[0].output_defaults.missing: not a key of `output`" in said


HELD_SERVER = Path(__file__).resolve().parents[1] / "examples" / "backends" / "held_server.py"


def waiting_for_a_slot(gate: Path) -> dict[str, Any]:
    """`hold` takes the run's one slot first (its arguments are literal: nothing to render before its call), so
    `save` and the for_each's items wait for it while `ask` is answered; `gate` ends `hold` once it is."""
    note = {"tool": "notes_save_note", "arguments": {"title": "after-skip", "text": "parity-slot"}}
    return {
        "name": "skip_while_waiting",
        "description": "A held step keeps the only slot while the user is asked; two steps wait for it.",
        "max_parallel": 1,
        "steps": [
            {"id": "hold", "tool": "held_held_echo", "arguments": {"message": "held", "gate": str(gate)}},
            {**WORKFLOWS[0]["steps"][1], "depends_on": [], "on_cancel": "abort"},
            {"id": "save", **note},
            {"id": "each", "type": "for_each", "over": '["a", "b"]', "default_result": "not saved", **note},
        ],
    }


async def test_skip_remaining_stops_steps_that_were_waiting_for_a_slot(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    held = {"name": "held", "command": sys.executable, "args": [str(HELD_SERVER)]}
    config = {
        "backends": [demo_backend("notes"), held],
        "workflows": [waiting_for_a_slot(gate)],
        "telemetry": {"audit": {"enabled": True, "output": "audit.log", "flush_interval": 0}},
    }
    audit = tmp_path / "audit.log"

    async def open_gate_once_answered() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            events = completed_runs(audit, "")[0]
            if any(e["type"] == "workflow_step_completed" and e["target"].get("step_id") == "ask" for e in events):
                gate.touch()
                return
            await anyio.sleep(0.05)
        gate.touch()  # the test fails on its assertions, not by hanging

    with running_gateway(write_config(tmp_path, config)) as running:
        async with anyio.create_task_group() as group:
            group.start_soon(open_gate_once_answered)
            reply = types.ElicitResult(action="decline")
            calls = [("skip_while_waiting", {}), ("notes_search_notes", {"query": "parity-slot"})]
            result, search = await asking(running.url, reply, calls)
        assert not result.is_error, text(result)
        assert not search.is_error, text(search)
        assert "after-skip" not in text(search)  # neither `save` nor an item of `each` ran
        events = run_events(audit, "skip_while_waiting", 0)
    skipped = {e["target"]["step_id"]: e for e in events if e["type"] == "workflow_step_skipped"}
    assert set(skipped) == {"save", "each"}
    assert {e["metadata"]["extra"]["blocked_by"] for e in skipped.values()} == {"ask"}
    completed = [e["target"]["step_id"] for e in events if e["type"] == "workflow_step_completed"]
    assert sorted(completed) == ["ask", "hold"]
