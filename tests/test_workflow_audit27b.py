"""A workflow run that asks its user and is cancelled, in the audit log: one `workflow_started` and exactly one end,
`cancelled`, with the run's `workflow_id`. For a 2026-07-28 client the run goes on in the background after its call
is answered with the question; a client that never comes back has the run cancelled after `timeouts.input`, and that
end is written by the run itself (before, it wrote none). For a 2025-11-25 client that cancels its call, the call's
own event is the end: the run must not write a second. A real `vmcp serve` in front of the conformance backend,
real SDK clients in both eras."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.context import ClientRequestContext
from mcp.client.streamable_http import streamable_http_client

from tests.support import Gateway, policed_config, running_gateway
from tests.test_workflow_audit27 import (
    CONFORMANCE_SERVER,
    MODES,
    POLICY,
    WORKFLOW_ENDS,
    asking_workflow,
    events_since,
    lines,
    named,
)

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

WORKFLOW = "ask_then_succeed"
# Short, so a client that never comes back is given up on quickly; the question's own `timeout` is far longer, so
# the run is cancelled by the client's deadline rather than failed by its step's.
INPUT_TIMEOUT = 1.0
QUESTION_TIMEOUT = 600.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def patient_question(workflow: dict[str, Any]) -> dict[str, Any]:
    steps = [{**step, "timeout": QUESTION_TIMEOUT} if step["id"] == "ask" else step for step in workflow["steps"]]
    return {**workflow, "steps": steps, "timeout": QUESTION_TIMEOUT}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, str, Path]]:
    directory = tmp_path_factory.mktemp("workflow_audit27b")
    config = {
        "backends": [{"name": "conformance", "command": sys.executable, "args": [str(CONFORMANCE_SERVER)]}],
        "aggregation": {"conflict_resolution": "priority"},
        "workflows": [patient_question(asking_workflow(WORKFLOW, "test_simple_text"))],
        "timeouts": {"input": INPUT_TIMEOUT},
        # With data: `events_since`'s marker call is found by its arguments.
        "telemetry": {"audit": {"enabled": True, "output": "audit.log", "include_data": True}},
    }
    path, keys = policed_config(directory, {"alice": ["dev"]}, POLICY, config)
    with running_gateway(path) as gateway:
        yield gateway, keys["alice"], directory / "audit.log"


def silent_client(gateway: Gateway, key: str, mode: str, asked: anyio.Event) -> Client:
    """A client whose user is asked (`asked` is set) and never answers."""

    async def elicitation(context: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=60)
    transport = streamable_http_client(gateway.url, http_client=http)
    return Client(transport, mode=mode, elicitation_callback=elicitation)  # type: ignore[arg-type]


async def run_end(log: Path, start: int) -> None:
    """Until the log holds an end of a run of WORKFLOW started since line `start` (30 s at most)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        written = named(lines(log)[start:], WORKFLOW)
        started = {e["target"]["workflow_id"] for e in written if e["type"] == "workflow_started"}
        if any(e["type"] in WORKFLOW_ENDS and e["target"].get("workflow_id") in started for e in written):
            return
        await anyio.sleep(0.05)
    raise AssertionError(f"no end of the run was written within 30 s: {[e['type'] for e in written]}")


def the_run(events: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The run's events, all with one `workflow_id`, and its ends."""
    run = [e for e in named(events, WORKFLOW) if e["type"].startswith("workflow_")]
    ids = {e["target"].get("workflow_id") for e in run}
    assert len(ids) == 1 and None not in ids, [(e["type"], e["target"].get("workflow_id")) for e in run]
    assert [e["type"] for e in run].count("workflow_started") == 1
    return run, [e for e in run if e["type"] in WORKFLOW_ENDS]


async def test_a_run_whose_2026_client_never_answers_ends_cancelled_once(
    served: tuple[Gateway, str, Path],
) -> None:
    gateway, key, log = served
    start = len(lines(log))
    asked = anyio.Event()
    async with silent_client(gateway, key, "auto", asked) as alice, anyio.create_task_group() as calls:
        assert alice.protocol_version == MODES["auto"]
        calls.start_soon(alice.call_tool, WORKFLOW, {})
        with anyio.fail_after(30):
            await asked.wait()  # the call was answered with the question: the run waits in the background
        await run_end(log, start)  # written once the gateway gives up on the client (timeouts.input)
        calls.cancel_scope.cancel()
    async with silent_client(gateway, key, "auto", anyio.Event()) as other:
        events = await events_since(other, log, start)

    run, ends = the_run(events)
    assert [(e["type"], e["outcome"]) for e in ends] == [("workflow_failed", "cancelled")]
    assert ends[0]["metadata"]["extra"]["protocol_version"] == MODES["auto"]
    assert run[-1] is ends[0]  # after every step's event
    steps = {
        e["target"]["step_id"]: e["outcome"]
        for e in run
        if e["type"] in {"workflow_step_completed", "workflow_step_failed"}
    }
    assert steps == {"before": "success", "ask": "cancelled"}  # `after` waited for the answer: never started


async def test_a_run_its_2025_client_cancels_has_its_call_as_its_one_end(
    served: tuple[Gateway, str, Path],
) -> None:
    gateway, key, log = served
    start = len(lines(log))
    asked = anyio.Event()
    async with silent_client(gateway, key, "legacy", asked) as alice:
        assert alice.protocol_version == MODES["legacy"]
        async with anyio.create_task_group() as calls:
            calls.start_soon(alice.call_tool, WORKFLOW, {})
            with anyio.fail_after(30):
                await asked.wait()  # asked mid-call on its session
            calls.cancel_scope.cancel()  # the SDK sends notifications/cancelled
        await run_end(log, start)
        events = await events_since(alice, log, start)

    _, ends = the_run(events)
    assert [(e["type"], e["outcome"]) for e in ends] == [("workflow_failed", "cancelled")]
    assert ends[0]["metadata"]["extra"]["protocol_version"] == MODES["legacy"]
